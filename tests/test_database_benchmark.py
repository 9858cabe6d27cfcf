"""benchmarks/sqlalchemy_overhead.py runs end to end on the real PostgreSQL (no figures checked).

A benchmark nobody runs rots; this keeps every variant, the OpenTelemetry anchors
included, and the target line working. Its figures are read by people, not asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, text

from stackwatch.sqltext import parse_sqlcomment
from tests.support.sent_sql import record_sent

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "sqlalchemy_overhead.py"


def _benchmark() -> ModuleType:
    sys.path.insert(0, str(BENCHMARK.parent))
    try:
        import sqlalchemy_overhead
    finally:
        sys.path.remove(str(BENCHMARK.parent))
    return sqlalchemy_overhead


def test_the_anchor_is_opentelemetrys_instrumentation_with_its_commenter(
    pg_url: str, spans: InMemorySpanExporter
) -> None:
    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    _benchmark()._contrib_spans(engine, commenter=True)
    sent = record_sent(engine)
    with trace.get_tracer("test").start_as_current_span("GET /bench"), engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    engine.dispose()
    statement = next(span for span in spans.get_finished_spans() if span.name != "GET /bench")
    assert statement.kind is trace.SpanKind.CLIENT
    # contrib's comment names the statement's own span: a new text for every statement
    traceparent = parse_sqlcomment(sent[-1])["traceparent"]
    assert traceparent.split("-")[2] == format(statement.context.span_id, "016x")


def test_the_sqlalchemy_overhead_benchmark_runs_every_variant(pg_url: str) -> None:
    sqlalchemy_overhead = _benchmark()
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--url", pg_url, "--rounds", "1", "--queries", "40"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("  ")[0] for line in done.stdout.splitlines()]
    for name in sqlalchemy_overhead.VARIANTS:
        assert rows.count(name) == 2, (name, done.stdout)  # SELECT 1 and the aggregate
    assert "target >= 0.85 of bare, defaults with one request in ten sampled: " in done.stdout
    assert "every request sampled: stackwatch defaults " in done.stdout
    assert "contrib + commenter, sampled " in done.stdout
