"""SQLAlchemy: spans, query timing, the slow-query log, SQL comments and N+1 detection.

Spans come from OpenTelemetry's SQLAlchemy instrumentation, attached to the one
engine given (never by patching ``create_engine`` for the whole process) and made
only for statements of a sampled request or task. Around it stackwatch adds what the
contrib package lacks: ``db_query_duration_seconds``, a slow-query warning carrying
the request id and trace id, sqlcommenter comments with the ``route`` and, where
the trace is sampled, ``request_id`` and ``traceparent`` (so ``pg_stat_statements``
and the server's slow log point back at the endpoint and the trace without making
every request's statements new texts), and per-request statement counts that expose
N+1 patterns while the request is still being served.

The per-statement path is what a fast query pays for, so it is one hook on the
dialect's ``do_execute`` (no engine listener, whose presence alone makes SQLAlchemy
dispatch all its per-statement engine events), and what does not change per statement
(the comment of a request, the labelled histogram of a statement) is computed once and
looked up after that.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

import structlog
from opentelemetry import metrics, trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.instrumentation.sqlalchemy.engine import (
    EngineTracer,
    _after_cur_exec,
    _get_attributes_from_cursor_or_conn,
    _get_attributes_from_url,
    _get_db_name_from_cursor_or_conn,
)
from opentelemetry.instrumentation.sqlalchemy.version import __version__ as _contrib_version
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.semconv.metrics import MetricInstruments
from opentelemetry.trace import SpanContext, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from stackwatch import metrics as sw_metrics
from stackwatch.leafspans import LeafSpans
from stackwatch.requestid import printable, request_id
from stackwatch.scope import (
    WorkScope,
    current_scope,
    register_scope_closer,
    unregister_scope_closer,
)
from stackwatch.settings import NPlusOneMode, Settings, SqlCommenterMode, get_settings
from stackwatch.sqltext import has_comment, sqlcomment, statement_operation, statement_shape
from stackwatch.traces import DirectSpans, RootSpans

__all__ = ["NPlusOneError", "instrument_sqlalchemy", "uninstrument_sqlalchemy"]

_log = structlog.get_logger("stackwatch.sqlalchemy")
_T = TypeVar("_T")

_PARAMETERS_LOG_CHARS = 1000
_EXAMPLE_CHARS = 1000
# Caches keyed by statement text are bounded: a loop of literal SQL makes every text new.
_CACHED_TEXTS = 4096
# contrib's per-statement listeners are not attached: stackwatch's hooks do their work.
_STATEMENT_EVENTS = frozenset({"before_cursor_execute", "after_cursor_execute", "handle_error"})
# Where a DBAPI connection's span attributes are kept: SQLAlchemy's per-connection info dict.
_CONNECTION_FIELDS = "stackwatch.span_fields"


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


class _ConnectionFields(NamedTuple):
    """What contrib derives from a DBAPI connection for every span: fixed per connection."""

    db_name: str | None
    attributes: tuple[tuple[str, Any], ...]


class _AttributeCollector(dict[str, Any]):
    """Stands in for a span while contrib's code sets a statement's attributes on it."""

    def set_attribute(self, key: str, value: Any) -> None:
        self[key] = value


def _direct_children(tracer: Any) -> LeafSpans | DirectSpans | None:
    """Direct starts of statement spans under a local sampled span, where they apply:
    leaf spans where those apply too."""
    direct = DirectSpans.for_tracer(tracer)
    if direct is None or not direct.starts_children:
        return None
    return LeafSpans.for_direct(direct) or direct


def _root_spans(tracer: Any) -> RootSpans | None:
    """Root spans decided up front, for statements outside any span (root_spans=True)."""
    return RootSpans.for_tracer(tracer)


def _given(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    return attributes


class _StatementSpans(EngineTracer):
    """OpenTelemetry contrib's ``EngineTracer``, its statement spans started by stackwatch.

    Its connection-pool listeners are attached as usual. Its per-statement ones are
    not attached: stackwatch's hooks start a span only for a statement that gets
    one (left to itself, contrib computes a span's name and attributes for every
    statement, recording or not, which costs more than a fast query), and end it as
    contrib's after and error listeners would.

    The span is contrib's span: the same name, kind and attributes, computed by
    contrib's own functions. But contrib derives the connection's attributes and
    the database name again for every statement, and sets the statement's seven
    attributes one call (one lock, one validation) at a time after the span has
    started. Here the connection's part is derived once per DBAPI connection, the
    statement's part once per statement text (bounded), and all of them are given to
    ``start_span`` at once, where the sampler sees them too, as the OpenTelemetry
    specification recommends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (statement, connection fields) -> (span name, attributes), bounded.
        self._statement_fields: dict[
            tuple[str, _ConnectionFields], tuple[str, MappingProxyType[str, Any]]
        ] = {}
        # Builder -> (the SDK tracer behind ``self.tracer``, its shortcut or None), made on
        # first use: root spans only once a statement outside any span needs one.
        self._shortcuts: dict[Callable[[Any], Any], tuple[object, Any]] = {}

    @classmethod
    def _register_event_listener(
        cls, target: Any, identifier: str, func: Any, *args: Any, **kw: Any
    ) -> None:
        if identifier not in _STATEMENT_EVENTS:
            super()._register_event_listener(target, identifier, func, *args, **kw)

    def start(
        self, conn: Any, cursor: Any, statement: str, context: Any, parent: SpanContext
    ) -> None:
        """Start the statement's client span where contrib's before-listener would.

        ``parent`` is the current span's context. Under a local sampled span of
        stackwatch's provider the span is started by ``DirectSpans`` (the same span,
        a quarter cheaper); anywhere else by the tracer.
        """
        if not is_instrumentation_enabled():
            return
        info = conn.info
        connection = info.get(_CONNECTION_FIELDS)
        if connection is None:
            connection = info[_CONNECTION_FIELDS] = self._connection_fields(conn, cursor)
        fields = self._statement_fields.get((statement, connection))
        if fields is None:
            fields = self._new_statement_fields(statement, connection)
        name, attributes = fields
        if parent.is_valid:
            if (
                parent.trace_flags.sampled
                and not parent.is_remote
                and (direct := self._shortcut(_direct_children)) is not None
            ):
                span = direct.start_child(name, trace.SpanKind.CLIENT, attributes, parent)
                context._otel_span = span
                return
        elif (roots := self._shortcut(_root_spans)) is not None:  # root_spans=True
            context._otel_span = roots.start(name, trace.SpanKind.CLIENT, _given, attributes)
            return
        context._otel_span = self.tracer.start_span(
            name, kind=trace.SpanKind.CLIENT, attributes=attributes
        )

    def _shortcut(self, build: Callable[[Any], _T]) -> _T:
        """``build(tracer)`` for the SDK tracer behind ``self.tracer``, remembered."""
        tracer = getattr(self.tracer, "_real_tracer", None) or self.tracer
        known = self._shortcuts.get(build)
        if known is None or known[0] is not tracer:
            known = self._shortcuts[build] = (tracer, build(tracer))
        return known[1]

    def _connection_fields(self, conn: Any, cursor: Any) -> _ConnectionFields:
        """contrib's connection attributes and database name (its code, its order)."""
        attributes, found = _get_attributes_from_url(
            conn.engine.url, self._sem_conv_opt_in_mode_db, self._sem_conv_opt_in_mode_http
        )
        if not found:
            attributes = _get_attributes_from_cursor_or_conn(
                self.vendor,
                conn,
                cursor,
                attributes,
                self._sem_conv_opt_in_mode_db,
                self._sem_conv_opt_in_mode_http,
            )
        db_name = _get_db_name_from_cursor_or_conn(self.vendor, conn, cursor)
        return _ConnectionFields(db_name, tuple(attributes.items()))

    def _new_statement_fields(
        self, statement: str, connection: _ConnectionFields
    ) -> tuple[str, MappingProxyType[str, Any]]:
        """contrib's span name and attributes for ``statement``, remembered."""
        collected = _AttributeCollector()
        self._set_db_client_span_attributes(
            collected, statement, connection.db_name, dict(connection.attributes)
        )
        # Cleaned once here as the SDK cleans span attributes, so that spans started by
        # DirectSpans can take them as they are.
        fields = (
            self._operation_name(connection.db_name, statement),
            MappingProxyType(dict(BoundedAttributes(attributes=collected))),
        )
        if len(self._statement_fields) >= _CACHED_TEXTS:
            self._statement_fields.clear()
        self._statement_fields[statement, connection] = fields
        return fields


