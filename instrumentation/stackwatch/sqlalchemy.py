"""SQLAlchemy: spans, query timing, the slow-query log, SQL comments and N+1 detection.

Spans come from OpenTelemetry's SQLAlchemy instrumentation, attached to the one
engine given (never by patching ``create_engine`` for the whole process). Around it
stackwatch adds what the contrib package lacks: ``db_query_duration_seconds``, a
slow-query warning carrying the request id and trace id, sqlcommenter comments with
``traceparent``, ``request_id`` and ``route`` (so ``pg_stat_statements`` and the
server's slow log point back at the request), and per-request statement counts that
expose N+1 patterns while the request is still being served.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer, _after_cur_exec
from opentelemetry.instrumentation.sqlalchemy.version import __version__ as _contrib_version
from opentelemetry.semconv.metrics import MetricInstruments
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from stackwatch import metrics as sw_metrics
from stackwatch.requestid import printable, request_id
from stackwatch.scope import (
    WorkScope,
    current_scope,
    register_scope_closer,
    unregister_scope_closer,
)
from stackwatch.settings import NPlusOneMode, Settings, get_settings
from stackwatch.sqltext import StatementShape, has_comment, sqlcomment, statement_shape

__all__ = ["NPlusOneError", "instrument_sqlalchemy", "uninstrument_sqlalchemy"]

_log = structlog.get_logger("stackwatch.sqlalchemy")

# The attribute our listeners keep on SQLAlchemy's ExecutionContext between the
# before and after events (the contrib instrumentation keeps its span the same way).
_CONTEXT_ATTRIBUTE = "_stackwatch_query"
_PARAMETERS_LOG_CHARS = 1000
_EXAMPLE_CHARS = 1000


class NPlusOneError(RuntimeError):
    """The same statement ran ``STACKWATCH_NPLUSONE_THRESHOLD`` times in one request or task.

    Raised only with ``STACKWATCH_NPLUSONE=raise``, meant for test suites: the test
    that triggers an N+1 fails at the statement that crossed the threshold.
    """

    def __init__(self, statement: str, count: int, path: str) -> None:
        super().__init__(
            f"N+1 query: {statement!r} ran {count} times in {path!r}; "
            "load the relationship eagerly (selectinload / joinedload) or batch the lookups"
        )
        self.statement = statement
        self.count = count
        self.path = path


@dataclass
class _QueryListeners:
    """The event listeners of one instrumented engine, configured from the settings."""

    slow_query_s: float
    log_parameters: bool
    nplusone: NPlusOneMode
    nplusone_threshold: int
    comment: bool
    percent_placeholders: bool
    _durations: dict[str, Any] = field(default_factory=dict)
    _failed_stages: set[str] = field(default_factory=set)

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> _QueryListeners:
        return cls(
            slow_query_s=settings.slow_query_ms / 1000.0,
            log_parameters=settings.log_sql_parameters,
            nplusone=settings.nplusone,
            nplusone_threshold=settings.nplusone_threshold,
            comment=settings.sql_commenter,
            percent_placeholders=engine.dialect.paramstyle in ("format", "pyformat"),
        )

    def count(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        """Count the statement into the current request or task; the N+1 check happens here.

        Registered ahead of every other listener, so that ``NPlusOneError`` stops the
        statement before a span is started for it.
        """
        try:
            shape = statement_shape(statement)
            scope = current_scope()
            if scope is not None:
                scope.queries += 1
                if not shape.batched and self.nplusone != "off":
                    self._count_statement(scope, shape, statement)
        except NPlusOneError:
            raise
        except Exception:
            self._listener_failed("count")
        return statement, parameters

    def _count_statement(self, scope: WorkScope, shape: StatementShape, statement: str) -> None:
        key = shape.normalized
        count = scope.statements[key] + 1
        scope.statements[key] = count
        if count == 1:
            scope.examples[key] = statement[:_EXAMPLE_CHARS]
        elif count == self.nplusone_threshold:
            scope.reported.add(key)
            trace.get_current_span().add_event(
                "db.n_plus_one",
                {"db.statement": key, "db.statement.count": count, "stackwatch.path": scope.name},
            )
            if self.nplusone == "raise":
                raise NPlusOneError(key, count, scope.name)

    def annotate(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        """Append the sqlcommenter comment and start the clock; runs after the span started."""
        try:
            shape = statement_shape(statement)
            span = getattr(context, "_otel_span", None)
            commented = statement
            if self.comment and not has_comment(statement):
                comment = self._comment(span, context, parameters)
                if comment:
                    commented = f"{statement} {comment}"
            setattr(context, _CONTEXT_ATTRIBUTE, (shape, span, time.perf_counter()))
        except Exception:
            self._listener_failed("annotate")
            return statement, parameters
        return commented, parameters

    def _comment(self, span: Any, context: Any, parameters: Any) -> str:
        span_context = (span or trace.get_current_span()).get_span_context()
        scope = current_scope()
        fields = {
            "request_id": request_id(),
            "route": scope.name if scope is not None else None,
            "traceparent": (
                f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
                f"{int(span_context.trace_flags):02x}"
                if span_context.is_valid
                else None
            ),
        }
        # SQLAlchemy hands the statement to the driver unformatted only when it has no
        # parameters at all; otherwise a %-paramstyle driver reads '%%' as '%'.
        sent_raw = not parameters and bool(getattr(context, "no_parameters", False))
        return sqlcomment(fields, double_percent=self.percent_placeholders and not sent_raw)

    def finished(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        """Record the duration of a statement that completed."""
        try:
            self._record(context, parameters)
        except Exception:
            self._listener_failed("finished")

    def failed(self, exception_context: Any) -> None:
        """Record the duration of a statement that raised (a timeout is often the slowest)."""
        try:
            context = exception_context.execution_context
            if context is not None:
                self._record(context, exception_context.parameters)
        except Exception:
            self._listener_failed("failed")

    def _listener_failed(self, stage: str) -> None:
        """Telemetry never breaks a query: log a listener's failure once, then stay quiet."""
        if stage in self._failed_stages:
            return
        self._failed_stages.add(stage)
        _log.exception(
            "stackwatch SQLAlchemy listener failed; statements run without it", stage=stage
        )

    def _record(self, context: Any, parameters: Any) -> None:
        started = getattr(context, _CONTEXT_ATTRIBUTE, None)
        if started is None:
            return
        setattr(context, _CONTEXT_ATTRIBUTE, None)
        shape, span, start = started
        elapsed = time.perf_counter() - start
        histogram = self._durations.get(shape.operation)
        if histogram is None:
            histogram = sw_metrics.db_query_duration_seconds.labels(operation=shape.operation)
            self._durations[shape.operation] = histogram
        if elapsed < self.slow_query_s:
            histogram.observe(elapsed)
            return
        self._slow(shape, span, elapsed, parameters, histogram)

    def _slow(
        self, shape: StatementShape, span: Any, elapsed: float, parameters: Any, histogram: Any
    ) -> None:
        span_context = (span or trace.get_current_span()).get_span_context()
        fields: dict[str, Any] = {
            "statement": shape.normalized,
            "operation": shape.operation,
            "duration_ms": round(elapsed * 1000.0, 1),
            "threshold_ms": round(self.slow_query_s * 1000.0, 1),
            "request_id": request_id(),
        }
        exemplar = None
        if span_context.is_valid:
            trace_id = format(span_context.trace_id, "032x")
            fields["trace_id"] = trace_id
            fields["span_id"] = format(span_context.span_id, "016x")
            exemplar = {"trace_id": trace_id}
        scope = current_scope()
        if scope is not None:
            fields["path"] = scope.name
        if self.log_parameters and parameters:
            fields["parameters"] = printable(repr(parameters), limit=_PARAMETERS_LOG_CHARS)
        histogram.observe(elapsed, exemplar=exemplar)
        sw_metrics.db_slow_queries_total.labels(operation=shape.operation).inc()
        _log.warning("slow query", **fields)


