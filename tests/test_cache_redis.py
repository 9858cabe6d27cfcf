"""@cached against the shared Redis: accounting, TTLs, single-flight, invalidation, warm-up, stats.

Every test uses its own key prefix (the ``redis_prefix`` fixture cleans it) and its
own namespace names, so runs in parallel on the same Redis do not see each other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from pydantic import BaseModel
from structlog.testing import capture_logs

import stackwatch
from stackwatch.cache import (
    aclose,
    cache_stats,
    cached,
    configure,
    instrument_redis,
    invalidate_namespace,
    invalidate_namespace_async,
    uninstrument_redis,
    warm_up,
    warm_up_async,
)
from tests.conftest import REDIS_URL
from tests.support.process import clean_env, run_python

pytestmark = pytest.mark.integration


class Quote(BaseModel):
    code: str
    price: Decimal
    at: dt.datetime


def quote_of(code: str) -> Quote:
    return Quote(code=code, price=Decimal("70100.50"), at=dt.datetime(2024, 5, 2, tzinfo=dt.UTC))


def new_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def counted(namespace: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "cache_requests_total", {"namespace": namespace, "result": result}
    )
    return value or 0.0


@pytest.fixture
def raw(redis_prefix: str) -> Iterator[redis.Redis]:
    """A plain client for looking at what the cache wrote."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


# Other test suites load this 2-core machine while these run: a generous socket
# timeout keeps a slow reply from counting as an error here (the timeout itself is
# tested on a private server in test_cache_outage.py).
PATIENT_MS = 2000


def use_cache(prefix: str, **settings: Any) -> None:
    """Point @cached at the shared Redis under ``prefix``, with ``settings`` overridden."""
    configure(
        redis_url=REDIS_URL, cache_prefix=prefix, cache_socket_timeout_ms=PATIENT_MS, **settings
    )


@pytest.fixture
def cache(redis_prefix: str) -> Iterator[str]:
    """@cached pointed at the shared Redis under this test's prefix; reset afterwards."""
    use_cache(redis_prefix)
    yield redis_prefix
    configure()


@pytest.fixture
async def acache(cache: str) -> AsyncIterator[str]:
    """``cache`` for async tests: also closes the client built for the test's event loop."""
    yield cache
    await aclose()


def keys_of(client: redis.Redis, prefix: str, namespace: str) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{prefix}:{namespace}:*", count=1000))


def test_hit_and_miss_counts_are_exact(cache: str) -> None:
    namespace = new_namespace()
    calls: list[str] = []

    @cached(namespace, ttl=60)
    def price(code: str) -> Quote:
        calls.append(code)
        return quote_of(code)

    assert price("005930") == quote_of("005930")
    assert price("005930") == quote_of("005930")
    assert price("000660") == quote_of("000660")
    assert price("005930") == quote_of("005930")
    assert price(code="000660") == quote_of("000660")
    assert calls == ["005930", "000660"]
    assert (counted(namespace, "hit"), counted(namespace, "miss")) == (3, 2)
    assert counted(namespace, "error") == 0
    stats = cache_stats([namespace])
    entry = stats["namespaces"][namespace]
    assert stats["source"] == "redis"
    assert (entry["hits"], entry["misses"], entry["errors"]) == (3, 2, 0)
    assert entry["hit_ratio"] == 0.6
    assert entry["keys"] == 2
    assert entry["keys_exact"] is True
    assert entry["memory_bytes_estimate"] > 0
    assert entry["ttl_s"] == 60
    histogram = REGISTRY.get_sample_value(
        "cache_operation_duration_seconds_count", {"namespace": namespace, "operation": "get"}
    )
    assert histogram == 5


async def test_async_function_round_trips_rich_values(acache: str) -> None:
    namespace = new_namespace()
    calls = 0

    @cached(namespace, ttl=60)
    async def quotes(codes: list[str]) -> list[Quote]:
        nonlocal calls
        calls += 1
        return [quote_of(code) for code in codes]

    first = await quotes(["a", "b"])
    second = await quotes(["a", "b"])
    assert first == second == [quote_of("a"), quote_of("b")]
    assert isinstance(second[0].price, Decimal)
    assert calls == 1
    assert (counted(namespace, "hit"), counted(namespace, "miss")) == (1, 1)


