"""stackwatch's default sampler and root-span shortcut decide exactly as the SDK does."""

from __future__ import annotations

import random

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from stackwatch.settings import Settings
from stackwatch.traces import (
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


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5])
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


def test_root_spans_apply_only_to_stackwatch_providers_that_drop_some_roots() -> None:
    sdk_ids = TracerProvider(sampler=ParentBasedTraceIdRatio(0.1))  # RandomIdGenerator
    sdk_sampler = TracerProvider(
        sampler=ParentBased(TraceIdRatioBased(0.1)), id_generator=PresetTraceIdGenerator()
    )
    for provider in (sdk_ids, sdk_sampler, _our_provider(1.0), trace.NoOpTracerProvider()):
        assert RootSpans.for_provider(provider, provider.get_tracer("test")) is None
    ours = _our_provider(0.1)
    assert RootSpans.for_provider(ours, ours.get_tracer("test")) is not None
    # The SDK's answer is checked: a tracer that does not draw from this generator is refused.
    assert RootSpans.for_provider(ours, _our_provider(0.1).get_tracer("test")) is None
