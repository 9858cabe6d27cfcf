"""Celery: traced and measured tasks, request ids in workers, queue presets, retries, autoscaling.

``instrument_celery(app)`` is called once in the module that defines the app, so it
runs in the producer (the web process) and in every worker process alike:

- tracing is OpenTelemetry's ``CeleryInstrumentor``: the task span is a child of the
  span that published it (the HTTP request's, through the ``traceparent`` header);
- the request id travels in the ``x_request_id`` task header, is validated in the
  worker like the HTTP header (a hostile value is replaced and counted in
  ``request_id_rejected_total{source="celery"}``), is bound for the task's log lines,
  spans and SQL comments, and reset afterwards so it never leaks into the next task;
- every task run is a ``celery`` work scope (SQL statements per task, N+1 detection);
- ``celery_tasks_total`` / ``celery_task_duration_seconds`` are recorded in the
  process that ran the task (prefork children write to ``PROMETHEUS_MULTIPROC_DIR``);
  the worker's main process serves them with ``celery_queue_length``, read from the
  broker at scrape time, on ``STACKWATCH_METRICS_PORT``;
- prefork children flush their spans when they exit (``worker_process_shutdown``),
  so spans survive ``worker_max_tasks_per_child`` recycling (OTel contrib #4916).

``configure_celery(app)`` applies the queue, routing and at-least-once presets;
``RetryingTask`` / ``retry_policy()`` the retry policy; ``ResourceAwareAutoscaler``
scales the pool by CPU and memory as well as by backlog.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import Token
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
import psutil
import redis.exceptions
import structlog
from celery import Celery, Task, signals
from celery.worker.autoscale import Autoscaler
from kombu.entity import Exchange, Queue
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from prometheus_client import Counter, Histogram

from stackwatch import metrics
from stackwatch.requestid import (
    accept_request_id,
    bind_request_id,
    new_request_id,
    printable,
    request_id,
    reset_request_id,
)
from stackwatch.scope import WorkScope, close_scope, open_scope
from stackwatch.settings import get_settings

_log = structlog.get_logger("stackwatch.celery")

#: Task message header that carries the request id from producer to worker.
REQUEST_ID_HEADER = "x_request_id"
#: Span attribute that carries the request id (the same one the HTTP spans use).
REQUEST_ID_ATTRIBUTE = "request.id"

QUEUE_HIGH = "high"
QUEUE_DEFAULT = "default"
QUEUE_LOW = "low"
DEFAULT_QUEUES = (QUEUE_HIGH, QUEUE_DEFAULT, QUEUE_LOW)

#: The ``queue`` label of a task run that did not come from a configured queue.
UNKNOWN_QUEUE = "<unknown>"
#: The ``queue`` label of a task run in-process (``task.apply()``, ``task_always_eager``).
EAGER_QUEUE = "<eager>"

_STATE_LABELS = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}

# Set by ``stackwatch celery`` on a PROMETHEUS_MULTIPROC_DIR it created, so the
# worker that owns the directory removes it when it shuts down.
OWNED_MULTIPROC_DIR_ENV = "STACKWATCH_OWNED_MULTIPROC_DIR"


# --------------------------------------------------------------------------- retry policy


class TransientError(Exception):
    """Raise it from a task to say "try again later"; ``RetryingTask`` retries it."""


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [
        TransientError,
        ConnectionError,
        TimeoutError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        kombu.exceptions.OperationalError,
    ]
    try:  # a lost or refused database connection; SQLAlchemy is optional for Celery users
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency of stackwatch
        pass
    else:
        errors.append(OperationalError)
    return tuple(errors)


#: Errors that usually go away on their own: network, broker, cache and database outages.
TRANSIENT_ERRORS = _transient_errors()


def retry_policy(
    *,
    errors: Iterable[type[BaseException]] = TRANSIENT_ERRORS,
    max_retries: int = 5,
    backoff_s: int = 2,
    backoff_max_s: int = 600,
    jitter: bool = True,
) -> dict[str, Any]:
    """Task options for automatic retries, to splat into the decorator.

    ``@app.task(**retry_policy(max_retries=3))`` retries the listed errors with
    exponential backoff (``backoff_s * 2**retries`` seconds, at most ``backoff_max_s``)
    and full jitter, so that a thousand tasks hit by the same outage do not all come
    back at the same second; any other error fails the task at once.
    """
    return {
        "autoretry_for": tuple(errors),
        "max_retries": max_retries,
        "retry_backoff": backoff_s,
        "retry_backoff_max": backoff_max_s,
        "retry_jitter": jitter,
    }


class RetryingTask(Task):
    """Task base class with ``retry_policy()``'s defaults: ``@app.task(base=RetryingTask)``."""

    autoretry_for = TRANSIENT_ERRORS
    max_retries = 5
    retry_backoff = 2
    retry_backoff_max = 600
    retry_jitter = True


