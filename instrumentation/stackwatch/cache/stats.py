"""``cache_stats()``: hits, misses, errors, hit ratio, keys, memory and TTL per namespace.

Counts come from the Redis stats hashes (every process adds its counts about once a
second, see namespace.py), so the numbers cover every worker and host sharing the
cache; if Redis cannot be reached they come from this process alone and say so.
Keys are counted with SCAN (never KEYS), bounded per namespace; memory is MEMORY
USAGE of a sample of keys times the key count, so it is an estimate by design.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from stackwatch.cache.commands import Steps, run_async, run_sync
from stackwatch.cache.namespace import ERROR, HIT, MISS, Namespace, check_name, lookup, registered
from stackwatch.cache.runtime import REDIS_ERRORS, CacheRuntime, record_memory, runtime

if TYPE_CHECKING:
    from fastapi import APIRouter

SCAN_BATCH = 1000
SCAN_ROUNDS_MAX = 20  # at most ~20 000 keys examined per namespace and call
MEMORY_SAMPLE = 16
CACHE_STATS_PATH = "/api/system/cache-stats"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _named(names: Iterable[str]) -> list[Namespace]:
    """The namespaces called ``names``: this process's own, or bare ones (no TTL known here)."""
    spaces = []
    for name in sorted(set(names)):
        check_name(name)
        spaces.append(lookup(name) or Namespace(name, None, 0))
    return spaces


