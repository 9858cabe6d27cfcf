"""What a per-request SQL comment costs the driver and the server, without stackwatch.

A comment carrying a request id or a ``traceparent`` makes every request's
statements new texts. Drivers cache by text: psycopg prepares a text on the server
after its fifth execution on a connection (and drops all of them at each rollback),
asyncpg prepares every text it has not seen and keeps them in an LRU across
transactions (SQLAlchemy's asyncpg dialect keeps its own too). This runs plain
engines, no instrumentation, with a listener that appends nothing, a comment that is
the same for every request (the route, what ``STACKWATCH_SQL_COMMENTER=sampled``
sends for a request that is not sampled) or one that changes per request (a request id
and a traceparent, what ``full`` sends), side by side in interleaved rounds.

Requests of 4 statements (``SELECT 1`` and a primary-key lookup, twice each) in two
shapes: all requests on one connection and one transaction ("one transaction"), and
each request checking a connection out of the pool and back, which rolls back
("a transaction per request", what a Session per request does).

    uv run python benchmarks/sqlcomment_texts.py [--rounds 9] [--requests 250]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import statistics
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

STATEMENTS = [
    text("SELECT 1"),
    text("SELECT relname FROM pg_class WHERE oid = :oid").bindparams(oid=1259),
] * 2
ROUTE = "%%2Fapi%%2Fkr%%2Fstocks%%2F%%7Bticker%%7D"  # /api/kr/stocks/{ticker}, %-doubled
COMMENTS: dict[str, Callable[[], str]] = {
    "no comment": lambda: "",
    "stable comment (route)": lambda: f" /*route='{ROUTE}'*/",
    "per-request comment (full)": lambda: (
        f" /*request_id='{secrets.token_hex(16)}',route='{ROUTE}',"
        f"traceparent='00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01'*/"
    ),
}


class _Commenter:
    """Appends the current request's comment, as stackwatch's listener does."""

    def __init__(self, make: Callable[[], str], double_percent: bool) -> None:
        self.make = make
        self.double_percent = double_percent
        self.current = ""

    def next_request(self) -> None:
        comment = self.make()
        self.current = comment if self.double_percent else comment.replace("%%", "%")

    def __call__(self, *args: Any) -> tuple[str, Any]:
        return args[2] + self.current, args[3]


def _commented(engine: Engine, make: Callable[[], str]) -> _Commenter:
    commenter = _Commenter(make, engine.dialect.paramstyle in ("format", "pyformat"))
    event.listen(engine, "before_cursor_execute", commenter, retval=True)
    return commenter


SHAPES = ("one transaction", "a transaction per request")
Results = dict[str, dict[str, float]]  # shape -> comment -> median statements per second


def _interleaved(one_round: Callable[[str, str], float], rounds: int) -> Results:
    """Medians of ``one_round(comment, shape)`` over interleaved rounds, after a warm-up."""
    rates: dict[str, dict[str, list[float]]] = {shape: {} for shape in SHAPES}
    for shape, name in itertools.product(SHAPES, COMMENTS):
        one_round(name, shape)
    for _, shape, name in itertools.product(range(rounds), SHAPES, COMMENTS):
        rates[shape].setdefault(name, []).append(one_round(name, shape))
    return {shape: {n: statistics.median(r) for n, r in v.items()} for shape, v in rates.items()}


def _sync_rates(url: str, rounds: int, requests: int) -> Results:
    engines = {name: create_engine(url) for name in COMMENTS}
    commenters = {name: _commented(engine, COMMENTS[name]) for name, engine in engines.items()}
    kept = {name: engine.connect() for name, engine in engines.items()}

    def one_round(name: str, shape: str) -> float:
        commenter, started = commenters[name], time.perf_counter()
        for _ in range(requests):
            commenter.next_request()
            if shape == "one transaction":
                for statement in STATEMENTS:
                    kept[name].execute(statement).scalar_one()
            else:
                with engines[name].connect() as connection:
                    for statement in STATEMENTS:
                        connection.execute(statement).scalar_one()
        return requests * len(STATEMENTS) / (time.perf_counter() - started)

    try:
        return _interleaved(one_round, rounds)
    finally:
        for connection in kept.values():
            connection.close()


def _async_rates(url: str, rounds: int, requests: int) -> Results:
    loop = asyncio.new_event_loop()
    engines: dict[str, AsyncEngine] = {name: create_async_engine(url) for name in COMMENTS}
    commenters = {
        name: _commented(engine.sync_engine, COMMENTS[name]) for name, engine in engines.items()
    }
    kept = {name: loop.run_until_complete(engine.connect()) for name, engine in engines.items()}

    async def one_round(name: str, shape: str) -> float:
        commenter, started = commenters[name], time.perf_counter()
        for _ in range(requests):
            commenter.next_request()
            if shape == "one transaction":
                for statement in STATEMENTS:
                    (await kept[name].execute(statement)).scalar_one()
            else:
                async with engines[name].connect() as connection:
                    for statement in STATEMENTS:
                        (await connection.execute(statement)).scalar_one()
        return requests * len(STATEMENTS) / (time.perf_counter() - started)

    try:
        return _interleaved(lambda *a: loop.run_until_complete(one_round(*a)), rounds)
    finally:
        for connection in kept.values():
            loop.run_until_complete(connection.close())
        for engine in engines.values():
            loop.run_until_complete(engine.dispose())
        loop.close()


def _print(driver: str, results: Results) -> None:
    for shape, by_comment in results.items():
        base = by_comment["no comment"]
        print(f"\n{driver}, {shape}")
        print(f"{'':<30}{'stmt/s':>9}{'ratio':>7}")
        for name, rate in by_comment.items():
            print(f"{name:<30}{rate:>9.0f}{rate / base:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=250)
    args = parser.parse_args()
    base = args.url.split("://", 1)[1]
    _print("psycopg", _sync_rates(f"postgresql+psycopg://{base}", args.rounds, args.requests))
    _print("asyncpg", _async_rates(f"postgresql+asyncpg://{base}", args.rounds, args.requests))


if __name__ == "__main__":
    main()
