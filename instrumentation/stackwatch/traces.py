"""TracerProvider, Resource, sampler and exporters, built from the Settings.

Exporting is bounded and never on the request path: spans go through a
BatchSpanProcessor with a fixed-size queue to an exporter with a timeout. What
cannot be delivered is dropped, and counted in ``stackwatch_spans_dropped_total``
so a dead collector shows up on a dashboard instead of in the app's latency.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider, _Span
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    get_current_span,
)
from opentelemetry.util.types import Attributes, AttributeValue

from stackwatch import __version__
from stackwatch.metrics import telemetry_spans_dropped_total, telemetry_spans_exported_total
from stackwatch.settings import Settings, host_name

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import TraceState

_log = logging.getLogger("stackwatch.traces")


def build_resource(settings: Settings) -> Resource:
    """The Resource every span carries: service.name/version, deployment.environment, host.name.

    ``OTEL_RESOURCE_ATTRIBUTES`` supplies the base; the explicit settings win over it,
    as OpenTelemetry specifies for OTEL_SERVICE_NAME.
    """
    attributes: dict[str, str] = dict(settings.resource_attribute_map())
    environment = settings.effective_environment()
    attributes.update(
        {
            "service.name": settings.effective_service_name(),
            "service.version": settings.service_version
            or attributes.get("service.version", "unknown"),
            "deployment.environment": environment,
            "deployment.environment.name": environment,
            "host.name": attributes.get("host.name", host_name()),
            "telemetry.distro.name": "stackwatch",
            "telemetry.distro.version": __version__,
        }
    )
    return Resource.create(attributes)


class ParentBasedTraceIdRatio(Sampler):
    """``ParentBased(TraceIdRatioBased(ratio))``, the same decisions for less work per span.

    The default sampler, and it runs for every span, sampled or not. The SDK's
    composition looks the parent up twice (once to pick a delegate, once more for its
    trace state), calls through a delegate with keyword arguments and builds a
    result object per span; this looks the parent up once and shares one result for
    the common "drop, no trace state" case. Decisions are the SDK's, bit for bit:
    a valid parent's sampled flag is followed (remote or local), a root span is
    sampled when the low 64 bits of its trace id fall under ``ratio * 2**64``.
    """

    _DROP = SamplingResult(Decision.DROP)

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)  # its bound, and its description
        self._bound = self._ratio.bound

    @property
    def bound(self) -> int:
        """A root span is sampled when the low 64 bits of its trace id are under this."""
        return self._bound

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        state = None
        if parent is not None and parent.is_valid:
            sampled = parent.trace_flags.sampled
            state = parent.trace_state
        else:
            sampled = trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound
        if sampled:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        return self._DROP if state is None else SamplingResult(Decision.DROP, None, state)

    def get_description(self) -> str:
        return str(ParentBased(self._ratio).get_description())


class PresetTraceIdGenerator(RandomIdGenerator):
    """The SDK's RandomIdGenerator, except that a thread can give its next trace id.

    For ``RootSpans``, which draws a root span's trace id itself to know the sampling
    decision first, then has the SDK start a sampled span with that very id.
    """

    def __init__(self) -> None:
        self._preset = threading.local()

    def preset_trace_id(self, trace_id: int) -> None:
        """The next ``generate_trace_id`` of this thread returns ``trace_id`` (0: none)."""
        self._preset.trace_id = trace_id

    def generate_trace_id(self) -> int:
        preset = self._preset
        trace_id: int = getattr(preset, "trace_id", 0)
        if trace_id:
            preset.trace_id = 0
            return trace_id
        return super().generate_trace_id()


_NO_CONTEXT = otel_context.Context()
# A sampled child's flags, by the parent's random-trace-id bit.
_CHILD_FLAGS = (
    TraceFlags(TraceFlags.SAMPLED),
    TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID),
)


class DirectSpans:
    """Starts the SDK's own recording spans for a decision already taken, without ``start_span``.

    ``Tracer.start_span`` spends a quarter of a sampled span's cost (measured: 20 ->
    15 us a span) before the span exists: it looks the parent up, checks the
    tracer's configuration, asks the sampler, builds flag objects twice. Where
    stackwatch already knows the answer (a root span whose trace id it drew and
    sampled, a child of a local sampled span under stackwatch's parent-based
    sampler), this builds the very span ``start_span`` would build (the SDK's span
    class, the tracer's resource, processor, limits and scope, the same flags and
    trace state) and starts it, so processors and exporters see nothing different.

    Attributes given here must already be valid attribute values (str, bool, int,
    float, or sequences of one of those, as stackwatch builds them or as the SDK
    cleaned them once): they are added to the span without the SDK validating each
    value again, which is half the cost of a span with a handful of attributes. With
    a value length limit configured (``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``), or no
    room left under the count limit, the SDK's own path runs.

    The SDK's span constructor and attribute container are not public API:
    ``for_tracer`` starts spans each way with the same ids and attributes, compares
    them, and returns None (callers then use the tracer) when they differ in
    anything, or when building one fails.
    """

    def __init__(self, tracer: SdkTracer, ids: IdGenerator) -> None:
        self._tracer = tracer
        self._ids = ids
        self._random_flag = TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else 0
        # stackwatch's sampler samples what a sampled parent samples, with its trace state.
        self.starts_children = type(tracer.sampler) is ParentBasedTraceIdRatio
        # A tracer can be switched off after it was made (the SDK's tracer configurator).
        self.enabled: Callable[[], bool] = getattr(tracer, "_is_enabled", lambda: True)

    @property
    def tracer(self) -> SdkTracer:
        return self._tracer

    @classmethod
    def for_tracer(cls, tracer: Tracer) -> DirectSpans | None:
        """Direct starts for ``tracer`` (or the SDK tracer behind a proxy); None where unsafe."""
        tracer = getattr(tracer, "_real_tracer", None) or tracer
        if type(tracer) is not SdkTracer or type(tracer.id_generator) is not PresetTraceIdGenerator:
            return None
        try:
            if not cls._starts_what_the_sdk_starts(tracer):
                return None
        except Exception:
            _log.debug("direct span starts off: the SDK builds spans differently", exc_info=True)
            return None
        return cls(tracer, tracer.id_generator)

    @classmethod
    def _starts_what_the_sdk_starts(cls, tracer: SdkTracer) -> bool:
        """Start a root and a child each way, with the same ids, and compare them.

        On a private copy of ``tracer`` (same sampler, resource, limits and scope, but
        no span processor), so that no processor of the application sees the probes.
        """
        copy, ids = private_copy(tracer)
        if copy is None:
            return False
        direct = cls(copy, ids)
        name, attributes = "stackwatch.direct_spans_probe", {"stackwatch.probe": 1}
        trace_id = 1 << 64  # low 64 bits zero: under every ratio but 0
        ids.preset_trace_id(trace_id)
        try:
            theirs = copy.start_span(
                name, context=_NO_CONTEXT, kind=SpanKind.SERVER, attributes=attributes
            )
        finally:
            ids.preset_trace_id(0)
        if not isinstance(theirs, _Span):
            return False  # not recorded: nothing to start directly
        mine = direct.start_root(name, SpanKind.SERVER, attributes, trace_id)
        later: dict[str, AttributeValue] = {
            "stackwatch.probe.status": 200,
            "stackwatch.probe.route": "/probe/{id}",
        }
        direct.set_attributes(mine, later)
        theirs.set_attributes(later)
        if _span_fields(mine) != _span_fields(theirs):
            return False
        if not direct.starts_children:
            return True
        parent = trace_api.set_span_in_context(theirs)
        their_child = copy.start_span(name, context=parent, attributes=attributes)
        my_child = direct.start_child(
            name, SpanKind.INTERNAL, attributes, theirs.get_span_context(), parent
        )
        return _span_fields(my_child) == _span_fields(their_child)

    def start_root(self, name: str, kind: SpanKind, attributes: Attributes, trace_id: int) -> Span:
        """The sampled root span ``start_span`` would start for ``trace_id``."""
        flags = TraceFlags(TraceFlags.SAMPLED | self._random_flag)
        context = SpanContext(trace_id, self._ids.generate_span_id(), False, flags)
        return self._start(name, kind, attributes, context, None, _NO_CONTEXT)

    def start_child(
        self,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        parent: SpanContext,
        parent_context: Context | None = None,
        *,
        context: SpanContext | None = None,
        start_time: int | None = None,
        ended_metrics: Callable[[], None] | None = None,
    ) -> Span:
        """The span ``start_span`` would start under ``parent``, a local sampled span's context.

        Only where ``starts_children`` is true: the provider's sampler is stackwatch's
        ``ParentBasedTraceIdRatio``, which samples what a sampled parent samples and
        keeps its trace state. The caller checks that, and that ``parent`` is sampled.
        ``context``, ``start_time`` and ``ended_metrics`` are for a span that already
        began as a ``LeafSpan``: its ids, its start, its count in the SDK's metrics.
        """
        if context is None:
            context = self.child_context(parent)
        return self._start(
            name, kind, attributes, context, parent, parent_context, start_time, ended_metrics
        )

    def child_context(self, parent: SpanContext) -> SpanContext:
        """A new span's context under ``parent`` (a local sampled span's), as the SDK
        makes it: the parent's trace and trace state, sampled, its random-trace-id bit."""
        flags = _CHILD_FLAGS[parent.trace_flags & TraceFlags.RANDOM_TRACE_ID != 0]
        return SpanContext(
            parent.trace_id, self._ids.generate_span_id(), False, flags, parent.trace_state
        )

    def _start(
        self,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        context: SpanContext,
        parent: SpanContext | None,
        parent_context: Context | None,
        start_time: int | None = None,
        ended_metrics: Callable[[], None] | None = None,
    ) -> Span:
        if not self.enabled():
            # What start_span returns for a disabled tracer: the parent's context.
            return NonRecordingSpan(parent if parent is not None else INVALID_SPAN_CONTEXT)
        tracer = self._tracer
        span = _Span(
            name=name,
            context=context,
            parent=parent,
            sampler=tracer.sampler,
            resource=tracer.resource,
            attributes=None,
            span_processor=tracer.span_processor,
            kind=kind,
            links=(),
            instrumentation_info=tracer.instrumentation_info,
            limits=tracer._span_limits,
            instrumentation_scope=tracer._instrumentation_scope,
            record_end_metrics=ended_metrics
            or tracer._tracer_metrics.start_span(parent, Decision.RECORD_AND_SAMPLE),
        )
        if attributes and not _add_checked_attributes(span, attributes):
            span.set_attributes(attributes)
        span.start(start_time=start_time, parent_context=parent_context)
        return span

    def set_attributes(self, span: Span, attributes: Mapping[str, AttributeValue]) -> None:
        """``span.set_attributes(attributes)`` for attributes already valid (see the class doc)."""
        if type(span) is not _Span or not _add_checked_attributes(span, attributes):
            span.set_attributes(attributes)