def test_ttl_policy_is_honoured_with_jitter_below_it(cache: str, raw: redis.Redis) -> None:
    use_cache(cache, cache_ttl_jitter=0.2)
    namespace = new_namespace()

    @cached(namespace, ttl="price")
    def price(code: str) -> str:
        return code

    for code in range(40):
        price(str(code))
    ttls = [raw.pttl(key) for key in keys_of(raw, cache, namespace)]
    assert len(ttls) == 40
    assert all(24_000 - 100 <= ttl <= 30_000 for ttl in ttls)
    assert max(ttls) - min(ttls) > 1000  # written together, they do not expire together


def test_policy_named_like_the_namespace_and_policies_from_settings(
    cache: str, raw: redis.Redis
) -> None:
    # A namespace of its own, named like its policy: the demo's "stock_info"
    # namespace may already be registered in this process with another TTL.
    info_namespace = new_namespace()
    use_cache(cache, cache_ttl_jitter=0, cache_ttl_policies={info_namespace: 90, "quote": 7})

    @cached(info_namespace)
    def info(code: str) -> str:
        return code

    @cached(new_namespace(), ttl="quote")
    def quote(code: str) -> str:
        return code

    info("a")
    quote("a")
    (info_key,) = keys_of(raw, cache, info_namespace)
    assert 89_000 < raw.pttl(info_key) <= 90_000
    (quote_key,) = [
        k for k in raw.scan_iter(match=f"{cache}:t*") if info_namespace.encode() not in k
    ]
    assert 6_000 < raw.pttl(quote_key) <= 7_000
    with pytest.raises(ValueError, match="unknown TTL policy 'hourly'"):
        cached(new_namespace(), ttl="hourly")


def test_fifty_concurrent_threads_call_the_function_once(cache: str) -> None:
    namespace = new_namespace()
    calls = 0
    lock = threading.Lock()
    start = threading.Barrier(50)

    @cached(namespace, ttl=60)
    def slow(code: str) -> dict[str, Any]:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.3)
        return {"code": code}

    results: list[Any] = []

    def caller() -> None:
        start.wait()
        results.append(slow("005930"))

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == 1
    assert results == [{"code": "005930"}] * 50
    assert (counted(namespace, "miss"), counted(namespace, "hit")) == (1, 49)


async def test_fifty_concurrent_tasks_call_the_function_once(acache: str) -> None:
    namespace = new_namespace()
    calls = 0

    @cached(namespace, ttl=60)
    async def slow(code: str) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return {"code": code}

    results = await asyncio.gather(*(slow("005930") for _ in range(50)))
    assert calls == 1
    assert results == [{"code": "005930"}] * 50
    assert (counted(namespace, "miss"), counted(namespace, "hit")) == (1, 49)


async def test_a_failing_leader_fails_its_followers_and_releases_the_lock(acache: str) -> None:
    namespace = new_namespace()
    calls = 0

    @cached(namespace, ttl=60, lock_wait_s=5)
    async def flaky(code: str) -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        if calls == 1:
            raise LookupError(code)
        return code

    outcomes = await asyncio.gather(*(flaky("x") for _ in range(5)), return_exceptions=True)
    assert calls == 1
    assert all(isinstance(outcome, LookupError) for outcome in outcomes)
    started = time.monotonic()
    assert await flaky("x") == "x"  # the lock was released: no wait for lock_wait_s
    assert time.monotonic() - started < 1


WORKER = """
import json, sys, time
import redis
from stackwatch.cache import cached, configure

configure(redis_url={url!r}, cache_prefix={prefix!r}, cache_socket_timeout_ms=2000)
counter = redis.Redis.from_url({url!r})

@cached({namespace!r}, ttl=60, lock_wait_s=10)
def expensive(code: str) -> dict:
    counter.incr({prefix!r} + ":calls")
    time.sleep({work_s})
    return {{"code": code, "writer": {name!r}}}

time.sleep(max(0.0, {start_at} - time.time()))
print(json.dumps(expensive("005930")))
"""


def worker_code(prefix: str, namespace: str, name: str, work_s: float, start_at: float) -> str:
    return WORKER.format(
        url=REDIS_URL,
        prefix=prefix,
        namespace=namespace,
        name=name,
        work_s=work_s,
        start_at=start_at,
    )


