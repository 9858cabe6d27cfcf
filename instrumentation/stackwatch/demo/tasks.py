"""The demo's Celery app: the VCP scan (serial baseline, chunked group + chord), refresh_cache
and the nightly batch of AI analyses.

The broker is the Redis the demo uses (``CELERY_BROKER_URL``, else ``REDIS_URL``);
``STACKWATCH_DEMO_PREFIX`` prefixes every broker and result key so several demos
(and tests) can share one Redis. Queues are stackwatch's presets: ``high`` for the
real-time ``refresh_cache``, ``low`` for the batch scan and the analyses; the
baseline scan runs on ``default``, the only queue its worker serves.

Each worker process runs the async service code on one event loop of its own, so
the tasks share the service's engine set-up and its ``@cached`` functions (the
cache keys of a warm-up written here are the ones the web process reads).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
from celery import Celery, chord, group
from celery.result import AsyncResult, GroupResult
from sqlalchemy import insert, select
from sqlalchemy.exc import InterfaceError, OperationalError

import stackwatch
from stackwatch.demo import service
from stackwatch.demo.models import DailyPrice, Signal, Stock
from stackwatch.demo.vcp import detect
from stackwatch.demo.warmup import warm_sizes

T = TypeVar("T")
CHUNK_TICKERS = 100
# 3 to 4 s of CPU per task: small enough that the two worker processes finish together.
ANALYSIS_CHUNK_TICKERS = 25
REFRESH_AHEAD_TICKERS = 150
# A lost connection, a restarting server or a pool timeout go away on their own.
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": (ConnectionError, TimeoutError, OperationalError, InterfaceError),
    "max_retries": 3,
    "retry_backoff": 1,
    "retry_backoff_max": 10,
    "retry_jitter": True,
}

stackwatch.setup(service_name="stackwatch-demo-worker")
_broker = (
    os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
)
_prefix = os.environ.get("STACKWATCH_DEMO_PREFIX", "stackwatch-demo") + ":"
app = Celery("stackwatch_demo", broker=_broker, backend=_broker)
stackwatch.configure_celery(
    app,
    routes={
        "demo.refresh_cache": "high",
        "demo.scan_chunk": "low",
        "demo.write_signals": "low",
        "demo.analyse_chunk": "low",
        "demo.scan_serial": "default",
    },
)
app.conf.update(
    broker_transport_options={"global_keyprefix": _prefix},
    result_backend_transport_options={"global_keyprefix": _prefix},
    worker_hijack_root_logger=False,
)
stackwatch.instrument_celery(app)

_loop: asyncio.AbstractEventLoop | None = None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on this process's event loop (created after any fork)."""
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(coroutine)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _serial_scan() -> dict[str, Any]:
    started = time.perf_counter()
    hits = 0
    async with service.database.session() as session:
        tickers = list(await session.scalars(select(Stock.ticker).order_by(Stock.ticker)))
        for ticker in tickers:
            rows = (
                await session.execute(
                    select(DailyPrice.high, DailyPrice.low, DailyPrice.close, DailyPrice.volume)
                    .where(DailyPrice.ticker == ticker)
                    .order_by(DailyPrice.date)
                )
            ).all()
            if not rows:
                continue
            columns = np.asarray(rows, dtype=np.float64).T
            result = detect(columns[0], columns[1], columns[2], columns[3])
            if bool(result.matches[0]):
                session.add(
                    Signal(
                        ticker=ticker,
                        kind="vcp",
                        status="active",
                        score=float(result.score()[0]),
                        created_at=_now(),
                    )
                )
                await session.commit()
                hits += 1
    return {"tickers": len(tickers), "hits": hits, "seconds": time.perf_counter() - started}


@app.task(name="demo.scan_serial")
def scan_serial() -> dict[str, Any]:
    """Baseline: every ticker in turn, one query each, one signal row per commit."""
    return run(_serial_scan())