def private_copy(
    tracer: SdkTracer, processor: SpanProcessor | None = None
) -> tuple[SdkTracer | None, PresetTraceIdGenerator]:
    """A tracer like ``tracer`` (sampler, resource, limits, scope) on a provider of its own.

    For self-checks that start spans: no processor of the application sees them, only
    ``processor`` if given. Ids come from the returned generator, so they can be preset.
    None for the tracer where the SDK does not give an SDK tracer.
    """
    ids = PresetTraceIdGenerator()
    scope = tracer._instrumentation_scope
    provider = TracerProvider(
        sampler=tracer.sampler,
        resource=tracer.resource,
        id_generator=ids,
        span_limits=tracer._span_limits,
        shutdown_on_exit=False,
    )
    if processor is not None:
        provider.add_span_processor(processor)
    copy = provider.get_tracer(scope.name, scope.version, scope.schema_url, scope.attributes)
    return (copy if type(copy) is SdkTracer else None), ids


def _add_checked_attributes(span: _Span, attributes: Mapping[str, AttributeValue]) -> bool:
    """Add valid attributes to ``span`` as ``set_attributes`` would, without validating them again.

    False, with nothing added, where the SDK's own path must run: a value length limit
    to apply, no room left under the attribute count limit (the SDK then evicts the
    oldest), or a span already ended (the SDK then warns).
    """
    bounded = span._attributes
    if not isinstance(bounded, BoundedAttributes) or bounded.max_value_len is not None:
        return False
    with span._lock:
        if span._end_time is not None:
            return False
        with bounded._lock:
            values = bounded._dict
            if bounded.maxlen is not None and len(values) + len(attributes) > bounded.maxlen:
                return False
            values.update(attributes)
    return True