def _send_through(
    hooks: Sequence[Callable[..., Any]],
    mine: Callable[..., Any],
    send: Callable[..., Any],
    *args: Any,
) -> None:
    """Call the hooks registered after ``mine`` as SQLAlchemy would, then ``send`` if none
    of them sent the statement itself."""
    registered = list(hooks)
    for hook in registered[registered.index(mine) + 1 :] if mine in registered else ():
        if hook(*args):
            return
    send(*args)


def _unwatched(context: Any) -> bool:
    """A statement SQLAlchemy runs with engine events switched off: the dialect's own
    queries on a new engine's first connection (server version, schema, settings), which
    engine listeners never see either."""
    return context.root_connection.__dict__.get("_has_events") is False


@dataclass
class _QueryListeners:
    """What one instrumented engine runs around each statement, hooked where it costs least.

    The hooks are the dialect's ``do_execute`` events (and their ``no_params`` and
    ``executemany`` forms): each runs the driver's call itself, between counting,
    commenting and starting the span before it and timing and ending the span after
    it. Engine events (``before_cursor_execute``, ``after_cursor_execute``,
    ``handle_error``) would do the same in three listeners, but once an engine has any
    listener SQLAlchemy also dispatches its other per-statement events, which costs a
    ``SELECT 1`` about a sixth of its client time before a listener does anything
    (``benchmarks/sqlalchemy_overhead.py``, "bare, no-op listeners"). A dialect hook
    costs about a third of that. SQLAlchemy stops at the first hook that sent the
    statement: ours are appended after any the application has (one of those that sends
    the statement itself takes it from us), and ours call those added after them, in
    order, so that the application's hooks run as they would without stackwatch.
    """

    dialect: Any  # the engine's Dialect, whose do_execute* methods send the statement
    slow_query_s: float
    log_parameters: bool
    nplusone: NPlusOneMode
    nplusone_threshold: int
    comment: SqlCommenterMode
    percent_placeholders: bool
    root_spans: bool
    # None when contrib's own instrumentation already traces the engine (its listeners run).
    spans: _StatementSpans | None = None
    # Dialect event -> the hooks registered on the dialect for it, ours included, in
    # calling order (SQLAlchemy's own list, read to find hooks added after ours).
    registered_hooks: dict[str, Sequence[Callable[..., Any]]] = field(default_factory=dict)
    # Statement text -> its db_query_duration_seconds{operation} child, bounded.
    _durations: dict[str, Any] = field(default_factory=dict)
    _failed_stages: set[str] = field(default_factory=set)

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: Engine, *, root_spans: bool
    ) -> _QueryListeners:
        return cls(
            dialect=engine.dialect,
            slow_query_s=settings.slow_query_ms / 1000.0,
            log_parameters=settings.log_sql_parameters,
            nplusone=settings.nplusone,
            nplusone_threshold=settings.nplusone_threshold,
            comment=settings.sql_commenter,
            percent_placeholders=engine.dialect.paramstyle in ("format", "pyformat"),
            root_spans=root_spans,
        )

    def hook(self, send: str) -> Callable[..., bool]:
        """The hook for the dialect event ``send`` (``do_execute``, ``do_execute_no_params``
        or ``do_executemany``), around the dialect's own method of that name.

        SQLAlchemy calls it as it would call that method, the execution context last. It
        returns True once the statement is sent (SQLAlchemy then skips its own call).
        """
        with_parameters = send != "do_execute_no_params"

        def hook(cursor: Any, statement: str, *rest: Any) -> bool:
            context = rest[-1]
            if context is None or _unwatched(context):
                return False
            parameters = rest[0] if with_parameters else None
            sent, started = self._start(cursor, statement, parameters, context)
            try:
                hooks = self.registered_hooks.get(send)
                if not hooks or hooks[-1] is hook:
                    getattr(self.dialect, send)(cursor, sent, *rest)
                else:  # a hook added after ours: it runs, as it would without us
                    _send_through(hooks, hook, getattr(self.dialect, send), cursor, sent, *rest)
            except BaseException as error:
                self._end(statement, parameters, context, started, error)
                raise
            self._end(statement, parameters, context, started)
            return True

        return hook

    def _start(
        self, cursor: Any, statement: str, parameters: Any, context: Any
    ) -> tuple[str, float]:
        """Count the statement, start its span if wanted, append the comment, start the clock.

        Runs inside SQLAlchemy's error handling, after the engine's own
        ``before_cursor_execute`` listeners (the text they hand on is the one counted and
        commented), so ``NPlusOneError`` stops the statement before any span of ours is
        started and reaches the caller as it was raised. Each part fails on its own: a
        broken one costs its own telemetry, never the others' or the query.
        """
        scope = current_scope()
        if scope is not None:
            try:
                self._count(scope, statement)
            except NPlusOneError:
                raise
            except Exception:
                self._listener_failed("count")
        current = trace.get_current_span().get_span_context()
        # A span only where it can be exported: under a sampled parent, or (root_spans)
        # outside any span, where the sampler decides. Children of an unsampled request
        # would be dropped by every standard sampler anyway.
        if self.spans is not None and (
            current.trace_flags.sampled if current.is_valid else self.root_spans
        ):
            try:
                self.spans.start(context.root_connection, cursor, statement, context, current)
            except Exception:
                self._listener_failed("span")
        sent = statement
        if self.comment != "off" and not has_comment(statement):
            try:
                comment = self._comment(scope, current, context, parameters)
                if comment:
                    sent = f"{statement} {comment}"
            except Exception:
                self._listener_failed("comment")
        return sent, time.perf_counter()

    def _count(self, scope: WorkScope, statement: str) -> None:
        """Count the statement into its request or task; the N+1 check happens here."""
        scope.queries += 1
        if self.nplusone == "off":
            return
        shape = statement_shape(statement)
        if shape.batched:
            return
        key = shape.normalized
        count = scope.count_statement(key, statement)
        if count == self.nplusone_threshold:
            scope.report(key)
            trace.get_current_span().add_event(
                "db.n_plus_one",
                {"db.statement": key, "db.statement.count": count, "stackwatch.path": scope.name},
            )
            if self.nplusone == "raise":
                raise NPlusOneError(key, count, scope.name)

    def _comment(
        self, scope: WorkScope | None, current: SpanContext, context: Any, parameters: Any
    ) -> str:
        """The comment for this statement ("" when there is nothing to say).

        The route is the same for every request of an endpoint. The request id and
        ``traceparent`` are new for every request, which makes its statements new
        texts: the driver cannot reuse a prepared statement (psycopg prepares a text
        after five runs, asyncpg prepares every text it has not seen) and the server
        parses and plans them again. So by default ("sampled") they are added only where
        there is a recorded trace to point to, and the sampler sets what that costs.
        """
        if not current.is_valid:
            own_span = getattr(context, "_otel_span", None)  # a root span (root_spans)
            if own_span is not None:
                current = own_span.get_span_context()
        per_request = self.comment == "full" or (
            self.comment == "sampled" and current.trace_flags.sampled
        )
        request = request_id() if per_request else None
        if scope is None and request is None and not (per_request and current.is_valid):
            return ""  # nothing to say: the text stays the same, the driver's caches work
        # SQLAlchemy hands the statement to the driver unformatted only when it has no
        # parameters at all; otherwise a %-paramstyle driver reads '%%' as '%'.
        sent_raw = not parameters and bool(getattr(context, "no_parameters", False))
        return _comment_text(
            request,
            scope.name if scope is not None else None,
            current.trace_id if per_request and current.is_valid else 0,
            current.span_id if per_request else 0,
            current.trace_flags if per_request else 0,
            self.percent_placeholders and not sent_raw,
        )

    def _end(
        self,
        statement: str,
        parameters: Any,
        context: Any,
        started: float,
        error: BaseException | None = None,
    ) -> None:
        """Stop the clock, end the span, record the duration: of a statement that completed,
        or of one that raised ``error`` (a timeout is often the slowest)."""
        elapsed = time.perf_counter() - started
        if self.spans is not None:
            span = getattr(context, "_otel_span", None)
            if span is not None:
                try:  # what contrib's after_cursor_execute and handle_error listeners do
                    if error is not None and span.is_recording():
                        span.set_status(Status(StatusCode.ERROR, str(error)))
                    span.end()
                except Exception:
                    self._listener_failed("span")
        try:
            self._record(statement, elapsed, context, parameters)
        except Exception:
            self._listener_failed("finished" if error is None else "failed")

    def _listener_failed(self, stage: str) -> None:
        """Telemetry never breaks a query: log a listener's failure once, then stay quiet."""
        if stage in self._failed_stages:
            return
        self._failed_stages.add(stage)
        _log.exception(
            "stackwatch SQLAlchemy listener failed; statements run without it", stage=stage
        )

    def _record(self, statement: str, elapsed: float, context: Any, parameters: Any) -> None:
        histogram = self._durations.get(statement)
        if histogram is None:
            histogram = self._duration_histogram(statement)
        if elapsed < self.slow_query_s:
            histogram.observe(elapsed)
            return
        self._slow(statement, context, elapsed, parameters, histogram)

    def _duration_histogram(self, statement: str) -> Any:
        """The labelled histogram of a statement text, remembered: a dictionary hit next time.

        Only the first keyword is needed for the label, so a statement without a comment
        is not normalised (a loop of literal SQL would make the normaliser run each time).
        """
        operation = (
            statement_shape(statement).operation
            if has_comment(statement)
            else statement_operation(statement)
        )
        histogram = sw_metrics.db_query_duration_seconds.labels(operation=operation)
        if len(self._durations) >= _CACHED_TEXTS:
            self._durations.clear()
        self._durations[statement] = histogram
        return histogram

    def _slow(
        self, statement: str, context: Any, elapsed: float, parameters: Any, histogram: Any
    ) -> None:
        shape = statement_shape(statement)
        span = getattr(context, "_otel_span", None) or trace.get_current_span()
        span_context = span.get_span_context()
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


