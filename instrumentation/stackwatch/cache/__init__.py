"""``stackwatch.cache``: the ``@cached`` Redis decorator, its stats, warm-up and invalidation.

Quick start::

    from stackwatch.cache import cached, configure

    configure(client=redis.Redis(socket_timeout=0.1), async_client=redis.asyncio.Redis(...))
    # or nothing at all: clients are built from STACKWATCH_REDIS_URL / REDIS_URL

    @cached("price")                      # TTL from the "price" policy (30 s)
    async def get_price(code: str) -> Price: ...

See docs/cache.md for keys, values, accounting, the breaker and their settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stackwatch.cache.decorator import Cached, cached
from stackwatch.cache.invalidation import invalidate_namespace, invalidate_namespace_async
from stackwatch.cache.runtime import aclose, configure
from stackwatch.cache.stats import CACHE_STATS_PATH, cache_stats, cache_stats_async
from stackwatch.cache.warmup import warm_up, warm_up_async

if TYPE_CHECKING:
    from fastapi import APIRouter

    cache_stats_router: APIRouter

__all__ = [
    "CACHE_STATS_PATH",
    "Cached",
    "aclose",
    "cache_stats",
    "cache_stats_async",
    "cache_stats_router",
    "cached",
    "configure",
    "instrument_redis",
    "invalidate_namespace",
    "invalidate_namespace_async",
    "uninstrument_redis",
    "warm_up",
    "warm_up_async",
]


def instrument_redis(**options: Any) -> None:
    """Trace Redis commands with OpenTelemetry's Redis instrumentation; twice is harmless.

    ``options`` go to ``RedisInstrumentor().instrument`` (``tracer_provider``,
    ``request_hook``, ``response_hook``...).
    """
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(**options)


def uninstrument_redis() -> None:
    """Undo ``instrument_redis``; harmless when not instrumented."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def __getattr__(name: str) -> Any:
    # Built on first access so that importing stackwatch.cache does not import FastAPI.
    if name == "cache_stats_router":
        from stackwatch.cache.stats import build_router

        router = build_router()
        globals()[name] = router
        return router
    raise AttributeError(f"module 'stackwatch.cache' has no attribute {name!r}")
