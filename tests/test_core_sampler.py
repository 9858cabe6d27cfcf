"""stackwatch's default sampler and root-span shortcut decide exactly as the SDK does."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider, _Span, _TracerConfig
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from stackwatch import leafspans, traces
from stackwatch.leafspans import LeafSpan, LeafSpans
from stackwatch.settings import Settings
from stackwatch.traces import (
    DirectSpans,
    ParentBasedTraceIdRatio,
    PresetTraceIdGenerator,
    RootSpans,
    build_sampler,
)


def _parent(sampled: bool, remote: bool, state: TraceState | None) -> object:
    context = SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=remote,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
        trace_state=state,
    )
    return trace.set_span_in_context(NonRecordingSpan(context))


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_decisions_attributes_and_trace_state_match_the_sdk(ratio: float) -> None:
    ours, sdk = ParentBasedTraceIdRatio(ratio), ParentBased(TraceIdRatioBased(ratio))
    rng = random.Random(7)
    random.seed(7)
    parents = [
        None,
        *(
            _parent(s, r, t)
            for s in (True, False)
            for r in (True, False)
            for t in (None, TraceState([("vendor", "v1")]))
        ),
    ]
    decisions = set()
    for _ in range(4000):
        parent = rng.choice(parents)
        trace_id = rng.getrandbits(128)
        attributes = {"http.request.method": "GET"}
        mine = ours.should_sample(parent, trace_id, "GET /x", attributes=attributes)  # type: ignore[arg-type]
        theirs = sdk.should_sample(parent, trace_id, "GET /x", attributes=attributes)  # type: ignore[arg-type]
        assert mine.decision is theirs.decision
        assert dict(mine.attributes) == dict(theirs.attributes)
        assert mine.trace_state == theirs.trace_state
        decisions.add(mine.decision)
    if 0 < ratio < 1:
        assert decisions == {Decision.DROP, Decision.RECORD_AND_SAMPLE}
    assert ours.get_description() == sdk.get_description()


def test_it_is_the_default_and_other_names_keep_the_sdk_samplers() -> None:
    assert isinstance(build_sampler(Settings(traces_sampler_arg=0.25)), ParentBasedTraceIdRatio)
    assert isinstance(build_sampler(Settings(traces_sampler="parentbased_always_on")), ParentBased)


# --- RootSpans: unsampled root spans built without the SDK, sampled ones by it


def _our_provider(ratio: float) -> TracerProvider:
    """A provider as stackwatch builds it (its id generator, its ratio sampler); no exporter."""
    return TracerProvider(
        sampler=ParentBasedTraceIdRatio(ratio), id_generator=PresetTraceIdGenerator()
    )


def _attributes(path: str) -> dict[str, str]:
    return {"url.path": path}


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5, 1.0])
def test_root_spans_are_the_spans_the_sdk_starts_for_the_same_trace_id(ratio: float) -> None:
    provider = _our_provider(ratio)
    tracer = provider.get_tracer("test")
    roots = RootSpans.for_provider(provider, tracer)
    assert roots is not None
    random.seed(11)
    recording = 0
    for _ in range(2000):
        ours = roots.start("GET", SpanKind.SERVER, _attributes, "/x")
        mine = ours.get_span_context()
        provider.id_generator.preset_trace_id(mine.trace_id)  # type: ignore[attr-defined]
        theirs = tracer.start_span("GET", context=Context(), kind=SpanKind.SERVER)
        sdk = theirs.get_span_context()
        assert ours.is_recording() == theirs.is_recording()
        assert sdk.trace_id == mine.trace_id
        assert (mine.trace_flags, mine.trace_state, mine.is_remote) == (
            sdk.trace_flags,
            sdk.trace_state,
            sdk.is_remote,
        )
        assert mine.is_valid
        recording += ours.is_recording()
        for span in (ours, theirs):
            span.end()
    if ratio == 0:
        assert recording == 0
    elif ratio == 1:
        assert recording == 2000
    else:
        assert 0 < recording < 2000


def test_root_spans_sample_at_the_ratio_and_build_attributes_only_for_sampled_ones() -> None:
    provider = _our_provider(0.1)
    roots = RootSpans.for_provider(provider, provider.get_tracer("test"))
    assert roots is not None
    built: list[str] = []

    def attributes(path: str) -> dict[str, str]:
        built.append(path)
        return {"url.path": path}

    spans = [roots.start("GET", SpanKind.SERVER, attributes, "/x") for _ in range(20_000)]
    sampled = [span for span in spans if span.is_recording()]
    # Decided once, on the trace id: a second draw by the SDK would sample 1 % here.
    assert 0.09 < len(sampled) / len(spans) < 0.11
    assert len(built) == len(sampled)
    assert all(span.attributes == {"url.path": "/x"} for span in sampled)  # type: ignore[attr-defined]
    assert len({span.get_span_context().trace_id for span in spans}) == len(spans)
    # The preset never outlives the start it was for: the next SDK root has an id of its own.
    after = provider.get_tracer("test").start_span("next", context=Context())
    assert after.get_span_context().trace_id not in {s.get_span_context().trace_id for s in spans}


def test_root_spans_apply_only_to_stackwatch_providers() -> None:
    sdk_ids = TracerProvider(sampler=ParentBasedTraceIdRatio(0.1))  # RandomIdGenerator
    sdk_sampler = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(0.1)), id_generator=PresetTraceIdGenerator()
    )
    for provider in (sdk_ids, sdk_sampler, trace.NoOpTracerProvider()):
        assert RootSpans.for_provider(provider, provider.get_tracer("test")) is None
    for ratio in (0.1, 1.0):
        ours = _our_provider(ratio)
        assert RootSpans.for_provider(ours, ours.get_tracer("test")) is not None
    # A tracer that does not draw from this generator is refused (at ratio 1 too, where
    # the SDK is not asked).
    for ratio in (0.1, 1.0):
        ours = _our_provider(ratio)
        assert RootSpans.for_provider(ours, _our_provider(ratio).get_tracer("test")) is None


# --- DirectSpans: sampled spans started without Tracer.start_span, exported the same


class _WatchingStarts(SimpleSpanProcessor):
    """An application's processor that looks at spans when they start."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        super().__init__(exporter)
        self.started: list[str] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append(span.name)


def _exported_provider(
    sampler: object, limits: SpanLimits | None = None
) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(
        sampler=sampler,  # type: ignore[arg-type]
        id_generator=PresetTraceIdGenerator(),
        resource=Resource.create({"service.name": "direct-spans"}),
        span_limits=limits,
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _as_exported(span: ReadableSpan) -> dict[str, object]:
    """Everything an exporter reads of a span, but the span id and the clock."""
    return {
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.context.trace_id,
        "flags": span.context.trace_flags,
        "state": span.context.trace_state,
        "remote": span.context.is_remote,
        "parent": span.parent,
        "attributes": dict(span.attributes or {}),
        "events": [(event.name, dict(event.attributes or {})) for event in span.events],
        "links": list(span.links),
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
        "ended_after_start": span.end_time >= span.start_time,  # type: ignore[operator]
    }


def _use(span: Span, direct: DirectSpans | None = None) -> None:
    """What the HTTP layer does with a server span before it ends it."""
    attributes = {"http.response.status_code": 500, "http.route": "/items/{item_id}"}
    if direct is None:
        span.set_attributes(attributes)
    else:
        direct.set_attributes(span, attributes)
    span.update_name("GET /items/{item_id}")
    span.record_exception(ValueError("boom"))
    span.set_status(Status(StatusCode.ERROR))
    span.end()


def test_direct_root_and_child_spans_export_exactly_what_the_sdk_exports() -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    tracer = provider.get_tracer("test", "1.0")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    assert direct.starts_children
    ids: PresetTraceIdGenerator = provider.id_generator  # type: ignore[assignment]
    attributes = {"url.path": "/items/42", "request.id": "abc", "http.request.method": "GET"}
    for _ in range(50):
        trace_id = random.getrandbits(128) or 1
        exporter.clear()
        mine = direct.start_root("GET", SpanKind.SERVER, attributes, trace_id)
        ids.preset_trace_id(trace_id)
        theirs = tracer.start_span(
            "GET", context=Context(), kind=SpanKind.SERVER, attributes=attributes
        )
        ids.preset_trace_id(0)
        for parent in (mine, theirs):
            parent_context = parent.get_span_context()
            state = TraceState([("vendor", "v1")])
            # A parent with a trace state, as a remote caller's would give it.
            parent_context = SpanContext(
                parent_context.trace_id,
                parent_context.span_id,
                False,
                parent_context.trace_flags,
                state,
            )
            child_attributes = {"db.system": "postgresql", "db.statement": "SELECT 1"}
            my_child = direct.start_child(
                "SELECT", SpanKind.CLIENT, child_attributes, parent_context
            )
            their_child = tracer.start_span(
                "SELECT",
                context=trace.set_span_in_context(NonRecordingSpan(parent_context)),
                kind=SpanKind.CLIENT,
                attributes=child_attributes,
            )
            my_child.end()
            their_child.end()
        _use(mine, direct)
        _use(theirs)
        spans = exporter.get_finished_spans()
        assert len(spans) == 6
        children_of_mine, children_of_theirs, root_mine, root_theirs = (
            spans[0:2],
            spans[2:4],
            spans[4],
            spans[5],
        )
        assert _as_exported(root_mine) == _as_exported(root_theirs)
        assert root_mine.context.span_id != root_theirs.context.span_id
        for pair in (children_of_mine, children_of_theirs):
            assert _as_exported(pair[0]) == _as_exported(pair[1])
            assert pair[0].parent is not None


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(max_span_attribute_length=4),
        SpanLimits(max_span_attributes=5),
        SpanLimits(max_span_attributes=0),
    ],
    ids=["value length limit", "count limit", "no attributes"],
)
def test_direct_spans_apply_the_sdks_attribute_limits(limits: SpanLimits) -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0), limits)
    tracer = provider.get_tracer("test")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    ids: PresetTraceIdGenerator = provider.id_generator  # type: ignore[assignment]
    attributes = {"url.path": "/items/42", "request.id": "abcdef", "http.request.method": "GET"}
    trace_id = random.getrandbits(128) or 1
    mine = direct.start_root("GET", SpanKind.SERVER, attributes, trace_id)
    ids.preset_trace_id(trace_id)
    theirs = tracer.start_span(
        "GET", context=Context(), kind=SpanKind.SERVER, attributes=attributes
    )
    _use(mine, direct)
    _use(theirs)
    mine_exported, theirs_exported = exporter.get_finished_spans()
    assert _as_exported(mine_exported) == _as_exported(theirs_exported)
    assert mine_exported.dropped_attributes == theirs_exported.dropped_attributes
    if limits.max_span_attribute_length == 4:
        assert mine_exported.attributes["url.path"] == "/ite"  # type: ignore[index]


