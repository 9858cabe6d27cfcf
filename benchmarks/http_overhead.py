"""HTTP overhead of stackwatch against bare FastAPI and the usual alternatives, side by side.

Each variant is the same trivial JSON endpoint in its own uvicorn process (one worker,
pinned to CPU 0); wrk (pinned to CPU 1) loads one variant at a time, in interleaved
rounds, so that noise from other work on the machine spreads over all variants alike.
The table reports the median req/s of the rounds, the ratio to bare FastAPI, and the
median p50 / p99 latency wrk measured.

    uv run python benchmarks/http_overhead.py --rounds 5 --duration 5

Variants (``--variants`` picks some):
  bare              FastAPI, no TracerProvider: native telemetry stays off
  stackwatch        setup() + instrument_fastapi(): request ids, one server span per
                    request at 100 % sampling (stackwatch's provider, sampler and bounded
                    batch processor, as setup() builds them, with an exporter that
                    discards), Prometheus histogram + gauge, one JSON log line per request
  stackwatch-10pct  the same with 10 % trace sampling
  native            FastAPI's native OpenTelemetry with its defaults (a TracerProvider set)
  native-lean       native telemetry without operation spans
  otel-contrib      opentelemetry-instrumentation-fastapi alone
  pfi               prometheus-fastapi-instrumentator alone
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

VARIANTS = (
    "bare",
    "stackwatch",
    "stackwatch-10pct",
    "native",
    "native-lean",
    "otel-contrib",
    "pfi",
)
HERE = Path(__file__).resolve().parent


# --- the app each uvicorn process serves (uvicorn --factory http_overhead:build_app)


class _Discard(SpanExporter):
    """An exporter that drops what it is given: the benchmark measures the app, not a collector."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _discarding_tracer_provider(sampling_ratio: float = 1.0) -> Any:
    """A TracerProvider whose spans go through a batch processor to an exporter that drops them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(sampling_ratio))
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    return provider


def build_app() -> Any:
    """The benchmark app for the variant named by ``HTTP_OVERHEAD_VARIANT``."""
    from fastapi import FastAPI
    from opentelemetry import trace

    variant = os.environ["HTTP_OVERHEAD_VARIANT"]
    telemetry: dict[str, Any] = {"operation_spans": False} if variant == "native-lean" else {}
    stackwatch_variant = variant.startswith("stackwatch")
    if stackwatch_variant:
        import stackwatch

        ratio = 0.1 if variant.endswith("10pct") else 1.0
        # stackwatch's own provider, sampler and bounded batch processor, as setup()
        # builds them, with an exporter that discards instead of OTLP
        settings = stackwatch.setup(
            service_name="bench", traces_exporter="none", traces_sampler_arg=ratio
        )
        from stackwatch.traces import build_span_processor

        trace.get_tracer_provider().add_span_processor(  # type: ignore[attr-defined]
            build_span_processor(_Discard(), settings)
        )
        # one log line per request: ours (uvicorn's access line says less, and twice)
        logging.getLogger("uvicorn.access").disabled = True
    elif variant in ("native", "native-lean", "otel-contrib"):
        trace.set_tracer_provider(_discarding_tracer_provider())

    app = FastAPI(telemetry=telemetry)  # type: ignore[arg-type]

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id, "name": "widget", "price": 9.99}

    if stackwatch_variant:
        stackwatch.instrument_fastapi(app)
    elif variant == "otel-contrib":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
    elif variant == "pfi":
        from prometheus_fastapi_instrumentator import Instrumentator

        Instrumentator().instrument(app).expose(app)
    return app


# --- the driver


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environment() -> dict[str, str]:
    """This process's environment without settings that would change what a variant does."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STACKWATCH_", "OTEL_", "PROMETHEUS_MULTIPROC"))
    }


def _start(variant: str, port: int) -> subprocess.Popen[bytes]:
    env = clean_environment()
    env["HTTP_OVERHEAD_VARIANT"] = variant
    command = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "http_overhead:build_app",
        "--app-dir",
        str(HERE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120  # seven servers start at once on one busy core
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise SystemExit(f"server for {url} exited:\n{stderr}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server for {url} did not start")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(pattern)
    return match.group(1)


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Run = tuple[float, float, float, float]  # req/s, p50 ms, p99 ms, server CPU us per request


def _warm_up(url: str, seconds: int, connections: int) -> None:
    subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        check=True,
    )


def _wrk(url: str, seconds: int, connections: int, pid: int) -> Run:
    """One wrk run: req/s, p50 and p99 latency (ms), and the server's CPU time per request."""
    cpu_before = _cpu_seconds(pid)
    output = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise SystemExit(f"wrk saw errors against {url}:\n{output}")
    try:
        rps = float(_field(r"Requests/sec:\s+([\d.]+)", output))
        p50 = _milliseconds(_field(r"(?m)^\s*50%\s+(\S+)", output))
        p99 = _milliseconds(_field(r"(?m)^\s*99%\s+(\S+)", output))
        requests = int(_field(r"(\d+) requests in", output))
    except ValueError:
        raise SystemExit(f"unexpected wrk output for {url}:\n{output}") from None
    cpu_per_request_us = (_cpu_seconds(pid) - cpu_before) / requests * 1e6
    return rps, p50, p99, cpu_per_request_us


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset: apt-get install -y wrk util-linux")

    processes: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    results: dict[str, list[Run]] = {name: [] for name in args.variants}
    try:
        for name in args.variants:
            port = _free_port()
            urls[name] = f"http://127.0.0.1:{port}/items/42"
            processes[name] = _start(name, port)
        for name in args.variants:
            _wait_ready(urls[name], processes[name])
        for round_number in range(1, args.rounds + 1):
            order = list(args.variants)
            random.shuffle(order)
            for name in order:
                pid = processes[name].pid
                if args.warmup:
                    _warm_up(urls[name], args.warmup, args.connections)
                results[name].append(_wrk(urls[name], args.duration, args.connections, pid))
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(timeout=10)

    _report(results, args)


def _report(results: dict[str, list[Run]], args: argparse.Namespace) -> None:
    """The table: medians over rounds; ratios to bare taken round by round, then the median.

    Two ratios: throughput (req/s, what wrk saw) and CPU (bare's server CPU time per
    request over the variant's). The CPU ratio is what throughput would be on a core
    of its own: it does not move when other work on the machine steals CPU 0.
    """
    print(
        f"\n{args.rounds} interleaved rounds x {args.duration} s, wrk -c{args.connections}, "
        "uvicorn 1 worker on CPU 0, wrk on CPU 1; medians over rounds\n"
    )
    print(
        f"{'variant':<18}{'req/s':>8}{'ratio':>7}{'CPU us/req':>12}{'CPU ratio':>11}"
        f"{'p50 ms':>8}{'p99 ms':>8}"
    )
    bare = results.get("bare")
    for name, runs in results.items():
        rps = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[3] for run in runs)
        if bare:
            ratio = f"{statistics.median(r[0] / b[0] for r, b in zip(runs, bare, strict=True)):.2f}"
            cpu_ratio = (
                f"{statistics.median(b[3] / r[3] for r, b in zip(runs, bare, strict=True)):.2f}"
            )
        else:
            ratio = cpu_ratio = "-"
        p50 = statistics.median(run[1] for run in runs)
        p99 = statistics.median(run[2] for run in runs)
        print(f"{name:<18}{rps:>8.0f}{ratio:>7}{cpu:>12.0f}{cpu_ratio:>11}{p50:>8.2f}{p99:>8.2f}")


if __name__ == "__main__":
    main()