def _span_fields(span: Span) -> tuple[Any, ...]:
    """What a started span carries, ids aside, for comparing two ways of starting it."""
    context = span.get_span_context()
    return (
        type(span),
        span.name if isinstance(span, ReadableSpan) else None,
        getattr(span, "kind", None),
        context.trace_id,
        context.trace_flags,
        context.trace_state,
        context.is_remote,
        getattr(span, "parent", None),
        dict(getattr(span, "attributes", None) or {}),
        getattr(span, "resource", None),
        getattr(span, "instrumentation_scope", None),
        type(getattr(span, "_span_processor", None)),
        getattr(span, "_limits", None),
        getattr(span, "_sampler", None),
        (getattr(span, "_record_exception", None), getattr(span, "_set_status_on_exception", None)),
        getattr(span, "start_time", None) is not None,
        span.is_recording(),
    )


class RootSpans:
    """Starts root spans (no parent) of stackwatch's provider, with a decision taken up front.

    Most requests of an edge service arrive without a ``traceparent`` and, at a
    ratio under 1, most of them are not sampled. For those the SDK's ``start_span``
    looks the parent up, checks the tracer's configuration, calls the sampler,
    builds flag objects and counts the span before it wraps a fresh SpanContext in a
    NonRecordingSpan: three times the instructions of building that span alone
    (measured with callgrind). Here the trace id is drawn first and the ratio
    applied to it exactly as ``ParentBasedTraceIdRatio`` does; a dropped span is
    that SpanContext in a NonRecordingSpan, with the flags and trace state the SDK
    gives its own unsampled root spans (asked of the SDK once, when this is built);
    a sampled one is the SDK's span with the same trace id, started by
    ``DirectSpans`` (or by the SDK with that id preset, where ``DirectSpans`` does
    not apply), so its decision is the same.

    Only for a provider built by stackwatch (its id generator and ratio sampler);
    ``for_provider`` returns None for any other, and callers then use the tracer.
    """

    def __init__(
        self,
        tracer: Tracer,
        ids: PresetTraceIdGenerator,
        bound: int,
        flags: TraceFlags | None,
        direct: DirectSpans | None,
    ) -> None:
        self._tracer = tracer
        self._ids = ids
        self._bound = bound
        self._unsampled_flags = flags
        self._direct = direct

    @classmethod
    def for_provider(cls, provider: object, tracer: Tracer) -> RootSpans | None:
        """The shortcut for ``provider`` and its ``tracer``; None where it does not apply."""
        if not isinstance(provider, TracerProvider):
            return None
        return cls._for(provider.id_generator, provider.sampler, tracer)

    @classmethod
    def for_tracer(cls, tracer: Tracer) -> RootSpans | None:
        """The shortcut for an SDK tracer (or the one behind a proxy), from its own
        sampler and id generator; None where it does not apply."""
        real = getattr(tracer, "_real_tracer", None) or tracer
        if type(real) is not SdkTracer:
            return None
        return cls._for(real.id_generator, real.sampler, real)

    @classmethod
    def _for(cls, ids: object, sampler: object, tracer: Tracer) -> RootSpans | None:
        if not isinstance(ids, PresetTraceIdGenerator):
            return None
        if type(sampler) is not ParentBasedTraceIdRatio:
            return None
        bound = sampler.bound
        unsampled_flags = None
        if bound > TraceIdRatioBased.TRACE_ID_LIMIT:
            # Ratio 1: nothing is dropped, so there is nothing to ask the SDK (its probe
            # would be a sampled span, started in front of the application's processors).
            real = getattr(tracer, "_real_tracer", None) or tracer
            drawn_from: object = getattr(real, "id_generator", None)
            if drawn_from is not ids:
                return None  # a tracer that does not draw from this generator
        else:
            # Ask the SDK for an unsampled root span: low 64 bits all ones are never under
            # the bound, and an unsampled span reaches no processor.
            probe_id = TraceIdRatioBased.TRACE_ID_LIMIT
            ids.preset_trace_id(probe_id)
            try:
                probe = tracer.start_span("stackwatch.root_spans_probe", context=_NO_CONTEXT)
            finally:
                ids.preset_trace_id(0)
            probe_context = probe.get_span_context()
            if probe_context is None or probe_context.trace_id != probe_id:
                return None  # a tracer that does not draw from this generator
            if probe.is_recording() or probe_context.trace_state:
                # A tracer switched off, a sampler that records dropped spans: the SDK
                # decides. A recording probe is left unended, so that it is never exported.
                return None
            unsampled_flags = probe_context.trace_flags
        direct = DirectSpans.for_tracer(tracer) if bound > 0 else None
        return cls(tracer, ids, bound, unsampled_flags, direct)

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: Callable[..., Mapping[str, Any]],
        *arguments: Any,
    ) -> Span:
        """A root span named ``name``; ``attributes(*arguments)`` is called for sampled ones."""
        ids = self._ids
        # The SDK's own draw, without this generator's preset check (that is for the
        # sampled spans below).
        trace_id = RandomIdGenerator.generate_trace_id(ids)
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT >= self._bound:
            context = SpanContext(trace_id, ids.generate_span_id(), False, self._unsampled_flags)
            return NonRecordingSpan(context)
        direct = self._direct
        if direct is not None:
            return direct.start_root(name, kind, attributes(*arguments), trace_id)
        ids.preset_trace_id(trace_id)
        try:
            return self._tracer.start_span(
                name, context=_NO_CONTEXT, kind=kind, attributes=attributes(*arguments)
            )
        finally:
            ids.preset_trace_id(0)  # left set only if the SDK did not draw an id

    def set_attributes(self, span: Span, attributes: Mapping[str, AttributeValue]) -> None:
        """``span.set_attributes(attributes)``, the cheaper way for valid attributes."""
        if self._direct is None:
            span.set_attributes(attributes)
        else:
            self._direct.set_attributes(span, attributes)


