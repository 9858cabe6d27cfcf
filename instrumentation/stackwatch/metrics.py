"""Every Prometheus metric stackwatch exports, defined once: the metric contract.

Names and labels are an interface that dashboards, alert rules and users' queries
depend on (see docs/architecture.md). Units are in the name, counters end in
``_total`` and every label has a bounded set of values: ``path`` is a route
template (``<unmatched>`` when no route matched), never a raw URL.

All metrics live in prometheus-client's default registry. When
``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn, ``uvicorn --workers``, Celery
prefork), prometheus-client writes each process's values to that directory and
``exposition_registry()`` aggregates them at scrape time.
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

UNMATCHED_PATH = "<unmatched>"

# Latency buckets in seconds. 0.5 and 1.0 are the plan's P95 / P99 gates; buckets
# above 1 s exist so that histogram_quantile can report (and alert on) a P99 over 1 s.
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
DB_QUERY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CACHE_OPERATION_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
QUERIES_PER_REQUEST_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377)
TASK_DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

# --- HTTP (fastapi.py, requestid.py) ---
api_request_duration_seconds = Histogram(
    "api_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ["method", "path", "status"],
    buckets=LATENCY_BUCKETS_S,
)
api_requests_in_progress = Gauge(
    "api_requests_in_progress",
    "HTTP requests being served right now.",
    ["method", "path"],
    multiprocess_mode="livesum",
)
request_id_rejected_total = Counter(
    "request_id_rejected_total",
    "Incoming request ids that failed validation and were replaced.",
    ["source"],  # http / celery
)

# --- cache (cache.py) ---
cache_requests_total = Counter(
    "cache_requests_total",
    "Cache lookups by namespace and result (hit, miss, error).",
    ["namespace", "result"],
)
cache_operation_duration_seconds = Histogram(
    "cache_operation_duration_seconds",
    "Time spent in Redis per cache operation.",
    ["namespace", "operation"],
    buckets=CACHE_OPERATION_BUCKETS_S,
)
cache_memory_bytes = Gauge(
    "cache_memory_bytes",
    "Redis used_memory as last read from INFO memory.",
    multiprocess_mode="mostrecent",
)
cache_circuit_open = Gauge(
    "cache_circuit_open",
    "1 while the cache circuit breaker is open (Redis bypassed), else 0.",
    multiprocess_mode="max",
)

# --- database (sqlalchemy.py) ---
db_query_duration_seconds = Histogram(
    "db_query_duration_seconds",
    "SQL statement latency by operation (SELECT, INSERT, ...).",
    ["operation"],
    buckets=DB_QUERY_BUCKETS_S,
)
db_slow_queries_total = Counter(
    "db_slow_queries_total",
    "SQL statements slower than STACKWATCH_SLOW_QUERY_MS.",
    ["operation"],
)
db_queries_per_request = Histogram(
    "db_queries_per_request",
    "SQL statements run by one HTTP request or Celery task.",
    ["path"],
    buckets=QUERIES_PER_REQUEST_BUCKETS,
)
db_n_plus_one_total = Counter(
    "db_n_plus_one_total",
    "N+1 query patterns detected, by route (or task name).",
    ["path"],
)

# --- Celery (celery.py) ---
celery_tasks_total = Counter(
    "celery_tasks_total",
    "Finished Celery task runs by task, queue and state (succeeded, failed, retried).",
    ["task", "queue", "state"],
)
celery_task_duration_seconds = Histogram(
    "celery_task_duration_seconds",
    "Celery task run time.",
    ["task", "queue"],
    buckets=TASK_DURATION_BUCKETS_S,
)
celery_queue_length = Gauge(
    "celery_queue_length",
    "Messages waiting in a Celery queue, read from the broker at scrape time.",
    ["queue"],
    multiprocess_mode="mostrecent",
)

# --- stackwatch's own health (traces.py) ---
telemetry_spans_exported_total = Counter(
    "stackwatch_spans_exported_total",
    "Spans handed to the trace exporter and accepted by it.",
)
telemetry_spans_dropped_total = Counter(
    "stackwatch_spans_dropped_total",
    "Spans lost before export, by reason (queue_full, export_failed, already_shutdown).",
    ["reason"],
)


def multiprocess_dir() -> str | None:
    """The multiprocess directory prometheus-client uses, if any."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def exposition_registry() -> CollectorRegistry:
    """The registry to serve on /metrics.

    In multiprocess mode a fresh registry aggregating every process's files (process
    and GC collectors are per-process and are not included: see the docs); otherwise
    the default registry.
    """
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry
