"""Leaf spans: a database statement's span, made an SDK span only if something needs one.

A sampled statement's span is most of what stackwatch costs a fast statement: the
SDK's span is ~100k instructions to start and end (a lock, an attribute container,
two bounded lists, then a second, read-only copy of it all for the processors), and
beside a real round trip, with its objects out of the CPU's caches, ~40 us of client
CPU, as long as a bare ``SELECT 1``. Yet all that happens to a statement's span is
that it starts, ends, and on error gets a status: nothing is started under it, it is
never made current, and no processor of a standard pipeline looks at it before it
ends (``BatchSpanProcessor`` and ``SimpleSpanProcessor`` do nothing ``on_start``).

So ``LeafSpans`` starts a ``LeafSpan``: the ids, the start time and the attributes
(already valid and fixed per statement text), nothing else. Its ``end`` hands the
processors the very ``ReadableSpan`` the SDK's span would hand them, built once.
Anything else asked of it (an event, an attribute, a status, a new name) first turns
it into the SDK's own span, with the same ids and start time, and from then on the
SDK does the work. It applies only where it changes nothing a processor or exporter
can see: every processor of the provider ignores span starts, there is no attribute
limit to apply, and ``for_direct`` has checked, on a private copy of the provider,
that the ``ReadableSpan`` a leaf ends with equals the one the SDK ends with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import (
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

from stackwatch.traces import DirectSpans, private_copy

_log = logging.getLogger("stackwatch.leafspans")

# Span processors' hooks known to do nothing before a span ends.
_QUIET_STARTS = frozenset(
    {SpanProcessor.on_start, BatchSpanProcessor.on_start, SimpleSpanProcessor.on_start}
)
_QUIET_ENDINGS = frozenset(
    {SpanProcessor._on_ending, BatchSpanProcessor._on_ending, SimpleSpanProcessor._on_ending}
)
_UNSET = Status(StatusCode.UNSET)


class LeafSpans:
    """Starts ``LeafSpan``s under local sampled parents (see the module doc)."""

    def __init__(self, direct: DirectSpans) -> None:
        tracer = direct.tracer
        self._direct = direct
        self._processor = tracer.span_processor
        self._max_attributes = tracer._span_limits.max_span_attributes
        metrics = tracer._tracer_metrics
        # The SDK's own span counts (off unless its self-metrics are switched on).
        self._metrics = None if type(metrics) is NoOpTracerMetrics else metrics
        self._resource = tracer.resource
        self._scope = tracer._instrumentation_scope
        self._info = tracer.instrumentation_info
        # The processor tuple last found to ignore span starts (a new tuple on every add).
        self._quiet: tuple[SpanProcessor, ...] | None = None

    @classmethod
    def for_direct(cls, direct: DirectSpans) -> LeafSpans | None:
        """Leaf spans beside ``direct``'s, where they end exactly as the SDK's span does."""
        tracer = direct.tracer
        if not isinstance(tracer.span_processor, SynchronousMultiSpanProcessor):
            return None
        limits = tracer._span_limits
        if limits.max_span_attribute_length is not None:
            return None  # the SDK truncates values: leave it to the SDK
        try:
            if not cls._ends_what_the_sdk_ends(tracer):
                return None
        except Exception:
            _log.debug("leaf spans off: the SDK ends spans differently", exc_info=True)
            return None
        return cls(direct)

    @classmethod
    def _ends_what_the_sdk_ends(cls, tracer: SdkTracer) -> bool:
        """End a span each way, with the same ids and times, and compare what processors get.

        On a private copy of ``tracer`` whose only processor records what it is given.
        """
        exporter = InMemorySpanExporter()
        copy, _ = private_copy(tracer, SimpleSpanProcessor(exporter))
        direct = DirectSpans.for_tracer(copy) if copy is not None else None
        if direct is None or not direct.starts_children:
            return False
        leaves = cls(direct)
        parent = direct.start_root("stackwatch.probe", SpanKind.SERVER, None, 1 << 64)
        parent_context = parent.get_span_context()
        probe: dict[str, AttributeValue] = {
            "db.system": "postgresql",
            "db.statement": "SELECT 1",
            "net.peer.port": 1,
        }
        # As many as the count limit lets a leaf take (more go through the SDK).
        attributes = dict(list(probe.items())[: tracer._span_limits.max_span_attributes])
        for error in (False, True):
            theirs = direct.start_child("probe", SpanKind.CLIENT, attributes, parent_context)
            mine = leaves.start_child("probe", SpanKind.CLIENT, attributes, parent_context)
            if type(mine) is not LeafSpan:
                return False
            mine._context = theirs.get_span_context()  # the same ids
            for span in (theirs, mine):
                if error:
                    span.set_status(Status(StatusCode.ERROR, "probe"))
                span.end(end_time=2)
        exported = exporter.get_finished_spans()
        if len(exported) != 4:
            return False
        for their, my in ((exported[0], exported[1]), (exported[2], exported[3])):
            my._start_time = their._start_time  # the same times
            if _readable_fields(my) != _readable_fields(their):
                return False
        return True

    def start_child(
        self, name: str, kind: SpanKind, attributes: Mapping[str, Any], parent: SpanContext
    ) -> Span:
        """A span under ``parent``, a local sampled span's context, as ``DirectSpans`` starts it.

        ``attributes`` must be valid attribute values, not changed afterwards (a leaf
        keeps the mapping, and so does the ``ReadableSpan`` it ends with).
        """
        processors = self._processor._span_processors
        if processors is not self._quiet:
            if not _ignore_starts(processors):
                return self._direct.start_child(name, kind, attributes, parent)
            self._quiet = processors
        direct, limit = self._direct, self._max_attributes
        if not direct.enabled() or (limit is not None and len(attributes) > limit):
            return direct.start_child(name, kind, attributes, parent)
        context = direct.child_context(parent)
        metrics = self._metrics
        ended = None if metrics is None else metrics.start_span(parent, Decision.RECORD_AND_SAMPLE)
        return LeafSpan(self, name, kind, attributes, context, parent, time_ns(), ended)


def _ignore_starts(processors: Sequence[SpanProcessor]) -> bool:
    return all(
        type(p).on_start in _QUIET_STARTS and type(p)._on_ending in _QUIET_ENDINGS
        for p in processors
    )


class LeafSpan(Span):
    """A statement's span until something other than ``end`` is asked of it (see the module doc)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_ended_metrics",
        "_kind",
        "_name",
        "_parent",
        "_sdk",
        "_spans",
        "_start",
    )

    def __init__(
        self,
        spans: LeafSpans,
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        context: SpanContext,
        parent: SpanContext,
        start: int,
        ended_metrics: Callable[[], None] | None,
    ) -> None:
        self._spans = spans
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._context = context
        self._parent = parent
        self._start = start
        self._end: int | None = None
        self._ended_metrics = ended_metrics
        self._sdk: Span | None = None

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        if self._sdk is not None:
            return self._sdk.is_recording()
        return self._end is None

    def end(self, end_time: int | None = None) -> None:
        if self._sdk is not None:
            self._sdk.end(end_time)
            return
        if self._end is not None:
            _log.warning("Calling end() on an ended span.")
            return
        self._end = end = end_time if end_time is not None else time_ns()
        if self._ended_metrics is not None:
            self._ended_metrics()
        spans = self._spans
        spans._processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=spans._resource,
                attributes=self._attributes,
                kind=self._kind,
                instrumentation_info=spans._info,
                status=_UNSET,
                start_time=self._start,
                end_time=end,
                instrumentation_scope=spans._scope,
            )
        )

    def _full(self) -> Span:
        """The SDK's span for this one, made on first need (a no-op span once ended)."""
        if self._sdk is None:
            if self._end is not None:
                _log.warning("Changing an ended span: %s", self._name)
                return trace_api.NonRecordingSpan(self._context)
            self._sdk = self._spans._direct.start_child(
                self._name,
                self._kind,
                self._attributes,
                self._parent,
                context=self._context,
                start_time=self._start,
                ended_metrics=self._ended_metrics,
            )
        return self._sdk

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._full().set_attributes(attributes)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._full().set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        self._full().add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        self._full().add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self._full().update_name(name)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._full().set_status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._full().record_exception(exception, attributes, timestamp, escaped)


def _readable_fields(span: ReadableSpan) -> tuple[Any, ...]:
    """What an ended span carries to exporters, for comparing two ways of making it."""
    return (
        type(span),
        span.name,
        span.kind,
        span.context,
        span.parent,
        dict(span.attributes or {}),
        span.events,
        span.links,
        (span.status.status_code, span.status.description),
        span.start_time,
        span.end_time,
        span.resource,
        span.instrumentation_scope,
        span._instrumentation_info,
        (span.dropped_attributes, span.dropped_events, span.dropped_links),
        span.to_json(),
    )


__all__ = ["LeafSpan", "LeafSpans"]
