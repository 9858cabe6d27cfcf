"""Where @cached gets its Redis clients, settings and circuit breaker.

Either hand clients in with ``configure(client=..., async_client=...)`` or let them be
built lazily from ``STACKWATCH_REDIS_URL`` / ``REDIS_URL`` (default
``redis://127.0.0.1:6379/0``). Built clients get a short socket timeout
(``cache_socket_timeout_ms``) and never retry a timeout, because redis-py's default
(ten retries) would turn one hanging Redis into ten timeouts per call; a broken
connection is retried once, which is what reconnecting after a Redis restart needs.
An asyncio client is bound to the event loop it first ran on, so the built asyncio
client is one per loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any

import redis
import redis.asyncio
import structlog
from redis.backoff import NoBackoff

from stackwatch.cache.breaker import CircuitBreaker
from stackwatch.cache.commands import Steps
from stackwatch.cache.namespace import registered
from stackwatch.metrics import cache_memory_bytes
from stackwatch.settings import Settings, get_settings, load_settings

_log = structlog.get_logger("stackwatch.cache")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

FLUSH_INTERVAL_S = 1.0  # how often counter deltas are added to the Redis stats hashes
MEMORY_INTERVAL_S = 15.0  # how often INFO memory refreshes cache_memory_bytes

# A client slower than this to answer makes every cached call that slow while Redis hangs.
_SLOW_TIMEOUT_S = 1.0


class CacheRuntime:
    """The settings, clients and breaker that every cached function uses."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        configured: bool = False,
    ) -> None:
        self.settings = settings
        self.configured = configured  # made by configure(...), not following setup()
        self.prefix = settings.cache_prefix
        self.url = settings.redis_url or DEFAULT_REDIS_URL
        self.timeout_s = settings.cache_socket_timeout_ms / 1000
        self.breaker = CircuitBreaker(
            settings.cache_breaker_failures, settings.cache_breaker_open_s
        )
        self._client = client
        self._built_client: redis.Redis | None = None
        self._async_client = async_client
        self._loop_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, redis.asyncio.Redis
        ] = weakref.WeakKeyDictionary()
        self._build_lock = threading.Lock()
        self.next_flush = 0.0
        self._next_memory_read = 0.0
        for given in (client, async_client):
            if given is not None:
                _warn_if_slow(given)

    def client(self) -> redis.Redis:
        """The sync client: the configured one, or one built from the URL on first use."""
        if self._client is not None:
            return self._client
        if self._built_client is None:
            with self._build_lock:
                if self._built_client is None:
                    self._built_client = redis.Redis.from_url(self.url, **self._client_options())
        return self._built_client

    def async_client(self) -> redis.asyncio.Redis:
        """The asyncio client: the configured one, or one per event loop built from the URL."""
        if self._async_client is not None:
            return self._async_client
        loop = asyncio.get_running_loop()
        built = self._loop_clients.get(loop)
        if built is None:
            options = self._client_options()
            options["retry"] = redis.asyncio.retry.Retry(NoBackoff(), 1, (redis.ConnectionError,))
            built = self._loop_clients[loop] = redis.asyncio.Redis.from_url(self.url, **options)
        return built

    def _client_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "retry": redis.retry.Retry(NoBackoff(), 1, (redis.ConnectionError,)),
            "health_check_interval": 0,
        }

    async def release_loop_client(self) -> None:
        """Close the asyncio client built for the running loop (before a short-lived loop ends)."""
        built = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if built is not None:
            await built.aclose()

    def close(self) -> None:
        """Drop the clients this runtime built; clients handed in belong to the caller."""
        if self._built_client is not None:
            self._built_client.close()
            self._built_client = None
        self._loop_clients.clear()

    # --- counters to Redis ---

    def flush_due(self) -> bool:
        """Whether pending counts should be added to Redis now."""
        return time.monotonic() >= self.next_flush

    def flush_steps(self) -> Steps[None]:
        """Add every namespace's pending counts to its stats hash; check hit ratios; read memory."""
        now = time.monotonic()
        self.next_flush = now + FLUSH_INTERVAL_S
        batch: list[tuple[Any, ...]] = []
        flushed = []
        for space in registered():
            pending = space.take_pending()
            if not any(pending):
                continue
            key = space.stats_key(self.prefix)
            batch += [
                ("HINCRBY", key, "hits", pending[0]),
                ("HINCRBY", key, "misses", pending[1]),
                ("HINCRBY", key, "errors", pending[2]),
                ("HSETNX", key, "since", int(time.time())),
            ]
            flushed.append((space, pending))
        read_memory = now >= self._next_memory_read
        if read_memory:
            self._next_memory_read = now + MEMORY_INTERVAL_S
            batch.append(("INFO", "memory"))
        try:
            replies = yield batch
        except BaseException:
            for space, pending in flushed:
                space.restore_pending(pending)
            raise
        for index, (space, _) in enumerate(flushed):
            totals = [int(reply) for reply in replies[index * 4 : index * 4 + 3]]
            space.check_hit_ratio(
                totals, self.settings.cache_hit_ratio_warn, self.settings.cache_min_lookups
            )
        if read_memory:
            record_memory(replies[-1])


