"""``@cached``: a Redis cache in front of a sync or async function.

A call computes the key (no I/O), then, unless the circuit breaker is open, does one
``GET``. A hit is decoded and returned. A miss joins the call already computing that
key in this process, if any (single-flight); otherwise it takes a short Redis lock
(``SET NX PX``) so that other processes wait for its value instead of calling the
function too, computes, and stores the value and releases the lock in one round trip.
Any Redis error or timeout counts as ``error`` and the function is simply called:
the cache can make a call faster, never fail it.

``result`` in ``cache_requests_total`` says whether *the function ran*: ``hit`` when
the value came from Redis or from a concurrent call's computation, ``miss`` when the
function ran to fill the cache, ``error`` when it ran because Redis failed or the
breaker was open. So misses + errors is the load the cache let through.

The hit path is written out twice, sync and async, on purpose: it is what a cache
is judged by, and sharing it would add a generator's overhead to every call. What
happens after a miss (lock, wait, call, store) is written once, as a generator of
steps that a sync and an async driver run; so are invalidation and warm-up checks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar, cast

import redis
import redis.asyncio
import structlog
from opentelemetry import trace

from stackwatch.cache.codec import MISSING, KeyBuilder, ValueCodec
from stackwatch.cache.commands import Steps, run_async, run_sync
from stackwatch.cache.namespace import ERROR, HIT, MISS, Namespace, TtlSpec, namespace_for
from stackwatch.cache.runtime import REDIS_ERRORS, CacheRuntime, runtime

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_log = structlog.get_logger("stackwatch.cache")

LOCK_TTL_MS = 10_000  # a crashed lock holder blocks nobody longer than this
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.05
OVERSIZE_LOG_INTERVAL_S = 60.0

# Delete the lock only if it is still ours (it may have expired and been taken).
_RELEASE_LOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)

# Steps of the fill conversation besides Redis commands: call the function, sleep, pipeline.
CALL: tuple[Any, ...] = ("call",)
SLEEP = "sleep"
PIPELINE = "pipeline"
Fill = Generator[tuple[Any, ...], Any, Any]

WarmSource = Callable[[], Iterable[Any]] | Callable[[], Awaitable[Iterable[Any]]]


class Cached(Protocol[P, R_co]):
    """A function wrapped by ``@cached``: called as before, plus ``invalidate``, ``uncached``."""

    @property
    def namespace(self) -> str:
        """The namespace given to ``@cached``."""

    @property
    def uncached(self) -> Callable[P, R_co]:
        """The original function, bypassing the cache."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Delete the cached value of this call (a coroutine for async functions)."""


def _mark_span(hit: bool) -> None:
    trace.get_current_span().set_attribute("cache.hit", hit)