def build_sampler(settings: Settings) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER names, with OTEL_TRACES_SAMPLER_ARG as the ratio."""
    ratio = TraceIdRatioBased(settings.traces_sampler_arg)
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBasedTraceIdRatio(settings.traces_sampler_arg),
    }
    return samplers[settings.traces_sampler]


class CountingSpanExporter(SpanExporter):
    """Wraps an exporter to count what it delivered and what it lost.

    An exporter that raises is treated like one that returned FAILURE: the spans are
    counted as dropped and the exception never reaches the batch worker's loop.
    """

    def __init__(self, delegate: SpanExporter) -> None:
        self.delegate = delegate

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.delegate.export(spans)
        except Exception:
            _log.warning("span export raised; %d spans dropped", len(spans), exc_info=True)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            telemetry_spans_exported_total.inc(len(spans))
        else:
            telemetry_spans_dropped_total.labels(reason="export_failed").inc(len(spans))
        return result

    def shutdown(self) -> None:
        self.delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.delegate.force_flush(timeout_millis)


class _DropCountingProcessorMetrics:
    """Receives the batch processor's drop notifications (queue full, after shutdown)."""

    def register_queue_size(self, get_queue_size: object) -> None:
        """Queue size is not exported; the drop counter is what matters."""

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        telemetry_spans_dropped_total.labels(reason=error_type).inc(count)

    def finish_items(self, count: int) -> None:
        """Delivery is counted by CountingSpanExporter, after the exporter answered."""