def test_a_tracer_switched_off_later_gets_no_direct_spans() -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    tracer = provider.get_tracer("test")
    direct = DirectSpans.for_tracer(tracer)
    assert direct is not None
    tracer._set_tracer_config(_TracerConfig(is_enabled=False))  # type: ignore[attr-defined]
    root = direct.start_root("GET", SpanKind.SERVER, {"url.path": "/x"}, 12345)
    parent = SpanContext(12345, 678, False, TraceFlags(TraceFlags.SAMPLED))
    child = direct.start_child("SELECT", SpanKind.CLIENT, {}, parent)
    assert not root.is_recording()
    assert not child.is_recording()
    assert child.get_span_context() == parent
    assert not root.get_span_context().is_valid
    root.end()
    child.end()
    assert exporter.get_finished_spans() == ()


def test_direct_attributes_are_not_added_to_an_ended_span() -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    direct = DirectSpans.for_tracer(provider.get_tracer("test"))
    assert direct is not None
    span = direct.start_root("GET", SpanKind.SERVER, {"url.path": "/x"}, 12345)
    span.end()
    direct.set_attributes(span, {"http.route": "/late"})
    (exported,) = exporter.get_finished_spans()
    assert dict(exported.attributes or {}) == {"url.path": "/x"}


def test_direct_spans_apply_only_where_the_sdk_would_start_the_same_span() -> None:
    sdk_ids = TracerProvider(sampler=ParentBasedTraceIdRatio(1.0))  # RandomIdGenerator
    assert DirectSpans.for_tracer(sdk_ids.get_tracer("test")) is None
    assert DirectSpans.for_tracer(trace.NoOpTracerProvider().get_tracer("test")) is None
    # A sampler that does not follow the parent: roots may go direct, children may not.
    other, _ = _exported_provider(ParentBased(TraceIdRatioBased(1.0)))
    direct = DirectSpans.for_tracer(other.get_tracer("test"))
    assert direct is not None
    assert not direct.starts_children
    # Nothing is recorded: the SDK's probe is not a span, and the shortcut is refused.
    off, _ = _exported_provider(ParentBasedTraceIdRatio(0.0))
    assert DirectSpans.for_tracer(off.get_tracer("test")) is None