@dataclass
class _Instrumentation:
    """What ``instrument_sqlalchemy`` attached to one engine, so that it can be taken off."""

    listeners: list[tuple[str, Callable[..., Any]]]
    owns_spans: bool


_lock = threading.Lock()
_instrumented: weakref.WeakKeyDictionary[Engine, _Instrumentation] = weakref.WeakKeyDictionary()


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


def instrument_sqlalchemy(
    engine: Engine | AsyncEngine, *, settings: Settings | None = None
) -> None:
    """Instrument one engine (sync or async): spans, timing, slow queries, comments, N+1.

    Calling it again for the same engine is harmless; ``uninstrument_sqlalchemy``
    undoes it. ``settings`` defaults to those ``stackwatch.setup()`` installed. When
    OpenTelemetry's SQLAlchemy instrumentation already traces this engine (under
    ``opentelemetry-instrument``), its spans are kept and no second span is made.
    """
    sync_engine = _sync_engine(engine)
    with _lock:
        if sync_engine in _instrumented:
            return
        listeners = _QueryListeners.from_settings(settings or get_settings(), sync_engine)
        event.listen(
            sync_engine, "before_cursor_execute", listeners.count, retval=True, insert=True
        )
        owns_spans = not event.contains(sync_engine, "after_cursor_execute", _after_cur_exec)
        if owns_spans:
            _attach_contrib_spans(sync_engine)
        attached: list[tuple[str, Callable[..., Any]]] = [
            ("before_cursor_execute", listeners.count),
            ("before_cursor_execute", listeners.annotate),
            ("after_cursor_execute", listeners.finished),
            ("handle_error", listeners.failed),
        ]
        event.listen(sync_engine, "before_cursor_execute", listeners.annotate, retval=True)
        event.listen(sync_engine, "after_cursor_execute", listeners.finished)
        event.listen(sync_engine, "handle_error", listeners.failed)
        _instrumented[sync_engine] = _Instrumentation(attached, owns_spans)
        register_scope_closer(_close_scope)