def build_exporter(settings: Settings) -> SpanExporter | None:
    """The span exporter OTEL_TRACES_EXPORTER asks for, or None for ``none``."""
    if settings.traces_exporter == "none":
        return None
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter(service_name=settings.effective_service_name())
    endpoint = settings.traces_endpoint()
    headers = settings.otlp_header_map()
    timeout = settings.otlp_timeout_s
    if settings.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=endpoint,
            insecure=urlsplit(endpoint).scheme != "https",
            headers=headers or None,
            timeout=timeout,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=endpoint, headers=headers or None, timeout=timeout)


def build_span_processor(exporter: SpanExporter, settings: Settings) -> BatchSpanProcessor:
    """A bounded batch processor whose drops are counted."""
    processor = BatchSpanProcessor(
        CountingSpanExporter(exporter),
        max_queue_size=settings.bsp_max_queue_size,
        schedule_delay_millis=settings.bsp_schedule_delay_ms,
        max_export_batch_size=min(settings.bsp_max_export_batch_size, settings.bsp_max_queue_size),
        export_timeout_millis=settings.otlp_timeout_s * 1000,
    )
    # The SDK reports queue-full drops through this hook only when its own internal
    # metrics are enabled; plugging ours in keeps the count in Prometheus.
    batch = getattr(processor, "_batch_processor", None)
    if batch is not None and hasattr(batch, "_metrics"):
        batch._metrics = _DropCountingProcessorMetrics()
    return processor


def build_tracer_provider(settings: Settings) -> TracerProvider:
    """A TracerProvider with our resource, sampler and (unless ``none``) exporter."""
    provider = TracerProvider(
        resource=build_resource(settings),
        sampler=build_sampler(settings),
        id_generator=PresetTraceIdGenerator(),
    )
    exporter = build_exporter(settings)
    if exporter is not None:
        provider.add_span_processor(build_span_processor(exporter, settings))
    return provider
