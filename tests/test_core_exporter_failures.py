"""A dead or hung collector never blocks the app, and lost spans are counted."""

from __future__ import annotations

import json

import pytest

from tests.conftest import free_port
from tests.support.otlp_receiver import BlackHole
from tests.support.process import clean_env, run_python

WORK_WHILE_EXPORTER_FAILS = """
import json, time, stackwatch
from opentelemetry import trace
from prometheus_client import REGISTRY
stackwatch.setup("svc", bsp_schedule_delay_ms=50, bsp_max_queue_size={queue})
tracer = trace.get_tracer("t")
slowest = 0.0
for n in range(200):
    started = time.perf_counter()
    with tracer.start_as_current_span("request"):
        pass
    slowest = max(slowest, time.perf_counter() - started)
time.sleep(0.3)
started = time.perf_counter()
stackwatch.shutdown()
shutdown_s = time.perf_counter() - started
dropped = {{
    reason: REGISTRY.get_sample_value("stackwatch_spans_dropped_total", {{"reason": reason}}) or 0
    for reason in ("export_failed", "queue_full")
}}
print(json.dumps({{"slowest_span_s": slowest, "shutdown_s": shutdown_s, "dropped": dropped}}))
"""


def _run(endpoint: str, queue: int = 2048) -> dict[str, object]:
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="1")
    result = run_python(WORK_WHILE_EXPORTER_FAILS.format(queue=queue), env, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("kind", ["refused", "black-holed"])
def test_unavailable_collector_does_not_block_and_drops_are_counted(kind: str) -> None:
    if kind == "refused":
        report = _run(f"http://127.0.0.1:{free_port()}")
    else:
        with BlackHole() as hole:
            report = _run(hole.endpoint)
    # Ending a span only enqueues it; export happens on the batch worker's thread.
    assert float(report["slowest_span_s"]) < 0.05  # type: ignore[arg-type]
    # Shutdown is bounded by the exporter timeout (1 s here), plus scheduling slack.
    assert float(report["shutdown_s"]) < 3.0  # type: ignore[arg-type]
    dropped = report["dropped"]
    assert isinstance(dropped, dict)
    assert dropped["export_failed"] > 0


def test_full_span_queue_drops_and_counts_instead_of_growing() -> None:
    with BlackHole() as hole:
        report = _run(hole.endpoint, queue=10)
    dropped = report["dropped"]
    assert isinstance(dropped, dict)
    assert dropped["queue_full"] >= 150
