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

import asyncio
import contextlib
import gzip
import hmac
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

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


class CeleryQueueLengthCollector(Collector):
    """``celery_queue_length{queue}``: messages waiting, read from the broker at scrape time.

    A gauge set by some loop would be stale, or 0 when nothing ran the loop
    (celery-exporter #143); asking the broker when Prometheus asks is always current.
    ``read_lengths`` (stackwatch.celery builds it) returns ``{queue: messages}`` and
    must not raise; an empty mapping means the broker could not be asked.
    """

    name = "celery_queue_length"
    documentation = "Messages waiting in a Celery queue, read from the broker at scrape time."

    def __init__(self, read_lengths: Callable[[], Mapping[str, int]]) -> None:
        self._read_lengths = read_lengths

    def describe(self) -> list[Metric]:
        """The family without samples, so registering does not contact the broker."""
        return [GaugeMetricFamily(self.name, self.documentation, labels=["queue"])]

    def collect(self) -> Iterator[Metric]:
        """One sample per queue, read now."""
        family = GaugeMetricFamily(self.name, self.documentation, labels=["queue"])
        for queue, length in sorted(self._read_lengths().items()):
            family.add_metric([queue], float(length))
        yield family


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
    # prometheus-client still honours the lower-case name older deployments use.
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(
        "prometheus_multiproc_dir"  # noqa: SIM112
    )


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
    for collector in _scrape_time_collectors:
        registry.register(collector)
    return registry


# Collectors that compute their values when scraped (celery_queue_length): in
# multiprocess mode they are not in the per-process files, so every exposition
# registry built after registration serves them too.
_scrape_time_collectors: list[Collector] = []


def register_scrape_time_collector(collector: Collector) -> None:
    """Serve ``collector`` on /metrics in single- and multi-process mode; twice is harmless.

    Register before starting the metrics server: in multiprocess mode the server's
    registry is built when it starts.
    """
    if collector in _scrape_time_collectors:
        return
    _scrape_time_collectors.append(collector)
    REGISTRY.register(collector)


def unregister_scrape_time_collector(collector: Collector) -> None:
    """Undo ``register_scrape_time_collector``."""
    if collector in _scrape_time_collectors:
        _scrape_time_collectors.remove(collector)
        REGISTRY.unregister(collector)


# --- exposition: /metrics on the app (metrics_asgi_app) or on its own port (start_metrics_server)

_AsgiMessage = MutableMapping[str, Any]
_AsgiReceive = Callable[[], Awaitable[_AsgiMessage]]
_AsgiSend = Callable[[_AsgiMessage], Awaitable[None]]
Response = tuple[int, list[tuple[str, str]], bytes]

# A scrape renders every series; a few at a time is plenty, more is a client misbehaving.
_MAX_CONCURRENT_SCRAPES = 4
_SCRAPE_SOCKET_TIMEOUT_S = 10.0


def _render(registry: CollectorRegistry, accept: str, accept_encoding: str, query: str) -> Response:
    """Render ``registry`` as Prometheus text or OpenMetrics, as the Accept header asks."""
    encoder, content_type = choose_encoder(accept)
    names = parse_qs(query).get("name[]")
    source = registry.restricted_registry(names) if names else registry
    body = encoder(source)
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding):
        body = gzip.compress(body)
        headers.append(("Content-Encoding", "gzip"))
    return 200, headers, body


def _authorized(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries the bearer token (constant-time compare)."""
    if token is None:
        return True
    scheme, _, presented = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode("latin-1", "replace"), token.encode("utf-8")
    )


_UNAUTHORIZED: Response = (
    401,
    [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
    b"a bearer token is required: Authorization: Bearer $STACKWATCH_METRICS_TOKEN\n",
)


class MetricsAsgiApp:
    """The /metrics endpoint as a pure ASGI app: content negotiation, optional bearer token.

    Rendering runs in a worker thread: in multiprocess mode it reads every worker's
    files, which must not stall the event loop that serves the application's requests.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token or None
        self.registry = exposition_registry()

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: _AsgiReceive, send: _AsgiSend
    ) -> None:
        if scope.get("type") != "http":
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        if scope.get("method") not in ("GET", "HEAD"):
            response: Response = (405, [("Allow", "GET, HEAD")], b"")
        elif not _authorized(headers.get("authorization"), self.token):
            response = _UNAUTHORIZED
        else:
            response = await asyncio.to_thread(
                _render,
                self.registry,
                headers.get("accept", ""),
                headers.get("accept-encoding", ""),
                scope.get("query_string", b"").decode("latin-1"),
            )
        status, response_headers, body = response
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers
                ],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )


def metrics_asgi_app(token: str | None = None) -> MetricsAsgiApp:
    """An ASGI app serving the metrics of this process (or, in multiprocess mode, of all workers).

    Prometheus text or OpenMetrics (with exemplars) by the request's Accept header; with
    ``token`` set, requests must carry ``Authorization: Bearer <token>``.
    """
    return MetricsAsgiApp(token)


class _ScrapeHandler(BaseHTTPRequestHandler):
    """Answers every GET with the metrics; the server sets ``registry`` and ``token``."""

    server: MetricsServer
    timeout = _SCRAPE_SOCKET_TIMEOUT_S  # a client that stops sending cannot hold a slot forever

    def do_GET(self) -> None:
        if not _authorized(self.headers.get("Authorization"), self.server.token):
            status, headers, body = _UNAUTHORIZED
        else:
            split = urlsplit(self.path)
            status, headers, body = _render(
                self.server.registry,
                self.headers.get("Accept", ""),
                self.headers.get("Accept-Encoding", ""),
                split.query,
            )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not worth a log line each."""


class MetricsServer(ThreadingHTTPServer):
    """A small threaded HTTP server for /metrics: daemon threads, at most a few scrapes at once."""

    daemon_threads = True

    def __init__(self, host: str, port: int, token: str | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _ScrapeHandler)
        self.token = token or None
        self.registry = exposition_registry()
        self._slots = threading.BoundedSemaphore(_MAX_CONCURRENT_SCRAPES)
        self._thread = threading.Thread(
            target=self.serve_forever, name="stackwatch-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port the server listens on (useful when started on port 0)."""
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Too many scrapes in flight: refuse rather than pile up threads.
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> MetricsServer:
        """Serve in a daemon thread; returns self."""
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread.is_alive():
            super().shutdown()
        self.server_close()


def start_metrics_server(
    port: int, token: str | None = None, host: str = "0.0.0.0"
) -> MetricsServer:
    """Serve /metrics on its own port from a daemon thread (Celery, STACKWATCH_METRICS_PORT).

    Port 0 picks a free port (read it from ``.port``); call ``.shutdown()`` to stop.
    """
    return MetricsServer(host, port, token).start()
