"""What @cached costs over hand-written Redis code: hit and miss paths, sync and async.

Each pair runs side by side on the same client and the same value, in interleaved
rounds (the order alternates every round), and the table reports the median time
per call of each side and the median of the per-round ratios. The machine is shared
and noisy: compare ratios, not absolute times.

    uv run python benchmarks/cache_overhead.py [--rounds 21] [--calls 300]
        [--redis redis://127.0.0.1:6379/0]

Target from issue 5: hit path <= 1.3x a bare ``GET`` + ``orjson.loads``. The last
row answers GETs from memory, so ``ours us - bare us`` there is the Python cost of
a hit (key digest, metrics, span attribute, breaker check) without network noise.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import orjson
import redis
import redis.asyncio
from pydantic import BaseModel

from stackwatch.cache import cached, configure

TTL_S = 60


class Quote(BaseModel):
    code: str
    close: Decimal
    volume: int
    at: dt.datetime


def payload(code: str) -> dict[str, Any]:
    """About 1.5 kB: twenty daily rows, the size of the demo's price responses."""
    return {
        "code": code,
        "prices": [
            {"date": f"2024-05-{day:02d}", "close": 70_000 + day * 10, "volume": 1_000_000 + day}
            for day in range(1, 21)
        ],
    }


def quote(code: str) -> Quote:
    return Quote(
        code=code, close=Decimal("70100.5"), volume=12, at=dt.datetime(2024, 5, 2, tzinfo=dt.UTC)
    )


Pair = tuple[str, Callable[[int], Any], Callable[[int], Any], str]
Timer = Callable[[Callable[[int], Any], int, Iterator[int]], Awaitable[float]]


async def time_sync(function: Callable[[int], Any], calls: int, numbers: Iterator[int]) -> float:
    """Seconds per call of a plain function."""
    started = time.perf_counter()
    for _ in range(calls):
        function(next(numbers))
    return (time.perf_counter() - started) / calls


async def time_async(function: Callable[[int], Any], calls: int, numbers: Iterator[int]) -> float:
    """Seconds per call of a coroutine function."""
    started = time.perf_counter()
    for _ in range(calls):
        await function(next(numbers))
    return (time.perf_counter() - started) / calls


async def compare(pairs: list[Pair], rounds: int, calls: int, timer: Timer) -> list[dict[str, Any]]:
    """Each pair side by side in ``rounds`` rounds, who goes first alternating."""
    rows = []
    for name, ours, theirs, baseline in pairs:
        ours_s, theirs_s, ratios = [], [], []
        numbers = itertools.count()
        for round_index in range(rounds):
            timings = {}
            order = [("ours", ours), ("theirs", theirs)]
            if round_index % 2:
                order.reverse()
            for side, function in order:
                timings[side] = await timer(function, calls, numbers)
            ours_s.append(timings["ours"])
            theirs_s.append(timings["theirs"])
            ratios.append(timings["ours"] / timings["theirs"])
        rows.append(_row(name, baseline, ours_s, theirs_s, ratios))
    return rows


