"""What one phase of the demo measured, read from stackwatch's /metrics and pg_stat_statements."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]

READS_SQL = r"""
SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(rows), 0)::bigint
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query ~* '^\s*(/\*.*?\*/\s*)?(select|with)\s'
"""


def sum_samples(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    total = 0.0
    for pairs, value in samples.get(name, {}).items():
        present = dict(pairs)
        if all(present.get(key) == wanted for key, wanted in labels.items()):
            total += value
    return total


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """``name`` summed per value of ``label``."""
    totals: dict[str, float] = {}
    for pairs, value in samples.get(name, {}).items():
        present = dict(pairs)
        if all(present.get(key) == wanted for key, wanted in labels.items()) and label in present:
            totals[present[label]] = totals.get(present[label], 0.0) + value
    return totals


def delta(after: Samples, before: Samples) -> Samples:
    """Counters of ``after`` minus ``before`` (series absent before count from zero)."""
    result: Samples = {}
    for name, series in after.items():
        old = before.get(name, {})
        result[name] = {labels: value - old.get(labels, 0.0) for labels, value in series.items()}
    return result


def enable_statement_stats(url: str) -> bool:
    """CREATE EXTENSION pg_stat_statements in the demo database; False when the server lacks it."""
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            connection.execute(READS_SQL).fetchone()
    except psycopg.Error:
        return False
    return True


def statement_reads(url: str) -> tuple[int, int]:
    """(SELECT statements run, rows they returned) so far in the demo database."""
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(READS_SQL).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@dataclass
class StepTimes:
    """Wall seconds of each step of a run, in order: where the demo's minutes go."""

    seconds: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.monotonic)

    def lap(self, step: str) -> None:
        """Record ``step`` as the time since the previous lap (or since creation)."""
        now = time.monotonic()
        self.seconds[step] = round(self.seconds.get(step, 0.0) + now - self.last, 1)
        self.last = now

    def summary(self) -> str:
        """One line: every step and its seconds."""
        return ", ".join(f"{step} {seconds:.1f}s" for step, seconds in self.seconds.items())


@dataclass
class PhaseResult:
    """One mode's numbers; ``None`` where a source was not available."""

    mode: str
    endpoints: dict[str, Any] = field(default_factory=dict)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    requests: int = 0
    load_seconds: float = 0.0
    slow_queries: float | None = None
    queries_per_request: dict[str, float] = field(default_factory=dict)
    queries_total: float | None = None
    n_plus_one: dict[str, float] = field(default_factory=dict)
    cache: dict[str, dict[str, float]] = field(default_factory=dict)
    cache_memory_bytes: float | None = None
    db_reads: int | None = None
    db_rows_read: int | None = None
    scan_seconds: float | None = None
    scan_tickers: int = 0
    scan_hits: int | None = None
    scan_tasks: int = 0
    tasks_succeeded: float | None = None
    tasks_failed: float | None = None
    tasks_retried: float | None = None
    scan_slow_queries: float | None = None
    scan_error: str | None = None
    analyses_precomputed: int | None = None
    analysis_batch_seconds: float | None = None

    @property
    def requests_per_second(self) -> float:
        """Answered requests per second of load."""
        return self.requests / self.load_seconds if self.load_seconds else 0.0

    def hit_ratio(self) -> float | None:
        """Cache hits over lookups, all namespaces together."""
        hits = sum(entry.get("hit", 0.0) for entry in self.cache.values())
        lookups = sum(sum(entry.values()) for entry in self.cache.values())
        return hits / lookups if lookups else None

    def namespace_hit_ratios(self) -> dict[str, float]:
        """Hit ratio per namespace that saw lookups."""
        ratios = {}
        for namespace, entry in self.cache.items():
            lookups = sum(entry.values())
            if lookups:
                ratios[namespace] = entry.get("hit", 0.0) / lookups
        return ratios

    def reads_per_request(self) -> float | None:
        """SELECTs per answered request: pg_stat_statements, else stackwatch's counts."""
        if not self.requests:
            return None
        if self.db_reads is not None:
            return self.db_reads / self.requests
        if self.queries_total is not None:
            return self.queries_total / self.requests
        return None

    def throughput(self) -> float | None:
        """Tickers scanned per second by the Celery scan."""
        if not self.scan_seconds:
            return None
        return self.scan_tickers / self.scan_seconds

    def failure_rate(self) -> float | None:
        """Failed task runs over finished ones during the scan."""
        if self.tasks_succeeded is None or self.tasks_failed is None:
            return None
        finished = self.tasks_succeeded + self.tasks_failed
        return self.tasks_failed / finished if finished else None


def fill_from_metrics(result: PhaseResult, samples: Samples) -> None:
    """Slow queries, queries per request, N+1, cache lookups from an app /metrics delta."""
    if "db_slow_queries_total" in samples or "db_query_duration_seconds_count" in samples:
        result.slow_queries = sum_samples(samples, "db_slow_queries_total")
    sums = by_label(samples, "db_queries_per_request_sum", "path")
    counts = by_label(samples, "db_queries_per_request_count", "path")
    result.queries_per_request = {
        path: sums[path] / counts[path] for path in sums if counts.get(path)
    }
    if sums:
        result.queries_total = sum(sums.values())
    result.n_plus_one = by_label(samples, "db_n_plus_one_total", "path")
    cache: dict[str, dict[str, float]] = {}
    for pairs, value in samples.get("cache_requests_total", {}).items():
        labels = dict(pairs)
        entry = cache.setdefault(labels.get("namespace", "?"), {})
        entry[labels.get("result", "?")] = entry.get(labels.get("result", "?"), 0.0) + value
    result.cache = cache