# --------------------------------------------------------------------------- configuration


def configure_celery(
    app: Celery,
    *,
    queues: Sequence[str] = DEFAULT_QUEUES,
    default_queue: str = QUEUE_DEFAULT,
    routes: Mapping[str, str] | None = None,
    result_expires_s: int = 3600,
    resource_aware_autoscaling: bool = True,
) -> Celery:
    """Apply stackwatch's presets to ``app`` and return it.

    - queues (``high``, ``default``, ``low`` unless given), each on its own direct
      exchange; tasks go to ``default_queue`` unless routed;
    - ``routes`` maps task-name patterns to queues (``{"signals.realtime.*": "high"}``);
      the decorator option ``@app.task(queue="high")`` routes one task;
    - at-least-once delivery: acknowledge after the task ran, requeue a task whose
      worker process died, prefetch one message per process, so a long task never
      holds others hostage and a crash loses nothing (tasks must be idempotent);
    - JSON only (no pickle), results expire after ``result_expires_s``;
    - ``ResourceAwareAutoscaler`` for ``celery worker --autoscale=MAX,MIN``.

    Raises:
        ValueError: a route or the default queue names a queue not in ``queues``.
    """
    names = list(dict.fromkeys(queues))
    if default_queue not in names:
        raise ValueError(
            f"default_queue {default_queue!r} is not one of the queues {names}: add it to queues="
        )
    routes = dict(routes or {})
    for pattern, queue in routes.items():
        if queue not in names:
            raise ValueError(f"route {pattern!r} -> {queue!r}: no such queue; queues are {names}")
    conf: dict[str, Any] = {
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in names
        ],
        "task_default_queue": default_queue,
        "task_default_exchange": default_queue,
        "task_default_routing_key": default_queue,
        "task_routes": {pattern: {"queue": queue} for pattern, queue in routes.items()},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": result_expires_s,
    }
    if resource_aware_autoscaling:
        conf["worker_autoscaler"] = f"{__name__}:ResourceAwareAutoscaler"
    app.conf.update(conf)
    return app


# --------------------------------------------------------------------------- instrumentation


@dataclass
class _TaskRun:
    """What ``task_prerun`` set up and ``task_postrun`` must undo."""

    request_id_token: Token[str | None]
    scope_token: Token[WorkScope | None]
    started: float


@dataclass(frozen=True)
class _TaskSeries:
    """The ``celery_task_duration_seconds`` and ``celery_tasks_total`` children of a task+queue."""

    duration: Histogram
    runs: dict[str, Counter]  # by Celery state: SUCCESS, FAILURE, RETRY