@functools.lru_cache(maxsize=1024)
def _comment_text(
    request: str | None,
    route: str | None,
    trace_id: int,
    span_id: int,
    trace_flags: int,
    double_percent: bool,
) -> str:
    """The sqlcommenter comment for these values; cached, as a request's statements share it.

    The ``traceparent`` names the span the statement runs in (the request's or task's),
    so the comment changes once per request, not once per statement.
    """
    traceparent = f"00-{trace_id:032x}-{span_id:016x}-{trace_flags:02x}" if trace_id else None
    fields = {"request_id": request, "route": route, "traceparent": traceparent}
    return sqlcomment(fields, double_percent=double_percent)


@dataclass
class _Instrumentation:
    """What ``instrument_sqlalchemy`` attached to one engine, so that it can be taken off."""

    listeners: list[tuple[str, Callable[..., Any]]]
    query: _QueryListeners
    owns_spans: bool


_lock = threading.Lock()
_instrumented: weakref.WeakKeyDictionary[Engine, _Instrumentation] = weakref.WeakKeyDictionary()


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine


def instrument_sqlalchemy(
    engine: Engine | AsyncEngine, *, settings: Settings | None = None, root_spans: bool = False
) -> None:
    """Instrument one engine (sync or async): spans, timing, slow queries, comments, N+1.

    Calling it again for the same engine is harmless; ``uninstrument_sqlalchemy``
    undoes it. ``settings`` defaults to those ``stackwatch.setup()`` installed. When
    OpenTelemetry's SQLAlchemy instrumentation already traces this engine (under
    ``opentelemetry-instrument``), its spans are kept and no second span is made.

    A statement gets a span when it runs inside a sampled span (a request, a task, or
    one of the user's own). ``root_spans=True`` also gives a statement that runs
    outside any span (start-up code, scripts, background threads) a trace of its own;
    off by default, as such one-span traces are noise in Jaeger. Those statements are
    still timed, logged when slow and commented.
    """
    sync_engine = _sync_engine(engine)
    with _lock:
        if sync_engine in _instrumented:
            return
        listeners = _QueryListeners.from_settings(
            settings or get_settings(), sync_engine, root_spans=root_spans
        )
        owns_spans = not event.contains(sync_engine, "after_cursor_execute", _after_cur_exec)
        if owns_spans:
            listeners.spans = _attach_contrib_spans(sync_engine)
        attached = [
            (identifier, listeners.hook(identifier))
            for identifier in ("do_execute", "do_execute_no_params", "do_executemany")
        ]
        for identifier, hook in attached:
            event.listen(sync_engine, identifier, hook)
            registered = getattr(
                getattr(sync_engine.dialect.dispatch, identifier), "listeners", None
            )
            if isinstance(registered, Sequence):
                listeners.registered_hooks[identifier] = registered
        _instrumented[sync_engine] = _Instrumentation(attached, listeners, owns_spans)
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


