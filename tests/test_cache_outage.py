"""@cached when Redis dies or hangs: right values, bounded latency, the breaker's life cycle.

These tests stop and stall Redis, so each runs its own redis-server on a free port
(tests/support/redis_server.py), never the shared one.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from stackwatch.cache import aclose, cache_stats, cached, configure, invalidate_namespace
from stackwatch.cache.runtime import runtime
from tests.conftest import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration

PATIENT_MS = 2000


class CountingRedis(redis.Redis):
    """A real client that counts the commands and pipelines it sends."""

    sent = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.sent += 1
        return super().execute_command(*args, **options)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        CountingRedis.sent += 1
        return super().pipeline(*args, **kwargs)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server this test may stop, restart and stall."""
    instance = RedisServer(free_port(), tmp_path)
    instance.start()
    yield instance
    instance.stop()
    configure()


@pytest.fixture
async def aserver(server: RedisServer) -> AsyncIterator[RedisServer]:
    """``server`` for async tests: also closes the client built for the test's event loop."""
    yield server
    await aclose()


def counted(namespace: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "cache_requests_total", {"namespace": namespace, "result": result}
    )
    return value or 0.0


def circuit_gauge() -> float | None:
    return REGISTRY.get_sample_value("cache_circuit_open")


def breaker_events(logs: list[dict[str, Any]]) -> list[str]:
    return [entry["event"] for entry in logs if str(entry["event"]).startswith("cache circuit")]


def test_redis_stopped_mid_run_values_stay_right_and_the_breaker_opens_then_closes(
    server: RedisServer,
) -> None:
    client = CountingRedis(
        port=server.port,
        socket_timeout=1.0,  # a stopped server refuses at once; this only absorbs load
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1, (redis.ConnectionError,)),
    )
    configure(client=client, cache_breaker_failures=3, cache_breaker_open_s=0.5)
    namespace = f"t{uuid.uuid4().hex[:10]}"
    calls = 0

    @cached(namespace, ttl=60)
    def price(code: str) -> str:
        nonlocal calls
        calls += 1
        return f"value-{code}"

    with capture_logs() as logs:
        assert price("a") == "value-a"
        assert price("a") == "value-a"
        assert (counted(namespace, "miss"), counted(namespace, "hit")) == (1, 1)
        server.stop()
        for attempt in range(10):
            if attempt == 3:
                sent_when_open = CountingRedis.sent
            assert price("a") == "value-a"
        assert counted(namespace, "error") == 10
        assert runtime().breaker.state == "open"
        assert circuit_gauge() == 1
        assert CountingRedis.sent == sent_when_open  # open: no Redis call at all
        stats = cache_stats([namespace])
        assert stats["source"] == "process"
        assert stats["namespaces"][namespace]["errors"] == 10
        server.start()
        time.sleep(0.6)
        assert price("a") == "value-a"  # the probe: Redis answers, the breaker closes
        assert runtime().breaker.state == "closed"
        assert circuit_gauge() == 0
        assert price("a") == "value-a"
    assert breaker_events(logs) == [
        "cache circuit opened, calling functions directly",
        "cache circuit half-open, probing redis",
        "cache circuit closed, redis is back",
    ]
    assert calls == 12  # first miss, ten bypasses, one miss on the restarted (empty) Redis
    assert counted(namespace, "hit") == 2
    client.close()


async def test_async_calls_return_right_values_while_redis_is_down(aserver: RedisServer) -> None:
    server = aserver
    configure(
        redis_url=server.url,
        cache_socket_timeout_ms=PATIENT_MS,
        cache_breaker_failures=2,
        cache_breaker_open_s=30,
    )
    namespace = f"t{uuid.uuid4().hex[:10]}"

    @cached(namespace, ttl=60)
    async def price(code: str) -> dict[str, str]:
        return {"code": code}

    assert await price("a") == {"code": "a"}
    server.stop()
    results = await asyncio.gather(*(price(str(n)) for n in range(20)))
    assert results == [{"code": str(n)} for n in range(20)]
    assert counted(namespace, "error") == 20
    assert runtime().breaker.state == "open"


def stall(server: RedisServer, seconds: float) -> threading.Thread:
    """Block the server with DEBUG SLEEP from another connection; returns once it is asleep."""
    blocker = server.client()

    def sleep() -> None:
        blocker.execute_command("DEBUG", "SLEEP", seconds)
        blocker.close()

    thread = threading.Thread(target=sleep)
    thread.start()
    time.sleep(0.1)
    return thread


def patient(server: RedisServer) -> None:
    """A long socket timeout: the load of other test suites must not make a slow reply an error."""
    configure(redis_url=server.url, cache_socket_timeout_ms=PATIENT_MS)


def impatient(server: RedisServer) -> None:
    """The default 100 ms socket timeout, and a breaker that stays closed."""
    configure(redis_url=server.url, cache_socket_timeout_ms=100, cache_breaker_failures=100)


def test_hanging_redis_costs_each_call_one_socket_timeout(server: RedisServer) -> None:
    patient(server)
    namespace = f"t{uuid.uuid4().hex[:10]}"

    @cached(namespace, ttl=60)
    def price(code: str) -> str:
        return code * 2

    assert price("a") == "aa"
    impatient(server)
    thread = stall(server, 2.0)
    durations = []
    for _ in range(3):
        started = time.monotonic()
        assert price("a") == "aa"
        durations.append(time.monotonic() - started)
    thread.join()
    assert max(durations) < 0.5, durations  # 100 ms timeout, no retries
    assert counted(namespace, "error") == 3
    patient(server)
    assert price("a") == "aa"  # Redis is back: a hit on a fresh connection
    assert counted(namespace, "hit") == 1


async def test_hanging_redis_costs_each_async_call_one_socket_timeout(
    aserver: RedisServer,
) -> None:
    server = aserver
    patient(server)
    namespace = f"t{uuid.uuid4().hex[:10]}"

    @cached(namespace, ttl=60)
    async def price(code: str) -> str:
        return code * 2

    assert await price("a") == "aa"
    await aclose()
    impatient(server)
    thread = await asyncio.to_thread(stall, server, 2.0)
    started = time.monotonic()
    results = await asyncio.gather(*(price("a") for _ in range(5)))
    elapsed = time.monotonic() - started
    await asyncio.to_thread(thread.join)
    assert results == ["aa"] * 5
    assert elapsed < 0.5, elapsed
    assert counted(namespace, "error") == 5
    await aclose()
    patient(server)
    assert await price("a") == "aa"
    assert counted(namespace, "hit") == 1


def test_namespace_purge_uses_scan_and_unlink_never_keys(server: RedisServer) -> None:
    patient(server)
    namespace = f"t{uuid.uuid4().hex[:10]}"

    @cached(namespace, ttl=60)
    def price(code: int) -> int:
        return code

    for code in range(30):
        price(code)
    admin = server.client()
    admin.config_resetstat()
    assert invalidate_namespace(namespace) == 30
    commands = admin.info("commandstats")
    assert "cmdstat_keys" not in commands
    assert commands["cmdstat_unlink"]["calls"] >= 1
    assert commands["cmdstat_scan"]["calls"] >= 1
    left = sorted(key.decode().rsplit(":", 1)[1] for key in admin.scan_iter())
    assert left == ["stats", "version"]  # only the namespace's bookkeeping is left
    admin.close()
