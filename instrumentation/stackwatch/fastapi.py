"""FastAPI instrumentation: one server span, the latency histogram, request ids and /metrics.

``instrument_fastapi(app)`` wraps the app's middleware stack (outside Starlette's
error middleware, so unhandled 500s are seen and carry the request id) with one
pure-ASGI layer, ``HttpTelemetryMiddleware``: it does what ``RequestIdMiddleware``
does, opens the server span, keeps ``api_requests_in_progress`` and observes
``api_request_duration_seconds{method,path,status}`` with a trace-id exemplar.

Why our own span and not FastAPI's native telemetry: measured side by side
(benchmarks/http_overhead.py, docs/http.md), native telemetry with its defaults
costs more per request than this whole layer, and without its operation spans its
span alone still costs about three times ours. So instrumented apps get their
native telemetry switched off and exactly one server span comes from here. When
another server span is already current (contrib's ASGI middleware placed outside
us), we annotate it instead of starting a second one.

Route templates come from FastAPI's own router: FastAPI >= 0.142 reports the route
it picks (prefixed routers, mounted sub-apps, trailing-slash redirects) to the
object it finds under ``scope["fastapi.telemetry"]``; we put a probe there, which
also moves the in-progress gauge from ``<unmatched>`` to the route the moment it is
known. Older FastAPI: the route is matched up front, as contrib does.
"""

from __future__ import annotations

import bisect
import functools
import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fastapi
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import Gauge, Histogram
from starlette.routing import Match, Mount

from stackwatch.httpx import instrument_httpx
from stackwatch.logs import adopt_framework_loggers, log_info_line
from stackwatch.metrics import (
    LATENCY_BUCKETS_S,
    UNMATCHED_PATH,
    MetricsServer,
    api_request_duration_seconds,
    api_requests_in_progress,
    metrics_asgi_app,
    multiprocess_dir,
    start_metrics_server,
)
from stackwatch.requestid import (
    RequestIdMiddleware,
    accept_request_id,
    bind_request_id,
    printable,
    reset_request_id,
    with_request_id,
)
from stackwatch.scope import WorkScope, close_scope, open_scope
from stackwatch.settings import get_settings
from stackwatch.traces import RootSpans

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

_RequestTelemetry: Any
try:  # FastAPI >= 0.142: the router reports the route it selects to this object.
    from fastapi.telemetry._api import _RequestTelemetry
except ImportError:  # pragma: no cover - exercised only on older FastAPI
    _RequestTelemetry = None

__all__ = ["StackwatchFastAPIInstrumentor", "instrument_fastapi", "uninstrument_fastapi"]

_log = structlog.get_logger("stackwatch.http")
_tracer = trace.get_tracer("stackwatch.fastapi")

# RFC 9110 methods plus QUERY; anything else is "_OTHER" so a client cannot mint label values.
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_TELEMETRY_KEY = "fastapi.telemetry"
_NATIVE_SIGNALS = ("tracing", "metrics", "logs")