def _row(
    name: str, baseline: str, ours: list[float], theirs: list[float], ratios: list[float]
) -> dict[str, Any]:
    return {
        "case": name,
        "baseline": baseline,
        "ours_us": statistics.median(ours) * 1e6,
        "theirs_us": statistics.median(theirs) * 1e6,
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()

    prefix = f"swbench:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(options.redis, socket_timeout=0.5)
    # The miss cases miss on purpose: no hit-ratio warnings in the output.
    settings = {"cache_prefix": prefix, "cache_min_lookups": 10**9}
    configure(client=client, **settings)
    try:
        rows = asyncio.run(_benchmark_sync(client, prefix, options.rounds, options.calls))
        rows += asyncio.run(_benchmark_async(options, client, prefix, settings))
        rows += asyncio.run(_benchmark_python_only(options.rounds, options.calls * 10, settings))
    finally:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.unlink(key)
        client.close()
    print(f"{'case':<26}{'baseline':<34}{'ours us':>9}{'bare us':>9}{'ratio':>7}")
    for row in rows:
        print(
            f"{row['case']:<26}{row['baseline']:<34}"
            f"{row['ours_us']:>9.1f}{row['theirs_us']:>9.1f}{row['ratio']:>7.2f}"
        )
    print(f"({options.rounds} interleaved rounds of {options.calls} calls; medians)")


class InstantRedis:
    """Answers every GET with the same value at once: the Python cost of a hit, without I/O."""

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.connection_pool = SimpleNamespace(connection_kwargs={"socket_timeout": 0.1})

    def get(self, key: str) -> bytes | None:
        return None if key.endswith(":version") else self.value

    def pipeline(self, transaction: bool = False) -> InstantPipeline:
        return InstantPipeline()


class InstantPipeline:
    """Swallows the once-a-second counter flush."""

    def __init__(self) -> None:
        self.commands = 0

    def execute_command(self, *args: Any) -> None:
        self.commands += 1

    def execute(self) -> list[int]:
        return [0] * self.commands


async def _benchmark_python_only(
    rounds: int, calls: int, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    instant = InstantRedis(orjson.dumps(payload("005930")))
    configure(client=instant, **settings)  # type: ignore[arg-type]

    @cached("bench_python", ttl=TTL_S)
    def hit(n: int) -> dict[str, Any]:
        return payload("005930")

    def same(n: int) -> Any:
        return hit(0)

    def bare(n: int) -> Any:
        return orjson.loads(instant.get("key"))  # type: ignore[arg-type]

    return await compare(
        [("sync hit, no I/O", same, bare, "in-memory GET + orjson.loads")],
        rounds,
        calls,
        time_sync,
    )


async def _benchmark_sync(
    client: redis.Redis, prefix: str, rounds: int, calls: int
) -> list[dict[str, Any]]:
    @cached("bench_hit", ttl=TTL_S)
    def hit(n: int) -> dict[str, Any]:
        return payload("005930")

    @cached("bench_model", ttl=TTL_S)
    def hit_model(n: int) -> Quote:
        return quote("005930")

    @cached("bench_miss", ttl=TTL_S)
    def miss(n: int) -> dict[str, Any]:
        return payload(str(n))

    bare_key = f"{prefix}:bare:hit"
    model_key = f"{prefix}:bare:model"
    client.set(bare_key, orjson.dumps(payload("005930")), ex=TTL_S)
    client.set(model_key, quote("005930").model_dump_json(), ex=TTL_S)

    # The hit cases always ask for the same key (n is ignored by the key: warm it once).
    def hit_same(n: int) -> Any:
        return hit(0)

    def model_same(n: int) -> Any:
        return hit_model(0)

    hit(0)
    hit_model(0)

    def bare_hit(n: int) -> Any:
        return orjson.loads(client.get(bare_key))  # type: ignore[arg-type]

    def bare_model(n: int) -> Any:
        return Quote.model_validate_json(client.get(model_key))  # type: ignore[arg-type]

    def bare_miss(n: int) -> Any:
        key = f"{prefix}:bare:miss:{n}"
        if client.get(key) is None:
            value = payload(str(n))
            client.set(key, orjson.dumps(value), ex=TTL_S)
            return value
        return None

    return await compare(
        [
            ("sync hit (dict)", hit_same, bare_hit, "GET + orjson.loads"),
            ("sync hit (pydantic model)", model_same, bare_model, "GET + model_validate_json"),
            ("sync miss", miss, bare_miss, "GET + SET"),
        ],
        rounds,
        calls,
        time_sync,
    )


async def _benchmark_async(
    options: argparse.Namespace, client: redis.Redis, prefix: str, settings: dict[str, Any]
) -> list[dict[str, Any]]:
    # An asyncio client belongs to one event loop: made, used and closed on this one.
    async_client = redis.asyncio.Redis.from_url(options.redis, socket_timeout=0.5)
    configure(client=client, async_client=async_client, **settings)
    bare_key = f"{prefix}:bare:hit"

    @cached("bench_ahit", ttl=TTL_S)
    async def async_hit(n: int) -> dict[str, Any]:
        return payload("005930")

    @cached("bench_amiss", ttl=TTL_S)
    async def async_miss(n: int) -> dict[str, Any]:
        return payload(str(n))

    await async_hit(0)

    async def async_hit_same(n: int) -> Any:
        return await async_hit(0)

    async def bare_async_hit(n: int) -> Any:
        return orjson.loads(await async_client.get(bare_key))  # type: ignore[arg-type]

    async def bare_async_miss(n: int) -> Any:
        key = f"{prefix}:bare:amiss:{n}"
        if await async_client.get(key) is None:
            value = payload(str(n))
            await async_client.set(key, orjson.dumps(value), ex=TTL_S)
            return value
        return None

    try:
        return await compare(
            [
                ("async hit (dict)", async_hit_same, bare_async_hit, "await GET + orjson.loads"),
                ("async miss", async_miss, bare_async_miss, "await GET + SET"),
            ],
            options.rounds,
            options.calls,
            time_async,
        )
    finally:
        await async_client.aclose()


if __name__ == "__main__":
    main()
