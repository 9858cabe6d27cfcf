"""Statement round trips: bare engine vs instrument_sqlalchemy, side by side in one run.

Each variant has its own engine and connection to the same PostgreSQL; rounds are
interleaved and medians reported with the ratio to bare throughput (target >= 0.85
for SELECT 1). Instrumented variants run their statements in units of work of 4
statements (an HTTP request's worth, below the N+1 threshold), so the per-request
closer is in the measurement too. Spans go through a BatchSpanProcessor into a
discarding exporter: the SDK's cost, not a network's.

Variants: bare; stackwatch defaults (spans + comment + metrics + per-request
counting); without the comment; with the request not sampled (parent span
unsampled, as with OTEL_TRACES_SAMPLER_ARG < 1); both of those.
Two statements: SELECT 1 (the worst case) and a ~1 ms aggregate.
Usage: python benchmarks/sqlalchemy_overhead.py [--url URL] [--rounds 15] [--queries 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sqlalchemy import Connection, TextClause, create_engine, text

import stackwatch
from stackwatch.scope import work_scope
from stackwatch.settings import load_settings

STATEMENTS = {
    "SELECT 1": text("SELECT 1"),
    "~1 ms aggregate": text("SELECT count(*) FROM generate_series(1, 20000)"),
}
PER_REQUEST = 4


class _DiscardingExporter(SpanExporter):
    """Accepts spans and drops them."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@contextlib.contextmanager
def _unsampled_request() -> Iterator[None]:
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(parent)):
        yield


def _run(
    connection: Connection, statement: TextClause, queries: int, in_scope: bool, sampled: bool
) -> float:
    start = time.perf_counter()
    for _ in range(queries // PER_REQUEST):
        with contextlib.ExitStack() as stack:
            if in_scope:
                stack.enter_context(work_scope("http", "/bench"))
            if not sampled:
                stack.enter_context(_unsampled_request())
            for _ in range(PER_REQUEST):
                connection.execute(statement).scalar_one()
    return queries / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    url = args.url.replace("postgresql://", "postgresql+psycopg://", 1)

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_DiscardingExporter()))
    trace.set_tracer_provider(provider)

    # name: (commenter, sampled, instrumented)
    variants = {
        "bare": (False, True, False),
        "stackwatch defaults": (True, True, True),
        "no comment": (False, True, True),
        "request not sampled": (True, False, True),
        "not sampled, no comment": (False, False, True),
    }
    connections: dict[str, Connection] = {}
    for name, (commenter, _, instrumented) in variants.items():
        engine = create_engine(url)
        if instrumented:
            settings = load_settings(sql_commenter=commenter)
            stackwatch.instrument_sqlalchemy(engine, settings=settings)
        connections[name] = engine.connect()

    for label, statement in STATEMENTS.items():
        queries = args.queries if label == "SELECT 1" else args.queries // 10
        results: dict[str, list[float]] = {name: [] for name in variants}
        for name, (_, sampled, instrumented) in variants.items():
            _run(connections[name], statement, 200, instrumented, sampled)  # warm up
        for _ in range(args.rounds):
            for name, (_, sampled, instrumented) in variants.items():
                rate = _run(connections[name], statement, queries, instrumented, sampled)
                results[name].append(rate)
        bare = statistics.median(results["bare"])
        print(f"\n{label}: {args.rounds} interleaved rounds x {queries} statements")
        print(f"{'variant':<26}{'median stmt/s':>14}{'us/stmt':>9}{'ratio':>7}")
        for name, samples in results.items():
            median = statistics.median(samples)
            print(f"{name:<26}{median:>14.0f}{1e6 / median:>9.1f}{median / bare:>7.2f}")
    for connection in connections.values():
        connection.close()
    provider.shutdown()


if __name__ == "__main__":
    main()