class _AsgiHeaderGetter(Getter[Iterable[tuple[bytes, bytes]]]):
    """Reads W3C trace context straight from the raw ASGI header list."""

    def get(self, carrier: Iterable[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        values = [value.decode("latin-1") for name, value in carrier if name == wanted]
        return values or None

    def keys(self, carrier: Iterable[tuple[bytes, bytes]]) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_HEADER_GETTER = _AsgiHeaderGetter()
_NO_PARENT = otel_context.Context()
# The propagator in force and the headers it reads (lower case), or None when it is not
# one whose result without its headers is known to be an empty context; refreshed when
# the global propagator changes.
_propagation: tuple[object, frozenset[bytes] | None] = (None, None)


def _parent_context(headers: list[tuple[bytes, bytes]]) -> otel_context.Context:
    """The remote parent the request's headers carry (``traceparent``...), else an empty context.

    What ``propagate.extract`` returns, without running the propagators over
    requests that carry none of their headers (most requests to an edge service).
    That shortcut is taken only for OpenTelemetry's default propagators (W3C trace
    context first, then W3C baggage): both return an empty context when their
    headers are absent. Any other propagator always runs.
    """
    global _propagation
    textmap = propagate.get_global_textmap()
    known, fields = _propagation
    if textmap is not known:
        fields = _default_propagation_fields(textmap)
        _propagation = (textmap, fields)
    if fields is not None:
        for name, _ in headers:
            if name in fields:
                break
        else:
            return _NO_PARENT
    return propagate.extract(headers, getter=_HEADER_GETTER)


def _default_propagation_fields(textmap: object) -> frozenset[bytes] | None:
    """The headers of OpenTelemetry's default propagators; None for any other propagator."""
    propagators = getattr(textmap, "_propagators", [textmap])
    kinds = [type(propagator) for propagator in propagators]
    if kinds not in (
        [TraceContextTextMapPropagator],
        [TraceContextTextMapPropagator, W3CBaggagePropagator],
    ):
        return None
    return frozenset(
        field.lower().encode("latin-1") for propagator in propagators for field in propagator.fields
    )


# prometheus-client's labels() takes a lock and builds a key on every call. Label values
# here are bounded (methods x route templates x status codes), so look each child up once.
@functools.cache
def _in_progress(method: str, path: str) -> Gauge:
    return api_requests_in_progress.labels(method, path)


@functools.cache
def _duration(method: str, path: str, status: int) -> Histogram:
    return api_request_duration_seconds.labels(method, path, str(status))


class _Request:
    """What the telemetry layer learns about one request while it runs."""

    __slots__ = ("in_progress", "method", "path", "status", "work")

    def __init__(self, method: str, work: WorkScope) -> None:
        self.method = method
        self.path = UNMATCHED_PATH
        self.status: int | None = None
        self.work = work
        # The api_requests_in_progress child this request is counted in, once routed.
        self.in_progress: Gauge | None = None

    def route_selected(self, template: str) -> None:
        """Count the request in progress on its route; a mount may refine the route later.

        Requests are counted from routing on: before it, there is no route to count
        them on, and a request no route matches is over in microseconds.
        """
        if template == self.path:
            return
        if self.in_progress is not None:
            self.in_progress.dec()
        self.in_progress = _in_progress(self.method, template)
        self.in_progress.inc()
        self.path = template
        self.work.name = template


if _RequestTelemetry is not None:

    class _RouteProbe(_RequestTelemetry):
        """Stands where FastAPI's native telemetry would; FastAPI sets ``route`` on routing.

        A mounted FastAPI sub-app that finds this object steps aside instead of
        starting a span of its own. FastAPI sets ``http.route`` and the span name on
        ``span``; for our own span it gets None, and ``_finish`` sets both once, only
        on a span that records (FastAPI would format and set them on every span,
        sampled or not). A span we only annotate (contrib's, outside us) is passed:
        its owner may end it before ``_finish`` runs.
        """

        def __init__(self, span: trace.Span | None, span_method: str, request: _Request) -> None:
            self._request = request
            self._route: str | None = None
            super().__init__(span=span, span_method=span_method, data=None)

        @property
        def route(self) -> str | None:
            return self._route

        @route.setter
        def route(self, template: str | None) -> None:
            self._route = template
            if template is not None:
                self._request.route_selected(template)


def _match_route(routes: Iterable[Any], scope: Scope) -> str | None:
    """The template of the route ``scope`` matches, mounts included (older FastAPI only)."""
    partial: str | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.NONE:
            continue
        template = str(getattr(route, "path_format", ""))
        if isinstance(route, Mount):
            prefix = template.removesuffix("/{path}")
            inner = _match_route(route.routes, {**scope, **child})
            template = prefix + (inner if inner is not None else "/{path}")
        if match is Match.FULL:
            return template
        partial = partial or template
    return partial


class HttpTelemetryMiddleware:
    """Pure ASGI: request id, server span, ``api_request_duration_seconds``, gauge, access log.

    Outside Starlette's error middleware, so the status of an unhandled error's 500
    page is what gets recorded. It does for HTTP requests what ``RequestIdMiddleware``
    does (same helpers, same order: id bound and work scope opened first, closed
    last), in the same layer: one ASGI layer and one ``send`` wrapper per request
    instead of two. WebSockets and /metrics go through a ``RequestIdMiddleware``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Callable[[], Iterable[Any]],
        metrics_path: str | None,
        metrics_token: str | None,
        request_id_header: str = "X-Request-ID",
    ) -> None:
        self.app = app
        self._routes = routes
        self._header = request_id_header.lower().encode("latin-1")
        self._request_ids = RequestIdMiddleware(app, header_name=request_id_header)
        self._metrics_path = metrics_path
        self._metrics = (
            RequestIdMiddleware(metrics_asgi_app(metrics_token), header_name=request_id_header)
            if metrics_path
            else None
        )
        self._exemplars = multiprocess_dir() is None  # multiprocess files cannot hold them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._request_ids(scope, receive, send)
                return
            if scope["type"] == "lifespan":
                # Servers configure their loggers after opentelemetry-instrument ran
                # setup(); take them over again now that the server has started.
                # Our access line (route, status, duration, request id) replaces
                # uvicorn's, which would log every request a second time.
                adopt_framework_loggers()
                logging.getLogger("uvicorn.access").disabled = True
                if get_settings().gc_freeze:
                    send = _freeze_heap_after_startup(send)
            await self.app(scope, receive, send)
            return
        if self._metrics is not None and scope["path"] == self._metrics_path:
            await self._metrics(scope, receive, send)
            return

        header_name = self._header
        incoming = None
        for name, value in scope["headers"]:
            if name == header_name:
                incoming = value
                break
        current_id = accept_request_id(incoming)
        id_header = (header_name, current_id.encode("ascii"))
        id_token = bind_request_id(current_id)
        work, work_token = open_scope("http", UNMATCHED_PATH)

        original_method = scope["method"]
        method = original_method if original_method in _KNOWN_METHODS else "_OTHER"
        span_method = method if method != "_OTHER" else "HTTP"
        request = _Request(method, work)

        span, context_token = _server_span(scope, method, span_method, original_method, current_id)
        probe_installed = False
        native = scope.get(_TELEMETRY_KEY)
        if _RequestTelemetry is not None:
            if native is None:
                foreign_span = span if context_token is None else None
                scope[_TELEMETRY_KEY] = _RouteProbe(foreign_span, span_method, request)
                probe_installed = True
        else:
            template = _match_route(self._routes(), scope)
            if template is not None:
                request.route_selected(template)
                if context_token is None:  # a span we annotate: its owner may end it first
                    span.set_attribute("http.route", template)
                    span.update_name(f"{span_method} {template}")

        async def send_observing_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
                message["headers"] = with_request_id(message.get("headers", ()), id_header)
            await send(message)

        started = time.perf_counter()
        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_observing_status)
        except BaseException as exc:
            error = exc
            raise
        finally:
            elapsed = time.perf_counter() - started
            try:
                if probe_installed:
                    scope.pop(_TELEMETRY_KEY, None)
                elif native_route := getattr(native, "route", None):
                    # FastAPI's own telemetry was already running (an app it wraps,
                    # not ours to switch off): it tracked the route, read it there.
                    request.route_selected(native_route)
                self._finish(request, span, span_method, context_token, elapsed, error, scope)
            finally:
                close_scope(work_token)
        # Reset only on success, as RequestIdMiddleware does: the server's traceback
        # line for an unhandled error should carry the id too.
        reset_request_id(id_token)

    def _finish(
        self,
        request: _Request,
        span: trace.Span,
        span_method: str,
        context_token: object | None,
        elapsed: float,
        error: BaseException | None,
        scope: Scope,
    ) -> None:
        # No response start: an exception (Starlette's 500 page was not reached) or
        # the client left first (499, as nginx logs it).
        status = request.status or (500 if error is not None else 499)
        path = request.path
        span_context = span.get_span_context()
        # The log line's ids, formatted once here (logs.add_trace_context would look the
        # span up again); the exemplar reuses the trace id.
        ids: dict[str, str] = {}
        if span_context.is_valid:
            # W3C hex, as format(id, "032x") writes it, in a third of the time.
            ids["trace_id"] = span_context.trace_id.to_bytes(16).hex()
            ids["span_id"] = span_context.span_id.to_bytes(8).hex()
        exemplar = None
        if span.is_recording():
            attributes: dict[str, Any] = {"http.response.status_code": status}
            if path != UNMATCHED_PATH:
                attributes["http.route"] = path
                span.update_name(f"{span_method} {path}")
            if error is not None or status >= 500:
                if isinstance(error, Exception):
                    span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR))
                attributes["error.type"] = _error_type(error) if error is not None else str(status)
            roots = _roots[1]
            if roots is None:
                span.set_attributes(attributes)
            else:
                roots.set_attributes(span, attributes)
            if self._exemplars and span_context.trace_flags.sampled:
                exemplar = _exemplar_due(request.method, path, status, elapsed, ids["trace_id"])
        _duration(request.method, path, status).observe(elapsed, exemplar)
        if request.in_progress is not None:
            request.in_progress.dec()
        fields = {
            "method": request.method,
            "path": path,
            "status": status,
            # round(x, 3) formats and parses a decimal string; this is a tenth of that.
            "duration_ms": int(elapsed * 1_000_000) / 1000,
            "url": printable(scope["path"], 200),
            **ids,
        }
        log_info_line("stackwatch.http", "request", fields)
        if context_token is not None:
            span.end()
            otel_context.detach(context_token)  # type: ignore[arg-type]


# When each (method, path, status, bucket) may take its next exemplar (time.monotonic()).
_exemplar_next: dict[tuple[str, str, int, int], float] = {}
_EXEMPLAR_INTERVAL_S = 1.0


def _exemplar_due(
    method: str, path: str, status: int, elapsed: float, trace_id: str
) -> dict[str, str] | None:
    """The exemplar for this observation, or None when its bucket got one less than 1 s ago.

    A Prometheus bucket shows only its latest exemplar, and scrapes come seconds
    apart: attaching one to every sampled request (thousands a second) costs a
    validation, an object and a clock read each for nothing. One per bucket per
    second keeps every bucket's exemplar fresh, the slow buckets' included, at a
    fraction of the cost. Keys are bounded by the labels' own bounds times the buckets.
    """
    key = (method, path, status, bisect.bisect_left(LATENCY_BUCKETS_S, elapsed))
    now = time.monotonic()
    if now < _exemplar_next.get(key, 0.0):
        return None
    _exemplar_next[key] = now + _EXEMPLAR_INTERVAL_S
    return {"trace_id": trace_id}


_heap_frozen = False


def _freeze_heap_after_startup(send: Send) -> Send:
    """``send`` that runs ``gc.collect(); gc.freeze()`` once the app reports start-up complete.

    Why: every sampled span lives in the batch processor's queue until it is
    exported, long enough for the garbage collector to promote it to the oldest
    generation, and each full collection then walks the whole heap: the modules,
    classes and functions loaded at start-up, which never become garbage. Measured
    (benchmarks/http_overhead.py, 100 % sampling), collections cost 20-35 us per
    request; with the start-up heap frozen, 4 us. Freezing after a collection keeps
    start-up garbage out of the frozen set; forked workers also share those pages
    instead of copying them on write. ``STACKWATCH_GC_FREEZE=false`` turns it off.
    """

    async def send_then_freeze(message: Message) -> None:
        global _heap_frozen
        await send(message)
        if message["type"] == "lifespan.startup.complete" and not _heap_frozen:
            _heap_frozen = True
            gc.collect()
            gc.freeze()
            _log.debug("heap frozen after start-up", objects=gc.get_freeze_count())

    return send_then_freeze


def _server_span(
    scope: Scope, method: str, span_method: str, original_method: str, current_id: str
) -> tuple[trace.Span, object | None]:
    """Start our server span, or adopt the one already current (contrib outside us)."""
    current = trace.get_current_span()
    if current.is_recording() and getattr(current, "kind", None) is SpanKind.SERVER:
        current.set_attribute("request.id", current_id)
        return current, None
    parent = _parent_context(scope["headers"])
    arguments = (scope, method, original_method, current_id)
    roots = _root_spans() if parent is _NO_PARENT else None
    if roots is not None:
        span = roots.start(span_method, SpanKind.SERVER, _span_attributes, *arguments)
    else:
        attributes = _span_attributes(*arguments)
        span = _tracer.start_span(
            span_method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    return span, token


def _span_attributes(
    scope: Scope, method: str, original_method: str, current_id: str
) -> dict[str, Any]:
    """The server span's attributes at its start, where a sampler may decide on them."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
        "request.id": current_id,
    }
    if method != original_method:
        attributes["http.request.method_original"] = printable(original_method, 32)
    if scope.get("http_version"):
        attributes["network.protocol.version"] = scope["http_version"]
    return attributes


# The tracer provider in force and its root-span shortcut (None where it does not apply).
_roots: tuple[object, RootSpans | None] = (None, None)


def _root_spans() -> RootSpans | None:
    """``RootSpans`` for the global tracer provider, built again when the provider changes."""
    global _roots
    provider = trace.get_tracer_provider()
    known, roots = _roots
    if provider is not known:
        roots = RootSpans.for_provider(provider, _tracer)
        _roots = (provider, roots)
    return roots


def _error_type(error: BaseException) -> str:
    """``error.type`` as the semantic conventions spell it: the fully qualified class name."""
    cls = type(error)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


# --- instrument_fastapi / uninstrument_fastapi


@dataclass
class _Instrumentation:
    """What instrument_fastapi changed on one app, so that uninstrument_fastapi can undo it."""

    saved_builder: Callable[[], ASGIApp] | None
    saved_native: dict[str, Any]


_ATTRIBUTE = "_stackwatch_instrumentation"
_instrumented_apps: weakref.WeakSet[fastapi.FastAPI] = weakref.WeakSet()
_metrics_server_lock = threading.Lock()
_metrics_server: MetricsServer | None = None


def instrument_fastapi(app: fastapi.FastAPI) -> fastapi.FastAPI:
    """Give ``app`` request ids, one server span per request, latency metrics and /metrics.

    /metrics is served on the app (``STACKWATCH_METRICS_PATH``) unless
    ``STACKWATCH_METRICS_PORT`` is set, in which case it gets its own port; either way
    behind ``STACKWATCH_METRICS_TOKEN`` when that is set. Calling it twice is harmless;
    ``uninstrument_fastapi`` undoes it. Returns ``app``.
    """
    if getattr(app, _ATTRIBUTE, None) is not None:
        return app
    settings = get_settings()
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if settings.metrics_port is not None:
        _ensure_metrics_server(settings.metrics_port, token)
    metrics_path = None if settings.metrics_port is not None else settings.metrics_path

    saved_builder = app.__dict__.get("build_middleware_stack")
    original_builder = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return HttpTelemetryMiddleware(
            original_builder(),
            routes=lambda: app.routes,
            metrics_path=metrics_path,
            metrics_token=token,
            request_id_header=settings.request_id_header,
        )

    setattr(  # noqa: B010 - an instance attribute shadows the method, and is removable
        app, "build_middleware_stack", build_middleware_stack
    )
    setattr(app, _ATTRIBUTE, _Instrumentation(saved_builder, _switch_off_native_telemetry(app)))
    app.middleware_stack = None  # rebuilt on the next request, with our layers
    _instrumented_apps.add(app)
    instrument_httpx()
    return app


def uninstrument_fastapi(app: fastapi.FastAPI) -> fastapi.FastAPI:
    """Undo ``instrument_fastapi``: the app's middleware and native telemetry are as before."""
    instrumentation: _Instrumentation | None = getattr(app, _ATTRIBUTE, None)
    if instrumentation is None:
        return app
    if instrumentation.saved_builder is None:
        del app.build_middleware_stack
    else:
        setattr(app, "build_middleware_stack", instrumentation.saved_builder)  # noqa: B010
    native = getattr(app, "_telemetry", None)
    if isinstance(native, dict):
        native.update(instrumentation.saved_native)
    delattr(app, _ATTRIBUTE)
    app.middleware_stack = None
    _instrumented_apps.discard(app)
    if not _instrumented_apps:
        _stop_metrics_server()
    return app


def _switch_off_native_telemetry(app: fastapi.FastAPI) -> dict[str, Any]:
    """Turn off FastAPI's native telemetry (>= 0.142) on ``app``: the server span is ours.

    The values live in the ``telemetry`` dict given to ``FastAPI()``, which FastAPI
    reads on every request; the previous values are returned for uninstrument.
    """
    native = getattr(app, "_telemetry", None)
    if not isinstance(native, dict):
        return {}
    saved = {signal: native[signal] for signal in _NATIVE_SIGNALS if signal in native}
    native.update(dict.fromkeys(_NATIVE_SIGNALS, False))
    return saved


def _ensure_metrics_server(port: int, token: str | None) -> None:
    global _metrics_server
    with _metrics_server_lock:
        if _metrics_server is not None:
            return
        try:
            _metrics_server = start_metrics_server(port, token)
        except OSError as error:
            # Telemetry must not stop the app: say so once and serve requests anyway.
            _log.error("metrics server could not start", port=port, error=str(error))


def _stop_metrics_server() -> None:
    global _metrics_server
    with _metrics_server_lock:
        if _metrics_server is not None:
            _metrics_server.shutdown()
            _metrics_server = None


# --- opentelemetry-instrument: every FastAPI app built gets instrument_fastapi

_auto_instrumented_apps: weakref.WeakSet[fastapi.FastAPI] = weakref.WeakSet()


class StackwatchFastAPIInstrumentor(BaseInstrumentor):
    """Makes every ``fastapi.FastAPI`` built afterwards call ``instrument_fastapi`` on itself.

    For apps run under ``opentelemetry-instrument`` that never call it themselves; it
    replaces contrib's fastapi/asgi instrumentations, which the distro disables so that
    a request never gets two server spans.
    """

    _original: type[fastapi.FastAPI] | None = None

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        return ("fastapi >= 0.115",)

    def _instrument(self, **kwargs: Any) -> None:
        if getattr(fastapi.FastAPI, "_stackwatch_auto_instrumented", False):
            return
        # Subclass whatever FastAPI is now: should contrib's instrumentor have patched
        # it first, its class stays in the chain and ours still wraps the app last.
        base = fastapi.FastAPI

        class InstrumentedFastAPI(base):  # type: ignore[valid-type,misc]
            _stackwatch_auto_instrumented = True

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                instrument_fastapi(self)
                _auto_instrumented_apps.add(self)

        StackwatchFastAPIInstrumentor._original = base
        fastapi.FastAPI = InstrumentedFastAPI  # type: ignore[misc]

    def _uninstrument(self, **kwargs: Any) -> None:
        for app in list(_auto_instrumented_apps):
            uninstrument_fastapi(app)
        if StackwatchFastAPIInstrumentor._original is not None:
            fastapi.FastAPI = StackwatchFastAPIInstrumentor._original  # type: ignore[misc]
            StackwatchFastAPIInstrumentor._original = None