class _CeleryInstrumentation:
    """The signal receivers; connected once per process, whatever the number of apps."""

    def __init__(self) -> None:
        self.apps: list[Celery] = []
        self.owns_otel_instrumentor = False
        self.manages_logging = False
        # Keyed by task id; a list because an eager task may run inside another
        # run of the same id (a retry in eager mode).
        self.runs: dict[str, list[_TaskRun]] = {}
        self.metrics_server: metrics.MetricsServer | None = None
        self.series: dict[tuple[str, str], _TaskSeries] = {}
        self.queue_collector: metrics.CeleryQueueLengthCollector | None = None

    def connect(self) -> None:
        otel = CeleryInstrumentor()
        if not otel.is_instrumented_by_opentelemetry:
            # Before our receivers: Celery calls receivers in the order they were
            # connected, and ours add the request id to the span the instrumentor started.
            otel.instrument()
            self.owns_otel_instrumentor = True
        signals.before_task_publish.connect(self.on_before_publish, weak=False)
        signals.task_prerun.connect(self.on_prerun, weak=False)
        signals.task_postrun.connect(self.on_postrun, weak=False)
        signals.worker_ready.connect(self.on_worker_ready, weak=False)
        signals.worker_shutdown.connect(self.on_worker_shutdown, weak=False)
        signals.worker_process_shutdown.connect(self.on_worker_process_shutdown, weak=False)
        from stackwatch.core import current_settings

        if current_settings() is not None:
            # Any receiver stops Celery from replacing the root logger's handlers
            # with its own, so worker lines stay JSON with request and trace ids.
            signals.setup_logging.connect(self.on_setup_logging, weak=False)
            self.manages_logging = True

    def disconnect(self) -> None:
        signals.before_task_publish.disconnect(self.on_before_publish)
        signals.task_prerun.disconnect(self.on_prerun)
        signals.task_postrun.disconnect(self.on_postrun)
        signals.worker_ready.disconnect(self.on_worker_ready)
        signals.worker_shutdown.disconnect(self.on_worker_shutdown)
        signals.worker_process_shutdown.disconnect(self.on_worker_process_shutdown)
        if self.manages_logging:
            signals.setup_logging.disconnect(self.on_setup_logging)
        if self.owns_otel_instrumentor:
            CeleryInstrumentor().uninstrument()
        self.stop_metrics_server()

    # --- producer ---

    def on_before_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        """Put the current request id (or a fresh one) in the task message's headers."""
        if headers is None:  # task protocol 1, unsupported since Celery 4
            return
        given = headers.get(REQUEST_ID_HEADER)
        if given is None:
            current = request_id() or new_request_id()
        else:  # set by the caller (apply_async(headers=...)) or a retry: validate it
            current = accept_request_id(_header_text(given), source="celery")
        headers[REQUEST_ID_HEADER] = current
        _tag_current_span(current)

    # --- worker process ---

    def on_prerun(self, task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
        """Restore the request id, open the task's work scope, start the clock."""
        if task is None or task_id is None:
            return
        # A message from a producer without stackwatch has no id: the task gets a
        # fresh one; a hostile one is replaced and counted.
        given = _request_id_header(task.request)
        current = accept_request_id(None if given is None else _header_text(given), "celery")
        id_token = bind_request_id(current)
        _tag_current_span(current)
        scope_token = open_scope("celery", task.name)[1]
        self.runs.setdefault(task_id, []).append(
            _TaskRun(id_token, scope_token, time.perf_counter())
        )

    def on_postrun(
        self,
        task_id: str | None = None,
        task: Task | None = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        """Record the run, close its scope and reset the request id."""
        if task is None or task_id is None:
            return
        stack = self.runs.get(task_id)
        if not stack:
            return
        run = stack.pop()
        if not stack:
            del self.runs[task_id]
        elapsed = time.perf_counter() - run.started
        try:
            series = self.task_series(task.name, _queue_label(task))
            series.duration.observe(elapsed)
            counter = series.runs.get(state or "")
            if counter is not None:
                counter.inc()
        finally:
            close_scope(run.scope_token)
            reset_request_id(run.request_id_token)

    def task_series(self, task_name: str, queue: str) -> _TaskSeries:
        """The metric children of one task and queue, made once: labels() on every run costs."""
        series = self.series.get((task_name, queue))
        if series is None:
            # All three states at once: a failure ratio needs its 0, not an absent series.
            series = _TaskSeries(
                metrics.celery_task_duration_seconds.labels(task=task_name, queue=queue),
                {
                    celery_state: metrics.celery_tasks_total.labels(
                        task=task_name, queue=queue, state=label
                    )
                    for celery_state, label in _STATE_LABELS.items()
                },
            )
            self.series[(task_name, queue)] = series
        return series

    def on_worker_process_shutdown(self, pid: int | None = None, **_: Any) -> None:
        """A prefork child is exiting (without atexit hooks): flush its spans now."""
        from stackwatch.core import flush

        try:
            flush()
        except Exception:
            _log.warning("flushing spans at worker process exit failed", exc_info=True)
        if metrics.multiprocess_dir() is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid or os.getpid())

    # --- worker main process ---

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        """Serve /metrics (task metrics of all children, queue lengths) from the main process."""
        settings = get_settings()
        app = getattr(sender, "app", None)
        if settings.metrics_port is None or app is None or self.metrics_server is not None:
            return
        queues = consumed_queues(app)
        self.queue_collector = metrics.CeleryQueueLengthCollector(BrokerQueueLengths(app, queues))
        metrics.register_scrape_time_collector(self.queue_collector)
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        try:
            self.metrics_server = metrics.start_metrics_server(settings.metrics_port, token=token)
        except OSError as error:
            _log.error(
                "worker metrics server could not start; the worker runs without /metrics",
                port=settings.metrics_port,
                error=str(error),
            )
            return
        if metrics.multiprocess_dir() is None and _uses_prefork(sender):
            _log.warning(
                "PROMETHEUS_MULTIPROC_DIR is not set: task metrics of prefork children "
                "will be missing; start the worker with `stackwatch celery ...`"
            )
        _log.info(
            "worker metrics served",
            port=self.metrics_server.port,
            multiprocess_dir=metrics.multiprocess_dir(),
            queues=queues,
        )

    def on_worker_shutdown(self, **_: Any) -> None:
        """Stop serving metrics; remove the multiprocess directory ``stackwatch celery`` made."""
        self.stop_metrics_server()
        owned = os.environ.get(OWNED_MULTIPROC_DIR_ENV)
        if owned and owned == metrics.multiprocess_dir():
            shutil.rmtree(owned, ignore_errors=True)

    def stop_metrics_server(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None
        if self.queue_collector is not None:
            metrics.unregister_scrape_time_collector(self.queue_collector)
            self.queue_collector = None

    def on_setup_logging(self, **_: Any) -> None:
        """Keep stackwatch's log handler instead of Celery's (worker ``--loglevel`` is unused)."""
        from stackwatch.logs import adopt_framework_loggers

        adopt_framework_loggers()


def _tag_current_span(value: str) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(REQUEST_ID_ATTRIBUTE, value)


def _request_id_header(request: Any) -> object:
    # A worker copies message headers onto the request; task.apply() keeps them in .headers.
    given = request.get(REQUEST_ID_HEADER)
    if given is None and isinstance(request.get("headers"), dict):
        given = request.headers.get(REQUEST_ID_HEADER)
    return given


def _header_text(value: object) -> str | bytes:
    # Headers are JSON: a number or a list is no id, and its repr fails validation.
    return value if isinstance(value, str | bytes) else repr(value)


def _queue_label(task: Task) -> str:
    """The queue a run came from, as a bounded label: a configured queue name or a marker."""
    request = task.request
    if request.is_eager:
        return EAGER_QUEUE
    routing_key = (request.delivery_info or {}).get("routing_key")
    queues = task.app.amqp.queues
    if routing_key in queues:
        return str(routing_key)
    for queue in queues.values():
        if queue.routing_key == routing_key:
            return str(queue.name)
    return UNKNOWN_QUEUE


def _uses_prefork(worker_consumer: Any) -> bool:
    pool = getattr(getattr(worker_consumer, "controller", None), "pool", None)
    return type(pool).__module__.startswith("celery.concurrency.prefork")


_instrumentation: _CeleryInstrumentation | None = None
_lock = threading.Lock()


def instrument_celery(app: Celery) -> Celery:
    """Trace, measure and correlate ``app``'s tasks; call it where the app is defined.

    Call ``stackwatch.setup()`` first so that worker log lines use stackwatch's
    format. Idempotent (a second call is harmless) and reversible
    (``uninstrument_celery``). Returns ``app``.
    """
    global _instrumentation
    with _lock:
        if _instrumentation is None:
            _instrumentation = _CeleryInstrumentation()
            _instrumentation.connect()
        if app not in _instrumentation.apps:
            _instrumentation.apps.append(app)
    return app


def uninstrument_celery(app: Celery) -> None:
    """Undo ``instrument_celery(app)``; the signal receivers go when the last app does."""
    global _instrumentation
    with _lock:
        if _instrumentation is None or app not in _instrumentation.apps:
            return
        _instrumentation.apps.remove(app)
        if not _instrumentation.apps:
            _instrumentation.disconnect()
            _instrumentation = None


# --------------------------------------------------------------------------- queue lengths


def consumed_queues(app: Celery) -> list[str]:
    """The queues this worker consumes (``-Q``), else every configured queue."""
    queues = app.amqp.queues
    selected = queues.consume_from or queues
    return sorted(str(name) for name in selected)


class BrokerQueueLengths:
    """Reads ``{queue: messages waiting}`` from the broker, for ``celery_queue_length``.

    kombu does the counting, so each transport's layout is honoured: on RabbitMQ a
    passive ``queue_declare`` returns the broker's message count; on Redis (kombu's
    virtual transports) the channel's own ``_size`` sums ``LLEN`` over the queue's
    priority lists under the transport's ``global_keyprefix``. Counting only the plain
    list is how celery-exporter reports 0 on Redis (#143); and kombu's passive declare
    on Redis checks existence without the key prefix, answering NOT_FOUND for a full
    queue, hence ``_size``. A queue that does not exist yet has 0 messages. Every
    socket operation has a timeout, so a dead broker costs a scrape at most
    ``timeout_s`` per call and one warning, never a hung /metrics.
    """

    def __init__(self, app: Celery, queues: Sequence[str], timeout_s: float = 2.0) -> None:
        self.app = app
        self.queues = list(queues)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._failing = False

    def _transport_options(self, driver_type: str) -> dict[str, float]:
        if driver_type == "redis":
            return {"socket_timeout": self.timeout_s, "socket_connect_timeout": self.timeout_s}
        if driver_type == "amqp":
            return {"read_timeout": self.timeout_s, "write_timeout": self.timeout_s}
        return {}

    def __call__(self) -> dict[str, int]:
        with self._lock:  # one broker connection at a time, however many scrapes
            try:
                lengths = self._read()
            except Exception as error:
                if not self._failing:
                    _log.warning(
                        "cannot read queue lengths from the broker",
                        error=printable(repr(error), limit=200),
                    )
                self._failing = True
                return {}
            self._failing = False
            return lengths

    def _read(self) -> dict[str, int]:
        probe = self.app.connection_for_read()
        driver_type = str(probe.transport.driver_type)
        probe.release()
        connection = self.app.connection_for_read(
            connect_timeout=self.timeout_s,
            transport_options=self._transport_options(driver_type),
        )
        lengths: dict[str, int] = {}
        with connection:
            connection.ensure_connection(max_retries=0)  # no retry: the next scrape is one
            for name in self.queues:
                channel = connection.channel()
                try:
                    lengths[name] = _waiting_messages(channel, name)
                except connection.channel_errors:
                    lengths[name] = 0  # never declared
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        return lengths


def _waiting_messages(channel: Any, queue: str) -> int:
    size = getattr(channel, "_size", None)  # kombu's virtual transports (Redis, SQS...)
    if size is not None:
        return int(size(queue))
    _, waiting, _ = channel.queue_declare(queue=queue, passive=True)
    return int(waiting)


# --------------------------------------------------------------------------- autoscaling


@dataclass(frozen=True)
class ResourceLoad:
    """Host CPU and memory use, in percent."""

    cpu_percent: float
    memory_percent: float


def read_resource_load() -> ResourceLoad:
    """CPU use since the previous call (non-blocking) and memory use now, host-wide."""
    return ResourceLoad(psutil.cpu_percent(interval=None), psutil.virtual_memory().percent)


@dataclass(frozen=True)
class ScalingDecision:
    """How many pool processes to have, and why (logged with every change)."""

    target: int
    reason: str


def decide_pool_size(
    *,
    processes: int,
    wanted: int,
    minimum: int,
    maximum: int,
    load: ResourceLoad,
    cpu_high: float,
    memory_high: float,
) -> ScalingDecision:
    """The pool size to move to: grow while demand and resources allow, shrink under pressure.

    ``wanted`` is the backlog the worker holds (reserved tasks). The pool never goes
    below ``minimum`` or above ``maximum``. When CPU or memory is at or over its
    threshold the pool shrinks by one process (never below ``minimum``), whatever the
    backlog; otherwise it grows by one while the backlog exceeds the pool, and
    shrinks toward the backlog when idle. One step at a time, because a new process
    takes a while to show in the CPU reading.
    """
    if processes < minimum:
        return ScalingDecision(minimum, "below minimum")
    if processes > maximum:
        return ScalingDecision(maximum, "above maximum")
    if load.cpu_percent >= cpu_high:
        return ScalingDecision(
            max(minimum, processes - 1), f"cpu {load.cpu_percent:.0f}% >= {cpu_high:.0f}%"
        )
    if load.memory_percent >= memory_high:
        return ScalingDecision(
            max(minimum, processes - 1),
            f"memory {load.memory_percent:.0f}% >= {memory_high:.0f}%",
        )
    if wanted > processes:
        return ScalingDecision(min(maximum, processes + 1), "backlog")
    if wanted < processes:
        return ScalingDecision(max(minimum, wanted), "idle")
    return ScalingDecision(processes, "steady")


class ResourceAwareAutoscaler(Autoscaler):
    """``worker_autoscaler`` that grows with the backlog only while CPU and memory allow.

    Celery's own autoscaler grows to the backlog regardless of the host; this one
    follows ``decide_pool_size`` with ``STACKWATCH_AUTOSCALE_CPU_HIGH`` and
    ``STACKWATCH_AUTOSCALE_MEMORY_HIGH``. Shrinking under pressure is immediate;
    shrinking because idle waits for Celery's keepalive (``AUTOSCALE_KEEPALIVE``, 30 s).
    Changes driven by load are at least ``cooldown_s`` apart, so one busy second
    does not collapse the pool.
    """

    cooldown_s = 5.0

    def __init__(
        self,
        pool: Any,
        max_concurrency: int,
        min_concurrency: int = 0,
        worker: Any = None,
        *,
        load_reader: Callable[[], ResourceLoad] = read_resource_load,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool, max_concurrency, min_concurrency, worker=worker, **kwargs)
        settings = get_settings()
        self.cpu_high = settings.autoscale_cpu_high
        self.memory_high = settings.autoscale_memory_high
        self.load_reader = load_reader
        self.clock = clock
        self._last_load_change: float | None = None
        self.last_decision: ScalingDecision | None = None

    def _maybe_scale(self, req: Any = None) -> bool:
        processes = self.processes
        decision = decide_pool_size(
            processes=processes,
            wanted=self.qty,
            minimum=self.min_concurrency,
            maximum=self.max_concurrency,
            load=self.load_reader(),
            cpu_high=self.cpu_high,
            memory_high=self.memory_high,
        )
        self.last_decision = decision
        if decision.target == processes:
            return False
        now = self.clock()
        bounds = decision.reason in ("below minimum", "above maximum")
        if (
            not bounds
            and self._last_load_change is not None
            and now - self._last_load_change < self.cooldown_s
        ):
            return False
        _log.info("autoscale", processes=processes, target=decision.target, reason=decision.reason)
        if decision.target > processes:
            self._last_load_change = now
            self.scale_up(decision.target - processes)
        elif decision.reason == "idle":
            self.scale_down(processes - decision.target)  # waits for Celery's keepalive
        else:
            self._last_load_change = now
            self._shrink(processes - decision.target)
        return True


# --------------------------------------------------------------------------- worker command


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus a fresh ``PROMETHEUS_MULTIPROC_DIR`` unless one is set.

    prometheus-client picks its multiprocess mode when it is imported, so the
    variable must exist before the worker imports the app; prefork children then
    each write their own files, and the main process's /metrics adds them up.
    """
    environment = dict(environ)
    if not (
        environment.get("PROMETHEUS_MULTIPROC_DIR") or environment.get("prometheus_multiproc_dir")
    ):
        directory = tempfile.mkdtemp(prefix="stackwatch-prometheus-")
        environment["PROMETHEUS_MULTIPROC_DIR"] = directory
        environment[OWNED_MULTIPROC_DIR_ENV] = directory
    return environment


def exec_celery(arguments: Sequence[str]) -> None:
    """Replace this process with ``celery ARGUMENTS`` run under ``worker_environment``."""
    environment = worker_environment(os.environ)
    # exec, not a child process: the supervisor (systemd, Kubernetes) signals celery directly.
    os.execve(sys.executable, [sys.executable, "-m", "celery", *arguments], environment)  # noqa: S606