class _Flight:
    """One in-process computation of a key that concurrent sync callers wait for."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class CachedCall:
    """Everything the sync and async wrappers of one function share."""

    def __init__(
        self,
        function: Callable[..., Any],
        space: Namespace,
        key: Callable[..., Any] | None,
        warm: WarmSource | None,
        lock_wait_s: float,
    ) -> None:
        self.function = function
        self.space = space
        self.keys = KeyBuilder(function, key)
        self.codec = ValueCodec(function, self.keys.identity)
        self.warm = warm
        self.lock_wait_s = lock_wait_s
        self.is_async = inspect.iscoroutinefunction(function)
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._async_flights: dict[str, asyncio.Future[Any]] = {}
        self._oversize_logged_at = -OVERSIZE_LOG_INTERVAL_S

    # --- shared pieces ---

    def ttl_ms(self, rt: CacheRuntime) -> int:
        """TTL of a value written now, up to ``cache_ttl_jitter`` shorter: expiries spread out."""
        seconds = self.space.ttl_seconds(rt.settings.cache_ttl_policies)
        shortened = seconds * 1000 * (1.0 - random.random() * rt.settings.cache_ttl_jitter)
        return max(1, int(shortened))

    def payload(self, rt: CacheRuntime, value: Any) -> bytes | None:
        """The bytes to store, or None (logged, at most once a minute) when over the size limit."""
        encoded = self.codec.encode(value)
        limit = rt.settings.cache_max_value_bytes
        if len(encoded) <= limit:
            return encoded
        now = time.monotonic()
        if now - self._oversize_logged_at >= OVERSIZE_LOG_INTERVAL_S:
            self._oversize_logged_at = now
            _log.warning(
                "value too large to cache, not stored",
                function=self.keys.identity,
                namespace=self.space.name,
                size_bytes=len(encoded),
                limit_bytes=limit,
            )
        return None

    def count_hit(self) -> None:
        self.space.count(HIT)
        _mark_span(True)

    def count_miss(self) -> None:
        self.space.count(MISS)
        _mark_span(False)

    def count_error(self) -> None:
        self.space.count(ERROR)
        _mark_span(False)

    def decode_found(self, raw: Any) -> Any:
        """The value of a GET reply, or MISSING for nil or a value that no longer decodes."""
        if raw is None:
            return MISSING
        return self.codec.decode(raw)

    # --- filling a missed key: written once, driven by a sync or an async driver ---

    def _fill_steps(self, rt: CacheRuntime, key: str, lock_key: str) -> Fill:
        """Take the key's lock (or wait for its holder), call the function, store, release."""
        token: str | None = secrets.token_hex(8)
        try:
            # Look again in the same round trip: the value may have been stored since
            # this call's GET (a leader that finished meanwhile has released its lock).
            raw, locked = yield (
                PIPELINE,
                [("GET", key), ("SET", lock_key, token, "NX", "PX", LOCK_TTL_MS)],
            )
            found = self.decode_found(raw)
            if found is not MISSING:
                yield from self._store_steps(rt, key, None, lock_key, token if locked else None)
                self.count_hit()
                return found
            if not locked:
                token = None
                found = yield from self._wait_steps(key, lock_key)
                if found is not MISSING:
                    self.count_hit()
                    return found
        except REDIS_ERRORS as error:
            rt.breaker.record_failure(error)
            self.count_error()
            return (yield CALL)
        self.count_miss()
        try:
            value = yield CALL
            payload = self.payload(rt, value)
        except BaseException:
            yield from self._store_steps(rt, key, None, lock_key, token)
            raise
        yield from self._store_steps(rt, key, payload, lock_key, token)
        return value

    def _wait_steps(self, key: str, lock_key: str) -> Fill:
        """Poll for the lock holder's value; MISSING if it gave up (lock gone) or took too long."""
        deadline = time.monotonic() + self.lock_wait_s
        delay = POLL_FIRST_S
        while (remaining := deadline - time.monotonic()) > 0:
            yield (SLEEP, min(delay, remaining))
            delay = min(delay * 2, POLL_MAX_S)
            raw, holder = yield ("MGET", key, lock_key)
            value = self.decode_found(raw)
            if value is not MISSING or holder is None:
                return value
        return MISSING

    def _store_steps(
        self, rt: CacheRuntime, key: str, payload: bytes | None, lock_key: str, token: str | None
    ) -> Fill:
        """Store the value and release our lock in one round trip; a failure only counts."""
        batch: list[tuple[Any, ...]] = []
        if payload is not None:
            batch.append(("SET", key, payload, "PX", self.ttl_ms(rt)))
        if token is not None:
            batch.append(("EVAL", _RELEASE_LOCK, 1, lock_key, token))
        if not batch:
            return
        started = time.perf_counter()
        try:
            yield (PIPELINE, batch)
        except REDIS_ERRORS as error:
            rt.breaker.record_failure(error)
            return
        self.space.set_seconds.observe(time.perf_counter() - started)

    def _drive_sync(
        self, steps: Fill, client: redis.Redis, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``steps`` with the sync client and the sync function."""
        reply: Any = None
        failure: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if failure is None else steps.throw(failure)
            except StopIteration as done:
                return done.value
            failure = None
            try:
                if step is CALL:
                    reply = self.function(*args, **kwargs)
                elif step[0] is SLEEP:
                    time.sleep(step[1])
                    reply = None
                elif step[0] is PIPELINE:
                    pipe = client.pipeline(transaction=False)
                    for command in step[1]:
                        pipe.execute_command(*command)
                    reply = pipe.execute()
                else:
                    reply = client.execute_command(*step)
            except BaseException as error:
                failure = error

    async def _drive_async(
        self,
        steps: Fill,
        client: redis.asyncio.Redis,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``steps`` with the asyncio client and the async function."""
        reply: Any = None
        failure: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if failure is None else steps.throw(failure)
            except StopIteration as done:
                return done.value
            failure = None
            try:
                if step is CALL:
                    reply = await self.function(*args, **kwargs)
                elif step[0] is SLEEP:
                    await asyncio.sleep(step[1])
                    reply = None
                elif step[0] is PIPELINE:
                    pipe = client.pipeline(transaction=False)
                    for command in step[1]:
                        pipe.execute_command(*command)
                    reply = await pipe.execute()
                else:
                    reply = await client.execute_command(*step)
            except BaseException as error:
                failure = error

    # --- sync ---

    def call_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One call of a sync cached function."""
        digest = self.keys.digest(args, kwargs)
        rt = runtime()
        if not rt.breaker.allow():
            self.count_error()
            return self.function(*args, **kwargs)
        client = rt.client()
        space = self.space
        try:
            version = space.cached_version()
            if version is None:
                version = space.remember_version(client.get(space.version_key(rt.prefix)))
            key = space.data_key(rt.prefix, version, digest)
            started = time.perf_counter()
            raw = client.get(key)
            space.get_seconds.observe(time.perf_counter() - started)
        except REDIS_ERRORS as error:
            rt.breaker.record_failure(error)
            self.count_error()
            return self.function(*args, **kwargs)
        rt.breaker.record_success()
        value = self.decode_found(raw)
        if value is MISSING:
            value = self._single_flight_sync(
                rt, client, key, space.lock_key(rt.prefix, version, digest), args, kwargs
            )
        else:
            self.count_hit()
        if rt.flush_due():
            self.flush_sync(rt, client)
        return value

    def _single_flight_sync(
        self,
        rt: CacheRuntime,
        client: redis.Redis,
        key: str,
        lock_key: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        with self._flights_lock:
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leading:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            self.count_hit()
            return flight.value
        try:
            flight.value = self._drive_sync(
                self._fill_steps(rt, key, lock_key), client, args, kwargs
            )
            return flight.value
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.done.set()

    def flush_sync(self, rt: CacheRuntime, client: redis.Redis) -> None:
        """Add pending counts to Redis; a failure counts against the breaker, nothing is lost."""
        try:
            run_sync(client, rt.flush_steps())
        except REDIS_ERRORS as error:
            rt.breaker.record_failure(error)

    def invalidate_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Delete this call's value; False (and a warning) if Redis could not be reached."""
        rt = runtime()
        steps = self._invalidate_steps(rt, self.keys.digest(args, kwargs))
        try:
            return run_sync(rt.client(), steps)
        except REDIS_ERRORS as error:
            return self._invalidation_failed(rt, error)

    def fill_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any], refresh: bool) -> bool:
        """Warm-up: store one call's value (unless present and not ``refresh``); True if stored."""
        rt = runtime()
        client = rt.client()
        key = run_sync(client, self._fill_key_steps(rt, self.keys.digest(args, kwargs), refresh))
        if key is None:
            return False
        payload = self.payload(rt, self.function(*args, **kwargs))
        if payload is None:
            return False
        client.set(key, payload, px=self.ttl_ms(rt))
        return True

    def _invalidate_steps(self, rt: CacheRuntime, digest: str) -> Steps[bool]:
        space = self.space
        (version,) = yield [("GET", space.version_key(rt.prefix))]
        key = space.data_key(rt.prefix, space.remember_version(version), digest)
        (deleted,) = yield [("DEL", key)]
        return bool(deleted)

    def _invalidation_failed(self, rt: CacheRuntime, error: BaseException) -> bool:
        rt.breaker.record_failure(error)
        _log.warning(
            "cache invalidation failed", namespace=self.space.name, error=type(error).__name__
        )
        return False

    def _fill_key_steps(self, rt: CacheRuntime, digest: str, refresh: bool) -> Steps[str | None]:
        """The key a warm-up should write, or None when it holds a value and refresh is off."""
        space = self.space
        (version,) = yield [("GET", space.version_key(rt.prefix))]
        key = space.data_key(rt.prefix, space.remember_version(version), digest)
        if refresh:
            return key
        (present,) = yield [("EXISTS", key)]
        return None if present else key

    # --- async ---

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One call of an async cached function."""
        digest = self.keys.digest(args, kwargs)
        rt = runtime()
        if not rt.breaker.allow():
            self.count_error()
            return await self.function(*args, **kwargs)
        client = rt.async_client()
        space = self.space
        try:
            version = space.cached_version()
            if version is None:
                version = space.remember_version(await client.get(space.version_key(rt.prefix)))
            key = space.data_key(rt.prefix, version, digest)
            started = time.perf_counter()
            raw = await client.get(key)
            space.get_seconds.observe(time.perf_counter() - started)
        except REDIS_ERRORS as error:
            rt.breaker.record_failure(error)
            self.count_error()
            return await self.function(*args, **kwargs)
        rt.breaker.record_success()
        value = self.decode_found(raw)
        if value is MISSING:
            lock_key = space.lock_key(rt.prefix, version, digest)
            value = await self._single_flight_async(rt, client, key, lock_key, args, kwargs)
        else:
            self.count_hit()
        if rt.flush_due():
            await self.flush_async(rt, client)
        return value

    async def _single_flight_async(
        self,
        rt: CacheRuntime,
        client: redis.asyncio.Redis,
        key: str,
        lock_key: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        loop = asyncio.get_running_loop()
        flight = self._async_flights.get(key)
        if flight is not None and flight.get_loop() is loop:
            await asyncio.wait((flight,))  # never cancels the leader's future
            if not flight.cancelled():
                error = flight.exception()
                if error is not None:
                    raise error
                self.count_hit()
                return flight.result()
            # The leader was cancelled: this caller computes in its place.
        flight = loop.create_future()
        self._async_flights[key] = flight
        try:
            value = await self._drive_async(
                self._fill_steps(rt, key, lock_key), client, args, kwargs
            )
        except asyncio.CancelledError:
            flight.cancel()
            raise
        except BaseException as error:
            flight.set_exception(error)
            flight.exception()  # mark it retrieved: no "never retrieved" noise without followers
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            if self._async_flights.get(key) is flight:
                del self._async_flights[key]

    async def flush_async(self, rt: CacheRuntime, client: redis.asyncio.Redis) -> None:
        """Async twin of ``flush_sync``."""
        try:
            await run_async(client, rt.flush_steps())
        except REDIS_ERRORS as error:
            rt.breaker.record_failure(error)

    async def invalidate_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Async twin of ``invalidate_sync``."""
        rt = runtime()
        steps = self._invalidate_steps(rt, self.keys.digest(args, kwargs))
        try:
            return await run_async(rt.async_client(), steps)
        except REDIS_ERRORS as error:
            return self._invalidation_failed(rt, error)

    async def fill_async(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], refresh: bool
    ) -> bool:
        """Async twin of ``fill_sync``."""
        rt = runtime()
        client = rt.async_client()
        steps = self._fill_key_steps(rt, self.keys.digest(args, kwargs), refresh)
        key = await run_async(client, steps)
        if key is None:
            return False
        payload = self.payload(rt, await self.function(*args, **kwargs))
        if payload is None:
            return False
        await client.set(key, payload, px=self.ttl_ms(rt))
        return True