def test_direct_spans_step_aside_when_the_sdk_builds_its_spans_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A future SDK whose span constructor changed: the self-check refuses, the SDK starts spans."""

    class Renamed(_Span):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["name"] = "something else"
            super().__init__(*args, **kwargs)

    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    monkeypatch.setattr(traces, "_Span", Renamed)
    assert DirectSpans.for_tracer(provider.get_tracer("test")) is None

    def incompatible(*args: Any, **kwargs: Any) -> None:
        raise TypeError("unexpected keyword argument 'record_end_metrics'")

    monkeypatch.setattr(traces, "_Span", incompatible)
    assert DirectSpans.for_tracer(provider.get_tracer("test")) is None
    roots = RootSpans.for_provider(provider, provider.get_tracer("test"))
    assert roots is not None
    span = roots.start("GET", SpanKind.SERVER, _attributes, "/x")
    span.end()
    assert [s.name for s in exporter.get_finished_spans()] == ["GET"]


@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_the_self_check_starts_no_span_the_application_can_see(ratio: float) -> None:
    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(ratio), id_generator=PresetTraceIdGenerator()
    )
    exporter = InMemorySpanExporter()
    watching = _WatchingStarts(exporter)
    started = watching.started
    provider.add_span_processor(watching)
    tracer = provider.get_tracer("test")
    roots = RootSpans.for_provider(provider, tracer)
    assert roots is not None
    assert DirectSpans.for_tracer(tracer) is not None
    assert started == []
    provider.force_flush()
    assert exporter.get_finished_spans() == ()


# --- LeafSpans: statement spans that stay light until something but end is asked of them


def _leaves(provider: TracerProvider) -> tuple[DirectSpans, LeafSpans]:
    direct = DirectSpans.for_tracer(provider.get_tracer("test", "1.0"))
    assert direct is not None
    leaves = LeafSpans.for_direct(direct)
    assert leaves is not None
    return direct, leaves


def _parent_context(state: TraceState | None = None, random_id: bool = True) -> SpanContext:
    flags = TraceFlags.SAMPLED | (TraceFlags.RANDOM_TRACE_ID if random_id else 0)
    return SpanContext(
        random.getrandbits(128) or 1, random.getrandbits(64) or 1, False, TraceFlags(flags), state
    )


def test_leaf_spans_export_exactly_what_the_sdk_exports() -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    direct, leaves = _leaves(provider)
    attributes = {"db.system": "postgresql", "db.statement": "SELECT 1", "net.peer.port": 5432}
    for state, random_id in [(None, True), (TraceState([("vendor", "v1")]), False)]:
        exporter.clear()
        parent = _parent_context(state, random_id)
        mine = leaves.start_child("SELECT db", SpanKind.CLIENT, attributes, parent)
        theirs = direct.start_child("SELECT db", SpanKind.CLIENT, attributes, parent)
        assert type(mine) is LeafSpan
        assert mine.is_recording()
        mine.end()
        theirs.end()
        assert not mine.is_recording()
        mine_exported, theirs_exported = exporter.get_finished_spans()
        assert _as_exported(mine_exported) == _as_exported(theirs_exported)
        assert mine_exported.context == mine.get_span_context()
        assert mine_exported.context.span_id != theirs_exported.context.span_id
        # What an exporter writes, ids and clock aside, to the last character.
        for exported in (mine_exported, theirs_exported):
            exported._context = theirs_exported.context
            exported._start_time, exported._end_time = 1, 2
        assert mine_exported.to_json() == theirs_exported.to_json()
        assert encode_spans([mine_exported]) == encode_spans([theirs_exported])  # OTLP


def test_anything_but_end_makes_a_leaf_the_sdks_span_with_its_ids_and_start() -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    direct, leaves = _leaves(provider)
    parent = _parent_context()
    error = ValueError("boom")

    def use(span: Span) -> None:
        span.set_attribute("db.rows", 3)
        span.add_event("retry", {"attempt": 2}, timestamp=5)
        span.record_exception(error, timestamp=6)
        span.set_status(Status(StatusCode.ERROR, "boom"))
        span.update_name("SELECT other")
        span.end()

    mine = leaves.start_child("SELECT db", SpanKind.CLIENT, {"db.system": "postgresql"}, parent)
    theirs = direct.start_child("SELECT db", SpanKind.CLIENT, {"db.system": "postgresql"}, parent)
    started = mine._start
    use(mine)
    use(theirs)
    mine_exported, theirs_exported = exporter.get_finished_spans()
    assert _as_exported(mine_exported) == _as_exported(theirs_exported)
    assert mine_exported.status.description == "boom"
    assert [event.name for event in mine_exported.events] == ["retry", "exception"]
    assert mine_exported.context == mine.get_span_context()
    assert mine_exported.start_time == started


def test_a_leaf_ends_once_and_is_not_changed_after_it_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    _, leaves = _leaves(provider)
    span = leaves.start_child("SELECT db", SpanKind.CLIENT, {"db.system": "x"}, _parent_context())
    span.end()
    span.end()
    span.set_attribute("late", 1)
    span.set_status(Status(StatusCode.ERROR))
    (exported,) = exporter.get_finished_spans()
    assert dict(exported.attributes or {}) == {"db.system": "x"}
    assert exported.status.status_code is StatusCode.UNSET
    assert "Calling end() on an ended span." in caplog.text
    assert "Changing an ended span" in caplog.text


def test_a_processor_that_watches_span_starts_gets_the_sdks_spans_even_added_later() -> None:
    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    _, leaves = _leaves(provider)
    parent = _parent_context()
    assert type(leaves.start_child("A", SpanKind.CLIENT, {}, parent)) is LeafSpan
    watching = _WatchingStarts(InMemorySpanExporter())
    started = watching.started
    provider.add_span_processor(watching)
    span = leaves.start_child("B", SpanKind.CLIENT, {}, parent)
    assert type(span) is not LeafSpan
    assert isinstance(span, _Span)
    assert started == ["B"]
    span.end()
    assert [s.name for s in exporter.get_finished_spans()] == ["B"]


def test_leaf_spans_leave_attribute_limits_and_switched_off_tracers_to_the_sdk() -> None:
    truncating, _ = _exported_provider(
        ParentBasedTraceIdRatio(1.0), SpanLimits(max_span_attribute_length=4)
    )
    direct = DirectSpans.for_tracer(truncating.get_tracer("test"))
    assert direct is not None
    assert LeafSpans.for_direct(direct) is None

    counting, exporter = _exported_provider(
        ParentBasedTraceIdRatio(1.0), SpanLimits(max_span_attributes=2)
    )
    _, leaves = _leaves(counting)
    span = leaves.start_child("A", SpanKind.CLIENT, {"a": 1, "b": 2, "c": 3}, _parent_context())
    assert type(span) is not LeafSpan
    span.end()
    (exported,) = exporter.get_finished_spans()
    assert exported.dropped_attributes == 1

    provider, exporter = _exported_provider(ParentBasedTraceIdRatio(1.0))
    _, leaves = _leaves(provider)
    provider.get_tracer("test", "1.0")._set_tracer_config(  # type: ignore[attr-defined]
        _TracerConfig(is_enabled=False)
    )
    parent = _parent_context()
    span = leaves.start_child("A", SpanKind.CLIENT, {}, parent)
    assert not span.is_recording()
    assert span.get_span_context() == parent
    span.end()
    assert exporter.get_finished_spans() == ()


def test_leaf_spans_step_aside_when_the_sdk_ends_spans_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A future SDK whose ReadableSpan changed: the self-check refuses, the SDK ends spans."""

    class Renamed(ReadableSpan):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["name"] = "something else"
            super().__init__(*args, **kwargs)

    provider, _ = _exported_provider(ParentBasedTraceIdRatio(1.0))
    direct = DirectSpans.for_tracer(provider.get_tracer("test"))
    assert direct is not None
    monkeypatch.setattr(leafspans, "ReadableSpan", Renamed)
    assert LeafSpans.for_direct(direct) is None

    def incompatible(*args: Any, **kwargs: Any) -> None:
        raise TypeError("unexpected keyword argument 'instrumentation_info'")

    monkeypatch.setattr(leafspans, "ReadableSpan", incompatible)
    assert LeafSpans.for_direct(direct) is None


def test_the_leaf_self_check_ends_no_span_the_application_can_see() -> None:
    seen: list[str] = []

    class Watching(SimpleSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            seen.append(span.name)

    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(1.0), id_generator=PresetTraceIdGenerator()
    )
    provider.add_span_processor(Watching(InMemorySpanExporter()))
    _leaves(provider)
    provider.force_flush()
    assert seen == []
