"""stackwatch's default sampler decides exactly as the SDK's ParentBased(TraceIdRatioBased)."""

from __future__ import annotations

import random

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from stackwatch.settings import Settings
from stackwatch.traces import ParentBasedTraceIdRatio, build_sampler


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
