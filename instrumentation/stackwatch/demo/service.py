"""What the endpoints and tasks do, twice: the baseline way and the plan's way.

The baseline is how such services usually start: lazy-loaded relationships walked
in Python (one query per related object: the N+1), whole price histories loaded to
keep twenty rows, offset pagination, the CPU-heavy analysis on the event loop, no
cache. The optimized functions ask the database for exactly the rows they return,
in one batched query each, behind ``@cached`` with the plan's TTL policies
(prices 30 s, signals 10 min, stock info 1 h). Both return the same JSON shapes.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, joinedload

import stackwatch
from stackwatch.cache import warm_up_async
from stackwatch.demo.analysis import ROUNDS, analyse, analyse_blocked, score, simulate_blocked
from stackwatch.demo.models import DailyPrice, InstitutionalFlow, Signal, Stock
from stackwatch.demo.schema import with_driver
from stackwatch.demo.workload import CHART_DAYS

RECENT_PRICES = 20
RECENT_SIGNALS = 10
RECENT_FLOWS = 20
PEERS = 10
MOVING_AVERAGES = (5, 20, 60)
ANALYSIS_DAYS = 250
DEFAULT_PAGE = 50
MAX_PAGE = 200


class NotFound(LookupError):
    """No stock with that ticker."""


class Database:
    """The async engine of this process, created on first use (after any fork).

    The service (one event loop) and each Celery worker process (one loop of its
    own, see tasks.py) get their own engine; connections never cross a fork.
    """

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    def configure(self, url: str, pool_size: int = 10) -> None:
        """Create the engine for ``url`` (any PostgreSQL URL form) and instrument it."""
        self._engine = create_async_engine(
            with_driver(url, "asyncpg"), pool_size=pool_size, max_overflow=pool_size
        )
        stackwatch.instrument_sqlalchemy(self._engine)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        """A new session; configures from DATABASE_URL on first use."""
        if self._sessions is None:
            url = os.environ.get("DATABASE_URL") or os.environ.get("STACKWATCH_DATABASE_URL")
            if not url:
                raise RuntimeError("set DATABASE_URL to the demo database")
            self.configure(url)
        assert self._sessions is not None
        return self._sessions()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        if self._engine is not None:
            await self._engine.dispose()
        self._engine, self._sessions = None, None


database = Database()


def _exit_with(parent: int) -> None:
    """Pool initializer: end this process within a second of ``parent`` (the app) ending.

    A killed app (SIGKILL after a stop timed out, an OOM kill) leaves its pool's
    processes behind: they finish the analyses already handed to them for nobody,
    then wait forever on a queue no one writes to.
    """

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-app", daemon=True).start()


class AnalysisPool:
    """Where the CPU-heavy analysis runs: a process pool in the web app.

    A thread would not help: the Monte-Carlo holds the GIL most of the time, so it
    would still stall the event loop and every other request with it. Processes run
    it beside the loop, so analyses queue instead of starving the requests that the
    cache answers. One analysis is split over every process of the pool (its rounds
    are independent): a miss waits for its share of the CPU in each of them, not in
    one, which halved the endpoint's P99 on 2 busy cores. They run at the loop's own
    CPU priority: an analysis computed here is a user's request waiting for it, and
    a niced pool on a busy host waited seconds for the CPU (P99 3.5 s). Both paths
    compute with ``simulate_blocked``, the cache-friendly implementation of the
    model that gives exactly its numbers. Celery's prefork children cannot have
    children of their own; there (no pool configured) the analysis runs inline,
    which is what a worker process is for.
    """

    def __init__(self) -> None:
        self._executor: Executor | None = None
        self._slices: list[range] = []

    def start(self, workers: int) -> None:
        """Start ``workers`` processes (forkserver: never fork a process running a loop)."""
        context = multiprocessing.get_context("forkserver")
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=context,
            initializer=_exit_with,
            initargs=(os.getpid(),),
        )
        # The processes start (and import) on the first submission: now, during the
        # app's warm-up, not on the first user's miss (a second and more).
        self._executor.submit(os.getpid)
        # Contiguous slices, so the parts joined in order are the rounds in order.
        self._slices = [
            range(ROUNDS * part // workers, ROUNDS * (part + 1) // workers)
            for part in range(workers)
        ]

    async def run(self, ticker: str, closes: list[float]) -> dict[str, Any]:
        """``analyse(ticker, closes)``: its rounds spread over the pool, or inline without one."""
        if self._executor is None:
            return analyse_blocked(ticker, closes)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(self._executor, simulate_blocked, ticker, closes, rounds)
                for rounds in self._slices
            )
        )
        return score(ticker, [result for part in parts for result in part])

    def stop(self) -> None:
        """Shut the pool down (pending analyses are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None


analysis_pool = AnalysisPool()


# --- shapes shared by both modes ---


def _price(row: DailyPrice) -> dict[str, Any]:
    return {
        "date": row.date.isoformat(),
        "open": row.open,
        "high": row.high,
        "low": row.low,
        "close": row.close,
        "volume": row.volume,
    }


def _signal(row: Signal, name: str) -> dict[str, Any]:
    return {
        "id": row.id,
        "ticker": row.ticker,
        "name": name,
        "kind": row.kind,
        "status": row.status,
        "score": row.score,
        "created_at": row.created_at.isoformat(),
    }


def _flow(row: InstitutionalFlow) -> dict[str, Any]:
    return {
        "date": row.date.isoformat(),
        "foreign": row.foreign_net,
        "institution": row.institution_net,
        "individual": row.individual_net,
    }


def _stock(row: Stock) -> dict[str, Any]:
    return {
        "ticker": row.ticker,
        "name": row.name,
        "market": row.market,
        "sector": row.sector,
        "market_cap": row.market_cap,
    }


def _moving_averages(closes: list[float], days: int) -> dict[str, list[float | None]]:
    series = np.asarray(closes, dtype=np.float64)
    averages: dict[str, list[float | None]] = {}
    for window in MOVING_AVERAGES:
        values: list[float | None] = [None] * len(series)
        if len(series) >= window:
            sums = np.convolve(series, np.ones(window), mode="valid") / window
            values[window - 1 :] = [round(float(v), 2) for v in sums]
        averages[f"ma{window}"] = values[-days:]
    return averages


def encode_cursor(text: str) -> str:
    """An opaque page cursor."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The text inside a cursor; ValueError when it is not one of ours."""
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("invalid cursor") from error


async def popular_tickers(limit: int | None = None) -> list[str]:
    """The ``limit`` largest companies (all without a limit): the tickers users ask for most."""
    async with database.session() as session:
        rows = await session.scalars(
            select(Stock.ticker).order_by(Stock.market_cap.desc(), Stock.ticker).limit(limit)
        )
        return list(rows)


# --- baseline: lazy loading, whole histories, offset pages, no cache ---


async def baseline_stock_detail(ticker: str) -> dict[str, Any]:
    """Stock, recent prices, signals, flows and sector peers, walking lazy relationships."""

    def walk(session: Session) -> dict[str, Any]:
        stock = session.get(Stock, ticker)
        if stock is None:
            raise NotFound(ticker)
        prices = sorted(stock.prices, key=lambda p: p.date)[-RECENT_PRICES:]
        signals = sorted(stock.signals, key=lambda s: s.created_at, reverse=True)[:RECENT_SIGNALS]
        flows = sorted(stock.flows, key=lambda f: f.date)[-RECENT_FLOWS:]
        peers = session.scalars(
            select(Stock)
            .where(Stock.sector == stock.sector, Stock.ticker != ticker)
            .order_by(Stock.market_cap.desc())
            .limit(PEERS)
        ).all()
        peer_rows = []
        for peer in peers:
            latest = max(peer.prices, key=lambda p: p.date)
            peer_rows.append({**_stock(peer), "close": latest.close})
        return {
            **_stock(stock),
            "prices": [_price(p) for p in prices],
            "signals": [_signal(s, stock.name) for s in signals],
            "flows": [_flow(f) for f in flows],
            "peers": peer_rows,
        }

    async with database.session() as session:
        return await session.run_sync(walk)


async def baseline_chart(ticker: str, days: int) -> dict[str, Any]:
    """OHLCV and moving averages from the whole lazily loaded price history."""

    def walk(session: Session) -> dict[str, Any]:
        stock = session.get(Stock, ticker)
        if stock is None:
            raise NotFound(ticker)
        history = sorted(stock.prices, key=lambda p: p.date)
        closes = [p.close for p in history]
        return {
            "ticker": ticker,
            "days": days,
            "prices": [_price(p) for p in history[-days:]],
            "moving_averages": _moving_averages(closes, days),
        }

    async with database.session() as session:
        return await session.run_sync(walk)


async def baseline_signals(status: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """A page of signals by OFFSET; each row's company name lazily loaded (N+1)."""
    offset = 0
    if cursor:
        text = decode_cursor(cursor)
        if not text.startswith("offset:") or not text[7:].isdigit():
            raise ValueError("invalid cursor")
        offset = int(text[7:])

    def walk(session: Session) -> dict[str, Any]:
        rows = session.scalars(
            select(Signal)
            .where(Signal.status == status)
            .order_by(Signal.created_at.desc(), Signal.id.desc())
            .offset(offset)
            .limit(limit)
        ).all()
        items = [_signal(row, row.stock.name) for row in rows]
        more = len(rows) == limit
        return {
            "items": items,
            "next_cursor": encode_cursor(f"offset:{offset + limit}") if more else None,
        }

    async with database.session() as session:
        return await session.run_sync(walk)


async def baseline_ai_analysis(ticker: str) -> dict[str, Any]:
    """The analysis computed on the event loop from the lazily loaded history."""

    def walk(session: Session) -> list[float]:
        stock = session.get(Stock, ticker)
        if stock is None:
            raise NotFound(ticker)
        return [p.close for p in sorted(stock.prices, key=lambda p: p.date)]

    async with database.session() as session:
        closes = await session.run_sync(walk)
    return analyse(ticker, closes)


# --- optimized: exact queries on the plan's indexes, behind @cached ---


@stackwatch.cached("stock_info", ttl="stock_info")
async def stock_info(ticker: str) -> dict[str, Any]:
    """The company and its largest sector peers: changes rarely (1 h)."""
    async with database.session() as session:
        stock = await session.get(Stock, ticker)
        if stock is None:
            return {}
        peers = await session.scalars(
            select(Stock)
            .where(Stock.sector == stock.sector, Stock.ticker != ticker)
            .order_by(Stock.market_cap.desc())
            .limit(PEERS)
        )
        return {**_stock(stock), "peers": [_stock(peer) for peer in peers]}


# --- what the refresh task keeps warm ahead of expiry (refresh-ahead) ---

_refreshing: list[str] = []


def _tickers_to_refresh() -> list[str]:
    return list(_refreshing)


def _charts_to_refresh() -> list[tuple[str, int]]:
    return [(ticker, days) for ticker in _refreshing for days in CHART_DAYS]


async def _prices_to_refresh() -> list[tuple[str, list[str]]]:
    infos = await asyncio.gather(*(stock_info(ticker) for ticker in _refreshing))
    return [
        (ticker, [peer["ticker"] for peer in info["peers"]])
        for ticker, info in zip(_refreshing, infos, strict=True)
        if info
    ]


@stackwatch.cached("price", ttl="price", warm=_prices_to_refresh)
async def recent_prices(ticker: str, peers: list[str]) -> dict[str, Any]:
    """The last prices of ``ticker`` and the latest close of each peer: two indexed queries."""
    async with database.session() as session:
        prices = await session.scalars(
            select(DailyPrice)
            .where(DailyPrice.ticker == ticker)
            .order_by(DailyPrice.date.desc())
            .limit(RECENT_PRICES)
        )
        closes = await session.execute(
            select(DailyPrice.ticker, DailyPrice.close)
            .where(DailyPrice.ticker.in_(peers))
            .distinct(DailyPrice.ticker)
            .order_by(DailyPrice.ticker, DailyPrice.date.desc())
        )
        return {
            "prices": [_price(p) for p in reversed(list(prices))],
            "peer_close": {row.ticker: row.close for row in closes},
        }


@stackwatch.cached("flow", ttl="price", warm=_tickers_to_refresh)
async def recent_flows(ticker: str) -> list[dict[str, Any]]:
    """The last days of institutional flows (refreshed with prices)."""
    async with database.session() as session:
        flows = await session.scalars(
            select(InstitutionalFlow)
            .where(InstitutionalFlow.ticker == ticker)
            .order_by(InstitutionalFlow.date.desc())
            .limit(RECENT_FLOWS)
        )
        return [_flow(f) for f in reversed(list(flows))]


@stackwatch.cached("signal", ttl="signal")
async def recent_signals(ticker: str) -> list[dict[str, Any]]:
    """The newest signals of one ticker (10 min)."""
    async with database.session() as session:
        rows = await session.execute(
            select(Signal, Stock.name)
            .join(Stock, Stock.ticker == Signal.ticker)
            .where(Signal.ticker == ticker)
            .order_by(Signal.created_at.desc())
            .limit(RECENT_SIGNALS)
        )
        return [_signal(signal, name) for signal, name in rows]


async def optimized_stock_detail(ticker: str) -> dict[str, Any]:
    """The same detail as the baseline, assembled from four cached pieces."""
    info = await stock_info(ticker)
    if not info:
        raise NotFound(ticker)
    peers = info.pop("peers")
    # Three independent lookups: one round trip of waiting instead of three.
    prices, signals, flows = await asyncio.gather(
        recent_prices(ticker, [peer["ticker"] for peer in peers]),
        recent_signals(ticker),
        recent_flows(ticker),
    )
    return {
        **info,
        "prices": prices["prices"],
        "signals": signals,
        "flows": flows,
        "peers": [{**peer, "close": prices["peer_close"].get(peer["ticker"])} for peer in peers],
    }


@stackwatch.cached("chart", ttl="price", warm=_charts_to_refresh)
async def optimized_chart(ticker: str, days: int) -> dict[str, Any]:
    """Only the rows the chart and its longest moving average need, by index range."""
    longest = max(MOVING_AVERAGES)
    async with database.session() as session:
        rows = list(
            await session.scalars(
                select(DailyPrice)
                .where(DailyPrice.ticker == ticker)
                .order_by(DailyPrice.date.desc())
                .limit(days + longest - 1)
            )
        )
    if not rows:
        raise NotFound(ticker)
    rows.reverse()
    return {
        "ticker": ticker,
        "days": days,
        "prices": [_price(p) for p in rows[-days:]],
        "moving_averages": _moving_averages([p.close for p in rows], days),
    }


@stackwatch.cached("signal", ttl="signal")
async def optimized_signals(status: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """A keyset page: one range scan of (status, created_at, id), names joined in."""
    query = (
        select(Signal)
        .options(joinedload(Signal.stock))
        .where(Signal.status == status)
        .order_by(Signal.created_at.desc(), Signal.id.desc())
        .limit(limit)
    )
    if cursor:
        created_text, _, id_text = decode_cursor(cursor).partition("|")
        try:
            after = (dt.datetime.fromisoformat(created_text), int(id_text))
        except ValueError as error:
            raise ValueError("invalid cursor") from error
        query = query.where(tuple_(Signal.created_at, Signal.id) < after)
    async with database.session() as session:
        rows = list(await session.scalars(query))
    more = len(rows) == limit
    last = rows[-1] if rows else None
    return {
        "items": [_signal(row, row.stock.name) for row in rows],
        "next_cursor": (
            encode_cursor(f"{last.created_at.isoformat()}|{last.id}") if more and last else None
        ),
    }


@stackwatch.cached("ai", ttl="stock_info")
async def optimized_ai_analysis(ticker: str) -> dict[str, Any]:
    """The analysis beside the event loop (see AnalysisPool), cached 1 h: it uses daily data."""
    async with database.session() as session:
        closes = list(
            await session.scalars(
                select(DailyPrice.close)
                .where(DailyPrice.ticker == ticker)
                .order_by(DailyPrice.date.desc())
                .limit(ANALYSIS_DAYS)
            )
        )
    if not closes:
        return {}
    closes.reverse()
    return await analysis_pool.run(ticker, closes)


async def _bounded(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> None:
    # Each call starts once it holds the gate: a start-up stopped half-way leaves no
    # coroutine that was created and never awaited.
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(call) for call in calls))


async def warm_analyses(tickers: list[str], concurrency: int) -> int:
    """Compute and cache the analyses of ``tickers`` that are not cached (the nightly batch).

    About 0.1 CPU-second each with ``simulate_blocked`` (0.25 with ``simulate``).
    """
    await _bounded([partial(optimized_ai_analysis, ticker) for ticker in tickers], concurrency)
    return len(tickers)


async def warm_up(tickers: list[str], concurrency: int = 4) -> int:
    """Fill what is missing of the details and charts of ``tickers``; returns how many."""

    async def details(ticker: str) -> None:
        await optimized_stock_detail(ticker)
        for days in CHART_DAYS:
            await optimized_chart(ticker, days)

    await _bounded([partial(details, ticker) for ticker in tickers], concurrency)
    return len(tickers)


async def warm_long_lived(tickers: list[str], concurrency: int = 8) -> int:
    """Fill company info (1 h) and recent signals (10 min) of ``tickers``: cheap, long-lived.

    Every ticker's, not only the popular ones': one indexed query or two each, and
    they outlive any burst of traffic, so the long tail of rarely asked tickers
    misses only on prices.
    """
    await _bounded(
        [
            partial(function, ticker)
            for ticker in tickers
            for function in (stock_info, recent_signals)
        ],
        concurrency,
    )
    return len(tickers)


async def warm_start(ranked: list[str], tickers: int) -> dict[str, float]:
    """The optimized app's start-up warm-up over ``ranked`` (most popular first); seconds per step.

    Company info and signals of every ticker (they live 10 min to 1 h) first, then
    the details and charts of the ``tickers`` most popular: prices live 30 s, so
    they come last. Analyses are not warmed here: the popular tickers' are computed
    by the nightly batch on the worker (tasks.analyse_chunk), not at each start of
    each web process.
    """
    started = time.perf_counter()
    await warm_long_lived(ranked)
    long_lived = time.perf_counter()
    await warm_up(ranked[:tickers])
    return {
        "long_lived_s": round(long_lived - started, 1),
        "short_lived_s": round(time.perf_counter() - long_lived, 1),
    }


async def refresh_ahead(tickers: list[str], concurrency: int = 4) -> dict[str, dict[str, int]]:
    """Recompute the short-lived values (prices, flows, charts) of ``tickers`` before they expire.

    Prices live 30 s; a refresh every 20 s rewrites them while they are still
    present, so popular tickers never miss (waiting for them to expire, then
    filling, left each one missing until the next run).
    """
    _refreshing[:] = tickers
    try:
        return await warm_up_async(
            ["price", "flow", "chart"], refresh=True, concurrency=concurrency
        )
    finally:
        _refreshing.clear()
