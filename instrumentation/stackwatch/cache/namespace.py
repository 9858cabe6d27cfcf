"""A cache namespace: its keys, TTL, version, and hit/miss/error accounting.

One namespace is one kind of data (``price``, ``signal``, ``stock_info``): it has one
TTL, one version (bumped to invalidate everything in it at once) and one set of
counters. Counters are kept twice on purpose: Prometheus counters for dashboards and
alerts, and deltas that are added to a Redis hash about once a second, so that
``cache_stats()`` reports totals over every process and host sharing the cache.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from stackwatch.metrics import cache_operation_duration_seconds, cache_requests_total

_log = structlog.get_logger("stackwatch.cache")

_VALID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

HIT, MISS, ERROR = 0, 1, 2
RESULTS = ("hit", "miss", "error")

# How long a process trusts its copy of a namespace's version; another process's
# invalidate_namespace() takes effect here within this delay.
VERSION_CACHE_S = 1.0

TtlSpec = int | str | None


class Namespace:
    """Everything about one namespace that its cached functions share."""

    def __init__(self, name: str, ttl: TtlSpec, ttl_s: int) -> None:
        self.name = name
        self.ttl = ttl
        self.ttl_s = ttl_s
        self.functions: list[Any] = []  # the decorated functions, for warm-up
        self._counters = [cache_requests_total.labels(name, result) for result in RESULTS]
        self.get_seconds = cache_operation_duration_seconds.labels(name, "get")
        self.set_seconds = cache_operation_duration_seconds.labels(name, "set")
        self._lock = threading.Lock()
        self._pending = [0, 0, 0]  # not yet added to the Redis stats hash
        self.totals = [0, 0, 0]  # in this process since start
        self._version = 0
        self._version_expires = 0.0
        self._below_target = False

    # --- accounting ---

    def count(self, result: int) -> None:
        """Count one call as HIT, MISS or ERROR."""
        self._counters[result].inc()
        with self._lock:
            self._pending[result] += 1
            self.totals[result] += 1

    def take_pending(self) -> list[int]:
        """The counts not yet sent to Redis, reset to zero."""
        with self._lock:
            pending, self._pending = self._pending, [0, 0, 0]
        return pending

    def restore_pending(self, pending: list[int]) -> None:
        """Put back counts whose flush failed, so that none are lost."""
        with self._lock:
            for index, value in enumerate(pending):
                self._pending[index] += value

    def check_hit_ratio(self, totals: list[int], target: float, min_lookups: int) -> None:
        """Log when the hit ratio crosses below ``target`` (once per crossing) and back."""
        lookups = sum(totals)
        if lookups < min_lookups:
            return
        ratio = totals[HIT] / lookups
        below = ratio < target
        if below == self._below_target:
            return
        self._below_target = below
        fields = {"namespace": self.name, "hit_ratio": round(ratio, 4), "target": target}
        if below:
            _log.warning("cache hit ratio below target", lookups=lookups, **fields)
        else:
            _log.info("cache hit ratio back at target", lookups=lookups, **fields)

    # --- keys ---

    def data_key(self, prefix: str, version: int, digest: str) -> str:
        """``{prefix}:{namespace}:{version}:{digest}``."""
        return f"{prefix}:{self.name}:{version}:{digest}"

    def lock_key(self, prefix: str, version: int, digest: str) -> str:
        """The single-flight lock of one key; outside the data pattern so stats do not count it."""
        return f"{prefix}:_lock:{self.name}:{version}:{digest}"

    def data_pattern(self, prefix: str, version: int | None = None) -> str:
        """SCAN pattern of the namespace's values (one version, or all)."""
        return f"{prefix}:{self.name}:{'*' if version is None else version}:*"

    def version_key(self, prefix: str) -> str:
        """Where the namespace's version lives (missing means 0)."""
        return f"{prefix}:_meta:{self.name}:version"

    def stats_key(self, prefix: str) -> str:
        """The Redis hash holding hits, misses and errors over all processes."""
        return f"{prefix}:_meta:{self.name}:stats"

    # --- version ---

    def cached_version(self) -> int | None:
        """The version if this process read it less than VERSION_CACHE_S ago, else None."""
        if time.monotonic() < self._version_expires:
            return self._version
        return None

    def remember_version(self, raw: bytes | str | int | None) -> int:
        """Store a version read from (or written to) Redis and return it."""
        self._version = int(raw or 0)
        self._version_expires = time.monotonic() + VERSION_CACHE_S
        return self._version

    def forget_version(self) -> None:
        """Make the next call read the version from Redis again."""
        self._version_expires = 0.0

    # --- TTL ---

    def ttl_seconds(self, policies: dict[str, int]) -> int:
        """Seconds: the ttl itself, its policy, or (no ttl) the policy named like the namespace.

        A policy that a later ``configure()`` dropped keeps the seconds it had when the
        function was decorated: a reconfiguration must not make cached calls fail.
        """
        with contextlib.suppress(ValueError):
            self.ttl_s = resolve_ttl(self.ttl, self.name, policies)
        return self.ttl_s


def resolve_ttl(ttl: TtlSpec, namespace: str, policies: dict[str, int]) -> int:
    """Seconds for a ttl given as seconds, a policy name or None; ValueError saying what to pass."""
    if isinstance(ttl, bool) or (isinstance(ttl, int) and ttl <= 0):
        raise ValueError(f"@cached({namespace!r}): ttl must be a positive number of seconds")
    if isinstance(ttl, int):
        return ttl
    policy = namespace if ttl is None else ttl
    if policy in policies:
        return policies[policy]
    known = ", ".join(sorted(policies))
    if ttl is None:
        raise ValueError(
            f"@cached({namespace!r}) needs ttl=seconds or ttl=<policy> (one of: {known}); "
            "no policy is named like the namespace"
        )
    raise ValueError(
        f"@cached({namespace!r}): unknown TTL policy {ttl!r}; known policies: {known} "
        "(add more with STACKWATCH_CACHE_TTL_POLICIES='{\"name\": seconds}')"
    )


_namespaces: dict[str, Namespace] = {}
_registry_lock = threading.Lock()


def check_name(name: str) -> None:
    """ValueError unless ``name`` can be a namespace (it becomes part of Redis keys and labels)."""
    if not isinstance(name, str) or not _VALID_NAME.fullmatch(name):
        raise ValueError(
            f"invalid cache namespace {name!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def namespace_for(name: str, ttl: TtlSpec, policies: dict[str, int]) -> Namespace:
    """The namespace called ``name``, created on first use; a second, different TTL is an error."""
    check_name(name)
    ttl_s = resolve_ttl(ttl, name, policies)
    with _registry_lock:
        existing = _namespaces.get(name)
        if existing is None:
            existing = _namespaces[name] = Namespace(name, ttl, ttl_s)
        elif existing.ttl != ttl:
            raise ValueError(
                f"cache namespace {name!r} already uses ttl={existing.ttl!r}; "
                f"one namespace has one TTL, so use another namespace for ttl={ttl!r}"
            )
        return existing


def registered(names: Callable[[str], bool] | None = None) -> list[Namespace]:
    """Every namespace some function was decorated with, optionally filtered by name."""
    with _registry_lock:
        spaces = list(_namespaces.values())
    return [space for space in spaces if names is None or names(space.name)]


def lookup(name: str) -> Namespace | None:
    """The namespace called ``name`` if a function uses it."""
    return _namespaces.get(name)