def record_memory(info: Any) -> int | None:
    """Set cache_memory_bytes from an ``INFO memory`` reply; return the value."""
    if isinstance(info, dict) and "used_memory" in info:
        used = int(info["used_memory"])
        cache_memory_bytes.set(used)
        return used
    return None


def _warn_if_slow(client: redis.Redis | redis.asyncio.Redis) -> None:
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    if timeout is None or timeout > _SLOW_TIMEOUT_S:
        _log.warning(
            "the Redis client given to stackwatch.cache has a long socket timeout; "
            "a hanging Redis will stall cached calls that long (set socket_timeout=0.1)",
            socket_timeout=timeout,
        )


_runtime: CacheRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> CacheRuntime:
    """The current runtime: the one ``configure()`` made, else one following the settings in force.

    Without ``configure(...)``, the runtime follows ``get_settings()``: the environment
    at first, then what ``stackwatch.setup(**overrides)`` installed, even when the
    functions were decorated (at import) before ``setup()`` ran.
    """
    current = _runtime
    if current is not None and (current.configured or current.settings is get_settings()):
        return current
    with _runtime_lock:
        if _runtime is None or not (_runtime.configured or _runtime.settings is get_settings()):
            _install(CacheRuntime(get_settings()))
        assert _runtime is not None
        return _runtime


def _install(new: CacheRuntime) -> None:
    global _runtime
    old, _runtime = _runtime, new
    if old is not None:
        old.close()
    for space in registered():
        space.forget_version()


async def aclose() -> None:
    """Close the asyncio client the cache built for the running event loop.

    Call it when a loop ends (a FastAPI lifespan's shutdown, the end of an
    ``asyncio.run``); the next cached call on another loop builds a new client.
    Clients passed to ``configure()`` are the caller's to close.
    """
    await runtime().release_loop_client()


def configure(
    *,
    client: redis.Redis | None = None,
    async_client: redis.asyncio.Redis | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> None:
    """Tell @cached which Redis to use and how; call again to change it (tests, reconfiguration).

    ``client`` serves sync functions, ``async_client`` async ones; a flavour not given
    is built from ``redis_url``. ``settings`` or setting overrides such as
    ``cache_prefix="app"`` (applied over the environment) choose everything else.
    ``configure()`` without arguments goes back to following ``stackwatch.setup()``.
    """
    if client is None and async_client is None and settings is None and not overrides:
        with _runtime_lock:
            _install(CacheRuntime(get_settings()))
        return
    if settings is not None and overrides:
        raise TypeError("configure() takes settings= or setting overrides, not both")
    if client is not None and isinstance(client, redis.asyncio.Redis):
        raise TypeError("configure(client=...) got an asyncio client: pass it as async_client=")
    if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
        raise TypeError("configure(async_client=...) needs a redis.asyncio.Redis")
    chosen = settings if settings is not None else load_settings(**overrides)
    with _runtime_lock:
        _install(CacheRuntime(chosen, client=client, async_client=async_client, configured=True))