async def _scan_chunk(tickers: list[str]) -> list[list[Any]]:
    async with service.database.session() as session:
        rows = (
            await session.execute(
                select(
                    DailyPrice.ticker,
                    DailyPrice.high,
                    DailyPrice.low,
                    DailyPrice.close,
                    DailyPrice.volume,
                )
                .where(DailyPrice.ticker.in_(tickers))
                .order_by(DailyPrice.ticker, DailyPrice.date)
            )
        ).all()
    if not rows:
        return []
    names = np.asarray([row[0] for row in rows])
    values = np.asarray([row[1:] for row in rows], dtype=np.float64)
    found: list[list[Any]] = []
    present, starts, counts = np.unique(names, return_index=True, return_counts=True)
    for length in np.unique(counts):
        # Tickers with the same history length stack into one (tickers, days) block.
        same = counts == length
        index = starts[same][:, None] + np.arange(length)[None, :]
        block = values[index]
        result = detect(block[..., 0], block[..., 1], block[..., 2], block[..., 3])
        scores = result.score()
        for ticker, score in zip(
            present[same][result.matches], scores[result.matches], strict=True
        ):
            found.append([str(ticker), float(score)])
    return found


@app.task(name="demo.scan_chunk", **RETRY_OPTIONS)
def scan_chunk(tickers: list[str]) -> list[list[Any]]:
    """Optimized: one indexed query for a chunk of tickers, the detector vectorised over it."""
    return run(_scan_chunk(tickers))


async def _write_signals(found: list[list[Any]]) -> int:
    if not found:
        return 0
    now = _now()
    rows = [
        {"ticker": ticker, "kind": "vcp", "status": "active", "score": score, "created_at": now}
        for ticker, score in found
    ]
    async with service.database.session() as session:
        await session.execute(insert(Signal), rows)
        await session.commit()
    return len(rows)


@app.task(name="demo.write_signals", **RETRY_OPTIONS)
def write_signals(chunks: list[list[list[Any]]]) -> dict[str, int]:
    """The chord's callback: every chunk's hits written in one bulk INSERT."""
    found = [hit for chunk in chunks for hit in chunk]
    return {"hits": run(_write_signals(found))}


def start_chunked_scan(tickers: list[str], chunk_size: int = CHUNK_TICKERS) -> AsyncResult:
    """Publish the optimized scan: ``group(scan_chunk)`` feeding ``chord(write_signals)``."""
    chunks = [tickers[i : i + chunk_size] for i in range(0, len(tickers), chunk_size)]
    signature = chord(group(scan_chunk.s(chunk) for chunk in chunks), write_signals.s())
    result: AsyncResult = signature.apply_async()
    return result


def scan_state(scan_id: str) -> dict[str, Any]:
    """What the result backend knows of a scan: its state, and its result or error type."""
    result = AsyncResult(scan_id, app=app)
    state = str(result.state)
    answer: dict[str, Any] = {"id": scan_id, "state": state}
    if state == "SUCCESS":
        answer["result"] = result.result
    elif state == "FAILURE":
        answer["error"] = type(result.result).__name__
    return answer


@app.task(name="demo.refresh_cache")
def refresh_cache(limit: int | None = None) -> int:
    """Keep the ``limit`` most popular tickers' prices, flows and charts warm (every 20 s).

    Prices live 30 s. The most popular ones are recomputed while still cached
    (refresh-ahead): they are asked several times per interval and would otherwise
    miss from expiry to the next run. Beyond them a ticker is asked less than once
    per interval, so recomputing it costs more than its misses: only what expired is
    filled. Analyses and company info live an hour and are warmed at start.
    """

    async def refresh() -> int:
        count = limit or warm_sizes()[0]
        popular = await service.popular_tickers(count)
        await service.refresh_ahead(popular[:REFRESH_AHEAD_TICKERS])
        await service.warm_up(popular[REFRESH_AHEAD_TICKERS:])
        return len(popular)

    return run(refresh())


@app.task(name="demo.analyse_chunk", **RETRY_OPTIONS)
def analyse_chunk(tickers: list[str]) -> int:
    """The nightly batch's unit: compute and cache the AI analyses of ``tickers``.

    Through the service's own ``@cached`` function, so the app reads the very keys
    written here; computed inline (a prefork child has no pool of its own) with
    the same implementation as the app's pool. Returns how many were asked for.
    """
    return run(service.warm_analyses(tickers, 1))


def start_nightly_analyses(
    tickers: list[str], chunk_size: int = ANALYSIS_CHUNK_TICKERS
) -> GroupResult:
    """Publish the nightly batch: ``group(analyse_chunk)`` over ``tickers``, in their order.

    Give the most popular first: they are done first if traffic arrives early.
    """
    chunks = [tickers[i : i + chunk_size] for i in range(0, len(tickers), chunk_size)]
    result: GroupResult = group(analyse_chunk.s(chunk) for chunk in chunks).apply_async()
    return result
