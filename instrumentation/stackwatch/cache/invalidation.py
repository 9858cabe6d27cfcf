"""Dropping a whole namespace: bump its version, then delete its keys in batches.

The version bump (``INCR``) makes every old value unreachable at once (in other
processes within ``VERSION_CACHE_S``), so correctness never waits for the deletion;
SCAN + UNLINK then frees the memory in batches, without KEYS and without blocking
Redis on one huge DEL.
"""

from __future__ import annotations

from stackwatch.cache.commands import Steps, run_async, run_sync
from stackwatch.cache.namespace import Namespace, check_name, lookup
from stackwatch.cache.runtime import runtime

PURGE_BATCH = 500


def _purge_steps(prefix: str, space: Namespace) -> Steps[int]:
    (version,) = yield [("INCR", space.version_key(prefix))]
    space.remember_version(version)
    pattern = space.data_pattern(prefix)
    removed = 0
    cursor = 0
    doomed: list[bytes] = []
    while True:
        # Each round trip unlinks the previous page and scans the next one.
        batch: list[tuple[object, ...]] = [("SCAN", cursor, "MATCH", pattern, "COUNT", PURGE_BATCH)]
        if doomed:
            batch.append(("UNLINK", *doomed))
        replies = yield batch
        if doomed:
            removed += int(replies[1])
        cursor, keys = replies[0]
        doomed = list(keys)
        if int(cursor) == 0:
            break
    if doomed:
        (unlinked,) = yield [("UNLINK", *doomed)]
        removed += int(unlinked)
    return removed


def _space(namespace: str) -> Namespace:
    check_name(namespace)
    return lookup(namespace) or Namespace(namespace, None, 0)


def invalidate_namespace(namespace: str) -> int:
    """Invalidate every value of ``namespace`` and return how many keys were deleted.

    Raises redis.RedisError when Redis cannot be reached: stale data would otherwise
    stay until its TTL, and the caller should know.
    """
    return run_sync(runtime().client(), _purge_steps(runtime().prefix, _space(namespace)))


async def invalidate_namespace_async(namespace: str) -> int:
    """``invalidate_namespace`` over the asyncio client."""
    rt = runtime()
    return await run_async(rt.async_client(), _purge_steps(rt.prefix, _space(namespace)))