def cached(
    namespace: str,
    ttl: TtlSpec = None,
    key: Callable[..., Any] | None = None,
    *,
    warm: WarmSource | None = None,
    lock_wait_s: float = 2.0,
) -> Callable[[Callable[P, R]], Cached[P, R]]:
    """Cache a sync or async function's results in Redis under ``namespace``.

    Args:
        namespace: the kind of data (``price``, ``signal``...): its keys, counters and TTL.
        ttl: seconds, or a TTL policy name; None uses the policy named like the namespace.
        key: optional callable taking the function's arguments and returning what
            identifies a call (e.g. to leave out a session or ``self``).
        warm: optional callable returning the argument tuples ``warm_up()`` pre-fills.
        lock_wait_s: how long a process waits for another process computing the same
            key before calling the function itself.
    """
    if not isinstance(ttl, int | str | None):
        raise TypeError(f"@cached({namespace!r}): ttl must be seconds (int) or a policy name (str)")
    space = namespace_for(namespace, ttl, runtime().settings.cache_ttl_policies)

    def decorate(function: Callable[P, R]) -> Cached[P, R]:
        call = CachedCall(function, space, key, warm, lock_wait_s)
        space.functions.append(call)
        if call.is_async:

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await call.call_async(args, kwargs)

            async def invalidate_async(*args: Any, **kwargs: Any) -> bool:
                return await call.invalidate_async(args, kwargs)

            wrapper: Any = async_wrapper
            wrapper.invalidate = invalidate_async
        else:

            @functools.wraps(function)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                return call.call_sync(args, kwargs)

            def invalidate_sync(*args: Any, **kwargs: Any) -> bool:
                return call.invalidate_sync(args, kwargs)

            wrapper = sync_wrapper
            wrapper.invalidate = invalidate_sync
        wrapper.namespace = namespace
        wrapper.uncached = function
        return cast("Cached[P, R]", wrapper)

    return decorate