def _discover(prefix: str) -> Steps[list[str]]:
    """Names of the namespaces that have counters in Redis (other processes', a CLI's view)."""
    cursor: Any = 0
    names: set[str] = set()
    pattern = f"{prefix}:_meta:*:stats"
    for _ in range(SCAN_ROUNDS_MAX):
        (reply,) = yield [("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_BATCH)]
        cursor, keys = reply
        names.update(_text(key)[len(prefix) + len(":_meta:") : -len(":stats")] for key in keys)
        if int(cursor) == 0:
            break
    return sorted(names)


def _count_keys(pattern: str) -> Steps[tuple[int, bool, list[Any]]]:
    cursor: Any = 0
    found = 0
    sample: list[Any] = []
    for _ in range(SCAN_ROUNDS_MAX):
        (reply,) = yield [("SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_BATCH)]
        cursor, keys = reply
        found += len(keys)
        sample.extend(keys[: MEMORY_SAMPLE - len(sample)])
        if int(cursor) == 0:
            return found, True, sample
    return found, False, sample


def _entry(rt: CacheRuntime, space: Namespace, totals: list[int]) -> dict[str, Any]:
    settings = rt.settings
    lookups = sum(totals)
    ratio = totals[HIT] / lookups if lookups else None
    decorated_here = bool(space.functions)
    return {
        "hits": totals[HIT],
        "misses": totals[MISS],
        "errors": totals[ERROR],
        "lookups": lookups,
        "hit_ratio": None if ratio is None else round(ratio, 4),
        "below_target": ratio is not None
        and lookups >= settings.cache_min_lookups
        and ratio < settings.cache_hit_ratio_warn,
        "ttl_s": space.ttl_seconds(settings.cache_ttl_policies) if decorated_here else None,
        "ttl_policy": None
        if isinstance(space.ttl, int) or not decorated_here
        else (space.ttl or space.name),
    }


def _stats_steps(rt: CacheRuntime, names: Iterable[str] | None) -> Steps[dict[str, Any]]:
    yield from rt.flush_steps()
    prefix = rt.prefix
    if names is None:
        found = yield from _discover(prefix)
        names = {space.name for space in registered()} | set(found)
    spaces = _named(names)
    batch: list[tuple[Any, ...]] = [("INFO", "memory")]
    for space in spaces:
        batch += [("GET", space.version_key(prefix)), ("HGETALL", space.stats_key(prefix))]
    replies = yield batch
    used_memory = record_memory(replies[0])
    namespaces: dict[str, Any] = {}
    for index, space in enumerate(spaces):
        version = space.remember_version(replies[1 + 2 * index])
        counters = {_text(k): _text(v) for k, v in (replies[2 + 2 * index] or {}).items()}
        totals = [int(counters.get(field, 0)) for field in ("hits", "misses", "errors")]
        keys, exact, sample = yield from _count_keys(space.data_pattern(prefix, version))
        usages = (yield [("MEMORY", "USAGE", key) for key in sample]) if sample else []
        sizes = [int(size) for size in usages if size is not None]
        estimate = round(sum(sizes) / len(sizes) * keys) if sizes else 0
        namespaces[space.name] = _entry(rt, space, totals) | {
            "keys": keys,
            "keys_exact": exact,
            "memory_bytes_estimate": estimate,
            "version": version,
            "since": int(counters["since"]) if "since" in counters else None,
        }
    return _report(rt, "redis", used_memory, namespaces)


def _report(
    rt: CacheRuntime, source: str, used_memory: int | None, namespaces: dict[str, Any]
) -> dict[str, Any]:
    return {
        "source": source,
        "circuit": rt.breaker.state,
        "hit_ratio_target": rt.settings.cache_hit_ratio_warn,
        "redis_used_memory_bytes": used_memory,
        "namespaces": namespaces,
    }


def _process_report(rt: CacheRuntime, names: Iterable[str] | None, error: str) -> dict[str, Any]:
    """This process's own counts, for when Redis cannot be asked."""
    spaces = registered() if names is None else _named(names)
    namespaces = {
        space.name: _entry(rt, space, list(space.totals))
        | {"keys": None, "keys_exact": False, "memory_bytes_estimate": None}
        for space in spaces
    }
    return _report(rt, "process", None, namespaces) | {"error": error}


def cache_stats(namespaces: Iterable[str] | None = None) -> dict[str, Any]:
    """Per-namespace hits, misses, errors, hit ratio, keys, approximate memory and TTL.

    ``namespaces`` None means every namespace: this process's and those other
    processes keep counters for in Redis (their TTL is then unknown here: None).
    ``source`` is ``redis`` (totals over every process) or ``process`` (Redis could
    not be reached; this process's counts only, ``error`` says why).
    """
    rt = runtime()
    names = None if namespaces is None else list(namespaces)
    if not rt.breaker.allow():
        return _process_report(rt, names, "circuit open")
    try:
        report = run_sync(rt.client(), _stats_steps(rt, names))
    except REDIS_ERRORS as error:
        rt.breaker.record_failure(error)
        return _process_report(rt, names, type(error).__name__)
    rt.breaker.record_success()
    return report


async def cache_stats_async(namespaces: Iterable[str] | None = None) -> dict[str, Any]:
    """``cache_stats()`` over the asyncio client, for event-loop code."""
    rt = runtime()
    names = None if namespaces is None else list(namespaces)
    if not rt.breaker.allow():
        return _process_report(rt, names, "circuit open")
    try:
        report = await run_async(rt.async_client(), _stats_steps(rt, names))
    except REDIS_ERRORS as error:
        rt.breaker.record_failure(error)
        return _process_report(rt, names, type(error).__name__)
    rt.breaker.record_success()
    return report


STATS_COLUMNS = ("namespace", "hits", "misses", "errors", "hit ratio", "keys", "memory", "ttl")


def stats_rows(stats: dict[str, Any]) -> list[list[str]]:
    """``cache_stats()`` as table rows of text (for the CLI); a ratio below target is red."""
    rows = []
    for name, entry in stats["namespaces"].items():
        ratio = entry["hit_ratio"]
        shown = "-" if ratio is None else f"{ratio:.1%}"
        if entry["below_target"]:
            shown = f"[red]{shown}[/]"
        keys = entry["keys"]
        memory = entry["memory_bytes_estimate"]
        rows.append(
            [
                name,
                str(entry["hits"]),
                str(entry["misses"]),
                str(entry["errors"]),
                shown,
                "-" if keys is None else f"{keys}{'' if entry['keys_exact'] else '+'}",
                "-" if memory is None else f"~{memory / 1024:.1f} KiB",
                "-" if entry["ttl_s"] is None else f"{entry['ttl_s']} s",
            ]
        )
    return rows


def build_router() -> APIRouter:
    """A FastAPI router serving ``GET /api/system/cache-stats``."""
    from fastapi import APIRouter

    router = APIRouter(tags=["system"])

    @router.get(CACHE_STATS_PATH, summary="Cache hit ratio, keys and memory per namespace")
    async def get_cache_stats() -> dict[str, Any]:
        return await cache_stats_async()

    return router