def test_values_written_by_one_process_are_read_by_another(cache: str, raw: redis.Redis) -> None:
    namespace = new_namespace()
    env = clean_env(PYTHONHASHSEED="1")
    writer = run_python(worker_code(cache, namespace, "first", 0, 0), env)
    assert writer.returncode == 0, writer.stderr
    reader = run_python(
        worker_code(cache, namespace, "second", 0, 0), clean_env(PYTHONHASHSEED="2")
    )
    assert reader.returncode == 0, reader.stderr
    assert json.loads(reader.stdout) == {"code": "005930", "writer": "first"}
    assert raw.get(f"{cache}:calls") == b"1"


def test_concurrent_processes_call_the_function_once(cache: str, raw: redis.Redis) -> None:
    import subprocess
    import sys
    import textwrap

    namespace = new_namespace()
    start_at = time.time() + 4  # after every interpreter has imported stackwatch
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(worker_code(cache, namespace, f"w{n}", 1.0, start_at)),
            ],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    outputs = [process.communicate(timeout=60) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    values = [json.loads(stdout) for stdout, _ in outputs]
    assert raw.get(f"{cache}:calls") == b"1"
    assert len({value["writer"] for value in values}) == 1


def test_invalidate_one_call(cache: str) -> None:
    namespace = new_namespace()
    calls = 0

    @cached(namespace, ttl=60)
    def price(code: str) -> int:
        nonlocal calls
        calls += 1
        return calls

    assert price("a") == 1
    assert price("b") == 2
    assert price.invalidate("a") is True
    assert price.invalidate("a") is False
    assert price("a") == 3
    assert price("b") == 2


async def test_invalidate_one_call_of_an_async_function(acache: str) -> None:
    namespace = new_namespace()
    calls = 0

    @cached(namespace, ttl=60)
    async def price(code: str) -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await price("a") == 1
    assert await price.invalidate("a") is True
    assert await price("a") == 2


def test_namespace_purge_bumps_the_version_and_unlinks_every_key(
    cache: str, raw: redis.Redis
) -> None:
    namespace, neighbour = new_namespace(), new_namespace()
    calls = 0

    @cached(namespace, ttl=60)
    def price(code: int) -> int:
        nonlocal calls
        calls += 1
        return code

    @cached(neighbour, ttl=60)
    def other(code: int) -> int:
        return code

    for code in range(1200):  # more than one SCAN/UNLINK batch
        price(code)
    other(1)
    assert len(keys_of(raw, cache, namespace)) == 1200
    assert invalidate_namespace(namespace) == 1200
    assert keys_of(raw, cache, namespace) == []
    assert len(keys_of(raw, cache, neighbour)) == 1
    assert raw.get(f"{cache}:_meta:{namespace}:version") == b"1"
    price(7)
    assert calls == 1201
    (key,) = keys_of(raw, cache, namespace)
    assert key.startswith(f"{cache}:{namespace}:1:".encode())


async def test_async_namespace_purge(acache: str, raw: redis.Redis) -> None:
    namespace = new_namespace()

    @cached(namespace, ttl=60)
    async def price(code: int) -> int:
        return code

    for code in range(10):
        await price(code)
    assert await invalidate_namespace_async(namespace) == 10
    assert keys_of(raw, acache, namespace) == []


def test_oversized_values_are_returned_but_not_stored(cache: str, raw: redis.Redis) -> None:
    use_cache(cache, cache_max_value_bytes=100)
    namespace = new_namespace()

    @cached(namespace, ttl=60)
    def big(size: int) -> str:
        return "x" * size

    with capture_logs() as logs:
        assert big(500) == "x" * 500
        assert big(500) == "x" * 500
        assert big(10) == "x" * 10
    assert len(keys_of(raw, cache, namespace)) == 1
    assert counted(namespace, "miss") == 3
    oversize = [entry for entry in logs if entry["event"] == "value too large to cache, not stored"]
    assert len(oversize) == 1  # logged once a minute, not per call
    assert oversize[0]["size_bytes"] == 502


def test_unserialisable_return_value_raises_a_clear_error(cache: str) -> None:
    namespace = new_namespace()

    @cached(namespace, ttl=60, lock_wait_s=5)
    def broken(code: str) -> object:
        return object()

    with pytest.raises(TypeError, match=r"broken returned a object that cannot be stored as JSON"):
        broken("a")
    started = time.monotonic()
    with pytest.raises(TypeError):
        broken("a")  # the lock was released, no wait
    assert time.monotonic() - started < 1


def test_unusable_argument_raises_a_type_error_naming_it(cache: str) -> None:
    @cached(new_namespace(), ttl=60)
    def load(code: str, session: object) -> str:
        return code

    with pytest.raises(TypeError, match="argument 'session'"):
        load("a", object())


def test_value_that_no_longer_fits_the_model_is_recomputed(cache: str, raw: redis.Redis) -> None:
    namespace = new_namespace()
    calls = 0

    @cached(namespace, ttl=60)
    def price(code: str) -> Quote:
        nonlocal calls
        calls += 1
        return quote_of(code)

    price("a")
    (key,) = keys_of(raw, cache, namespace)
    raw.set(key, b'{"code": "a", "old_field": 1}')  # written by an older deploy
    assert price("a") == quote_of("a")
    assert calls == 2
    assert price("a") == quote_of("a")
    assert calls == 2


def test_cache_hit_is_set_on_the_current_span(cache: str, spans: InMemorySpanExporter) -> None:
    namespace = new_namespace()

    @cached(namespace, ttl=60)
    def price(code: str) -> str:
        return code

    tracer = trace.get_tracer("tests")
    for _ in range(2):
        with tracer.start_as_current_span("request"):
            price("a")
    requests = [span for span in spans.get_finished_spans() if span.name == "request"]
    assert [span.attributes["cache.hit"] for span in requests] == [False, True]  # type: ignore[index]


def test_instrument_redis_traces_commands_and_is_reversible(
    cache: str, spans: InMemorySpanExporter
) -> None:
    namespace = new_namespace()

    @cached(namespace, ttl=60)
    def price(code: str) -> str:
        return code

    try:
        instrument_redis()
        instrument_redis()  # harmless
        price("a")
        commands = [
            span.name
            for span in spans.get_finished_spans()
            if (span.attributes or {}).get("db.system") == "redis"
            or (span.attributes or {}).get("db.system.name") == "redis"
        ]
        assert "GET" in commands
        assert "SET" in commands or any("SET" in name for name in commands)
    finally:
        uninstrument_redis()
        uninstrument_redis()
    spans.clear()
    price("b")
    assert spans.get_finished_spans() == ()


def test_warm_up_fills_each_warm_call_with_bounded_concurrency(
    cache: str, raw: redis.Redis
) -> None:
    namespace, async_namespace = new_namespace(), new_namespace()
    running = 0
    most = 0
    lock = threading.Lock()

    @cached(namespace, ttl=60, warm=lambda: [("a",), ("b",), {"code": "c"}, "d", "e", "f"])
    def price(code: str) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return code.upper()

    async def popular() -> list[str]:
        return ["x", "y"]

    @cached(async_namespace, ttl=60, warm=popular)
    async def info(code: str) -> str:
        return code

    report = warm_up([namespace, async_namespace], concurrency=2)
    assert report == {
        namespace: {"filled": 6, "present": 0, "failed": 0},
        async_namespace: {"filled": 2, "present": 0, "failed": 0},
    }
    assert most == 2
    assert len(keys_of(raw, cache, namespace)) == 6
    assert warm_up([namespace])[namespace] == {"filled": 0, "present": 6, "failed": 0}
    assert warm_up([namespace], refresh=True)[namespace]["filled"] == 6
    assert counted(namespace, "miss") == 0  # warm-up does not count as traffic
    assert price("a") == "A"
    assert counted(namespace, "hit") == 1


async def test_async_warm_up_reports_failures_without_raising(acache: str) -> None:
    namespace = new_namespace()

    @cached(namespace, ttl=60, warm=lambda: ["ok", "bad", "fine"])
    async def load(code: str) -> str:
        if code == "bad":
            raise LookupError(code)
        return code

    with capture_logs() as logs:
        report = await warm_up_async([namespace])
    assert report == {namespace: {"filled": 2, "present": 0, "failed": 1}}
    assert any(entry["event"] == "cache warm-up call failed" for entry in logs)
    with pytest.raises(RuntimeError, match="await warm_up_async"):
        warm_up([namespace])


def test_low_hit_ratio_is_logged_once_per_crossing(cache: str) -> None:
    use_cache(cache, cache_min_lookups=10, cache_hit_ratio_warn=0.8)
    namespace = new_namespace()

    @cached(namespace, ttl=60)
    def price(code: int) -> int:
        return code

    def crossings(logs: list[dict[str, Any]]) -> list[str]:
        return [e["event"] for e in logs if e.get("namespace") == namespace]

    with capture_logs() as logs:
        for code in range(5):
            price(code)
        cache_stats([namespace])  # flushes the counts: 5 lookups, below the minimum
        assert crossings(logs) == []
        for code in range(5, 12):
            price(code)
        cache_stats([namespace])
        for code in range(12, 20):
            price(code)
        cache_stats([namespace])
        assert crossings(logs) == ["cache hit ratio below target"]
        for _ in range(100):
            price(1)
        cache_stats([namespace])
    assert crossings(logs) == ["cache hit ratio below target", "cache hit ratio back at target"]
    warning = next(e for e in logs if e["event"] == "cache hit ratio below target")
    assert warning["log_level"] == "warning"
    assert warning["hit_ratio"] == 0.0


async def test_stats_router_serves_cache_stats(acache: str) -> None:
    namespace = new_namespace()

    @cached(namespace, ttl="signal")
    async def signal(code: str) -> str:
        return code

    await signal("a")
    await signal("a")
    app = FastAPI()
    app.include_router(stackwatch.cache_stats_router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/system/cache-stats")
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "redis"
    assert body["circuit"] == "closed"
    assert body["namespaces"][namespace] | {"since": None} == {
        "hits": 1,
        "misses": 1,
        "errors": 0,
        "lookups": 2,
        "hit_ratio": 0.5,
        "below_target": False,
        "ttl_s": 600,
        "ttl_policy": "signal",
        "keys": 1,
        "keys_exact": True,
        "memory_bytes_estimate": body["namespaces"][namespace]["memory_bytes_estimate"],
        "version": 0,
        "since": None,
    }
    assert body["redis_used_memory_bytes"] > 0
    memory = REGISTRY.get_sample_value("cache_memory_bytes")
    assert memory is not None
    assert memory > 0


def test_keys_are_stable_across_processes_with_different_hash_seeds(cache: str) -> None:
    code = """
from stackwatch.cache.codec import KeyBuilder
def lookup(codes: set, limit: dict) -> None: ...
print(KeyBuilder(lookup, None).digest(({"005930", "000660", "035420"}, {"b": 1, "a": 2}), {}))
"""
    digests = {
        run_python(code, clean_env(PYTHONHASHSEED=seed)).stdout.strip() for seed in ("1", "2", "3")
    }
    assert len(digests) == 1
    assert len(digests.pop()) == 32


def test_cli_shows_stats_of_namespaces_found_in_redis_and_purges(cache: str) -> None:
    from typer.testing import CliRunner

    from stackwatch.cli import app

    namespace = new_namespace()

    @cached(namespace, ttl=60)
    def price(code: int) -> int:
        return code

    for code in (1, 1, 2):
        price(code)
    cache_stats([namespace])  # flush this process's counts to Redis
    runner = CliRunner()
    shown = runner.invoke(
        app, ["cache", "stats", "--json", "--redis-url", REDIS_URL, "--prefix", cache]
    )
    assert shown.exit_code == 0, shown.output
    entry = json.loads(shown.output)["namespaces"][namespace]
    assert (entry["hits"], entry["misses"], entry["keys"]) == (1, 2, 2)
    where = ["--redis-url", REDIS_URL, "--prefix", cache]
    table = runner.invoke(app, ["cache", "stats", "-n", namespace, *where])
    assert table.exit_code == 0, table.output
    assert "33.3%" in table.output
    purged = runner.invoke(app, ["cache", "purge", namespace, *where])
    assert purged.exit_code == 0, purged.output
    assert f"purged {namespace}: 2 keys deleted" in purged.output
    refused = runner.invoke(app, ["cache", "purge", "bad:name", *where])
    assert refused.exit_code == 2
    assert "invalid cache namespace 'bad:name'" in refused.output


def test_cache_follows_the_settings_setup_installs(redis_prefix: str, raw: redis.Redis) -> None:
    from stackwatch.settings import install_settings, load_settings

    configure()  # no explicit configuration: follow the settings in force
    namespace = new_namespace()

    @cached(namespace, ttl=60)  # decorated before setup(), as at import time
    def price(code: int) -> int:
        return code

    install_settings(
        load_settings(
            redis_url=REDIS_URL, cache_prefix=redis_prefix, cache_socket_timeout_ms=PATIENT_MS
        )
    )
    try:
        assert price(1) == 1
        assert len(keys_of(raw, redis_prefix, namespace)) == 1
    finally:
        install_settings(None)
        configure()