def uninstrument_sqlalchemy(engine: Engine | AsyncEngine) -> None:
    """Remove everything ``instrument_sqlalchemy`` attached to ``engine``; harmless if nothing."""
    sync_engine = _sync_engine(engine)
    with _lock:
        instrumentation = _instrumented.pop(sync_engine, None)
        if instrumentation is None:
            return
        for identifier, listener in instrumentation.listeners:
            event.remove(sync_engine, identifier, listener)
        if instrumentation.owns_spans:
            _detach_contrib_spans(sync_engine)
        if not _instrumented:
            unregister_scope_closer(_close_scope)


def _attach_contrib_spans(engine: Engine) -> None:
    """Attach OpenTelemetry's SQLAlchemy span listeners to ``engine`` alone.

    ``SQLAlchemyInstrumentor().instrument()`` would also patch ``create_engine`` for
    the whole process and, being a singleton, could not be undone per engine.
    """
    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", _contrib_version)
    meter = metrics.get_meter("opentelemetry.instrumentation.sqlalchemy", _contrib_version)
    connections_usage = meter.create_up_down_counter(
        name=MetricInstruments.DB_CLIENT_CONNECTIONS_USAGE,
        unit="connections",
        description=(
            "The number of connections that are currently in state described by the state "
            "attribute."
        ),
    )
    EngineTracer(tracer, engine, connections_usage, enable_commenter=False)


def _detach_contrib_spans(engine: Engine) -> None:
    # EngineTracer records every listener it registers (target weakref, event, function);
    # removing only this engine's entries leaves other engines traced.
    registered = EngineTracer._remove_event_listener_params
    for entry in list(registered):
        target_ref, identifier, listener = entry
        if target_ref() is engine:
            event.remove(engine, identifier, listener)
            registered.remove(entry)


def _close_scope(scope: WorkScope) -> None:
    """Per request or task: observe the statement count and report each N+1 statement once."""
    sw_metrics.db_queries_per_request.labels(path=scope.name).observe(scope.queries)
    for statement in sorted(scope.reported):
        sw_metrics.db_n_plus_one_total.labels(path=scope.name).inc()
        _log.warning(
            "N+1 query",
            statement=statement,
            count=scope.statements[statement],
            path=scope.name,
            kind=scope.kind,
            example=scope.examples.get(statement, statement),
        )
