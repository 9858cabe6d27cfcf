"""Warm-up: fill the cache ahead of traffic for the calls each ``warm=`` source names.

Used at application start (so the first users do not all miss) and by a periodic
task (the demo's Celery ``refresh_cache``) with ``refresh=True`` to recompute values
before they expire. Concurrency is bounded so a warm-up cannot flood the database the
cache protects; a failing call is counted and logged, never raised.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog

from stackwatch.cache.decorator import CachedCall
from stackwatch.cache.namespace import registered
from stackwatch.cache.runtime import REDIS_ERRORS, aclose, runtime

_log = structlog.get_logger("stackwatch.cache")

Arguments = tuple[tuple[Any, ...], dict[str, Any]]


def _arguments(item: Any) -> Arguments:
    """A warm item: a tuple of positional arguments, a dict of keyword ones, or one argument."""
    if isinstance(item, tuple):
        return item, {}
    if isinstance(item, dict):
        return (), item
    return (item,), {}


def _warm_calls(namespaces: Iterable[str] | None) -> list[CachedCall]:
    wanted = None if namespaces is None else set(namespaces)
    return [
        call
        for space in registered(None if wanted is None else wanted.__contains__)
        for call in space.functions
        if call.warm is not None
    ]


def _new_report() -> dict[str, int]:
    return {"filled": 0, "present": 0, "failed": 0}


def _tally(
    reports: dict[str, dict[str, int]], call: CachedCall, outcome: bool | BaseException
) -> None:
    report = reports.setdefault(call.space.name, _new_report())
    if isinstance(outcome, BaseException):
        report["failed"] += 1
        if isinstance(outcome, REDIS_ERRORS):
            runtime().breaker.record_failure(outcome)
        _log.warning(
            "cache warm-up call failed",
            function=call.keys.identity,
            error=type(outcome).__name__,
        )
    else:
        report["filled" if outcome else "present"] += 1


async def _items_async(call: CachedCall) -> list[Arguments]:
    assert call.warm is not None
    source = call.warm()
    items = await source if inspect.isawaitable(source) else source
    return [_arguments(item) for item in items]


def _items_sync(call: CachedCall) -> list[Arguments]:
    assert call.warm is not None
    source = call.warm()
    if inspect.isawaitable(source):
        source = asyncio.run(_awaited(source))
    return [_arguments(item) for item in source]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


async def _fill_async(
    calls: list[CachedCall], refresh: bool, concurrency: int
) -> dict[str, dict[str, int]]:
    reports: dict[str, dict[str, int]] = {call.space.name: _new_report() for call in calls}
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def fill(call: CachedCall, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        async with semaphore:
            if call.is_async:
                return await call.fill_async(args, kwargs, refresh)
            return await asyncio.to_thread(call.fill_sync, args, kwargs, refresh)

    jobs: list[tuple[CachedCall, Any]] = []
    for call in calls:
        try:
            items = await _items_async(call)
        except Exception as error:
            _tally(reports, call, error)
            continue
        jobs += [(call, fill(call, args, kwargs)) for args, kwargs in items]
    outcomes = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
    for (call, _), outcome in zip(jobs, outcomes, strict=True):
        _tally(reports, call, outcome)
    return reports


async def warm_up_async(
    namespaces: Iterable[str] | None = None, *, refresh: bool = False, concurrency: int = 4
) -> dict[str, dict[str, int]]:
    """Fill (``refresh=True``: recompute) every warm call, at most ``concurrency`` at a time.

    Returns per namespace how many values were ``filled``, already ``present`` or
    ``failed``. Sync functions run in threads, async ones on this loop.
    """
    reports = await _fill_async(_warm_calls(namespaces), refresh, concurrency)
    _log.info("cache warm-up done", refresh=refresh, namespaces=reports)
    return reports


def warm_up(
    namespaces: Iterable[str] | None = None, *, refresh: bool = False, concurrency: int = 4
) -> dict[str, dict[str, int]]:
    """``warm_up_async`` for code without an event loop (start-up scripts, Celery tasks).

    Raises RuntimeError inside a running event loop: ``await warm_up_async()`` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("warm_up() called inside an event loop: use await warm_up_async()")
    calls = _warm_calls(namespaces)
    reports: dict[str, dict[str, int]] = {call.space.name: _new_report() for call in calls}
    async_calls = [call for call in calls if call.is_async]
    if async_calls:
        for name, counts in asyncio.run(
            _fill_async_once(async_calls, refresh, concurrency)
        ).items():
            for outcome, count in counts.items():
                reports[name][outcome] += count
    jobs = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for call in calls:
            if call.is_async:
                continue
            try:
                items = _items_sync(call)
            except Exception as error:
                _tally(reports, call, error)
                continue
            jobs += [
                (call, pool.submit(call.fill_sync, args, kwargs, refresh)) for args, kwargs in items
            ]
        for call, future in jobs:
            failure = future.exception()
            _tally(reports, call, failure if failure is not None else future.result())
    _log.info("cache warm-up done", refresh=refresh, namespaces=reports)
    return reports


async def _fill_async_once(
    calls: list[CachedCall], refresh: bool, concurrency: int
) -> dict[str, dict[str, int]]:
    """Fill async calls on a loop made for the purpose, closing its Redis client before it ends."""
    try:
        return await _fill_async(calls, refresh, concurrency)
    finally:
        await aclose()