def _attach_contrib_spans(engine: Engine) -> _StatementSpans:
    """OpenTelemetry's SQLAlchemy span maker for ``engine`` alone (pool listeners attached).

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
    return _StatementSpans(tracer, engine, connections_usage, enable_commenter=False)


def _detach_contrib_spans(engine: Engine) -> None:
    # EngineTracer records every listener it registers (target weakref, event, function);
    # removing only this engine's entries leaves other engines traced.
    registered = EngineTracer._remove_event_listener_params
    for entry in list(registered):
        target_ref, identifier, listener = entry
        if target_ref() is engine:
            event.remove(engine, identifier, listener)
            registered.remove(entry)


# path -> its db_queries_per_request child; routes and task names are a bounded set.
_per_request: dict[str, Any] = {}


def _close_scope(scope: WorkScope) -> None:
    """Per request or task: observe the statement count and report each N+1 statement once."""
    histogram = _per_request.get(scope.name)
    if histogram is None:
        histogram = sw_metrics.db_queries_per_request.labels(path=scope.name)
        if len(_per_request) < _CACHED_TEXTS:
            _per_request[scope.name] = histogram
    histogram.observe(scope.queries)
    for statement in sorted(scope.reported):
        sw_metrics.db_n_plus_one_total.labels(path=scope.name).inc()
        _log.warning(
            "N+1 query",
            statement=statement,
            count=scope.statements[statement],
            path=scope.name,
            kind=scope.kind,
            example=scope.examples.get(statement, statement)[:_EXAMPLE_CHARS],
        )
