"""Celery throughput, side by side in one run: bare worker vs full stackwatch instrumentation,
and a fan-out of 1,000 small tasks as one group vs in chunks.

    uv run python benchmarks/celery_throughput.py [--tasks 3000] [--rounds 5]

Each round prefills a fresh queue on the real Redis broker, starts a prefork worker
(2 processes) on it and times the tasks from the first to the last completion
(a Redis counter each task increments), so worker start-up is not counted; the
worker's CPU time (main process and children) over the same window gives CPU per
task, which moves far less than throughput when other jobs share the 2 cores. The
two variants alternate inside every round; the table reports medians and the
instrumented / bare ratios (target >= 0.8). "Full instrumentation" is
stackwatch.setup() (JSON logs, spans exported over OTLP/HTTP to a local sink) plus
instrument_celery (request ids, work scopes, task metrics in multiprocess mode,
/metrics served). Last, the in-process cost of the signal receivers (task.apply()).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery, group

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("STACKWATCH_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def make_app(prefix: str) -> Celery:
    """The benchmark's app: stackwatch's queue presets, one no-op and one small task."""
    from stackwatch.celery import configure_celery

    app = Celery("swbench", broker=REDIS_URL, set_as_current=False)
    configure_celery(app, queues=(f"{prefix}-q",), default_queue=f"{prefix}-q")
    app.conf.update(
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
    )
    store = redis.Redis.from_url(REDIS_URL)
    done_key = f"{prefix}:done"

    @app.task(shared=False, name="swbench.noop")
    def noop() -> None:
        store.incr(done_key)

    @app.task(shared=False, name="swbench.small")
    def small(number: int) -> int:
        store.incr(done_key)
        return sum(range(number % 100))

    return app


if "SWBENCH_PREFIX" in os.environ:  # inside the benchmark's worker
    if os.environ.get("SWBENCH_INSTRUMENT") == "1":
        import stackwatch
        from stackwatch.celery import instrument_celery

        stackwatch.setup()
        app = instrument_celery(make_app(os.environ["SWBENCH_PREFIX"]))
    else:
        app = make_app(os.environ["SWBENCH_PREFIX"])


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and discards spans."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_worker(
    prefix: str, instrumented: bool, otlp_endpoint: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "STACKWATCH_", "PROMETHEUS_MULTIPROC"))
    }
    env.update(SWBENCH_PREFIX=prefix, SWBENCH_INSTRUMENT="1" if instrumented else "0")
    worker_args = [
        "-A",
        "benchmarks.celery_throughput",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-l",
        "INFO",
        "-n",
        f"{prefix}-{int(instrumented)}@%h",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    if instrumented:
        env.update(
            OTEL_SERVICE_NAME="swbench-worker",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,
            STACKWATCH_METRICS_PORT=str(_free_port()),
        )
        env.update(extra_env or {})
        command = [sys.executable, "-m", "stackwatch.cli", "celery", *worker_args]
    else:
        command = [sys.executable, "-m", "celery", *worker_args]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def wait_done(
    store: redis.Redis,
    key: str,
    total: int,
    timeout: float,
    on_first: Callable[[], None] = lambda: None,
) -> tuple[float, float]:
    """Times of the first and the last completion, polling the counter every 2 ms."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        done = int(store.get(key) or 0)
        now = time.perf_counter()
        if done and first is None:
            first = now
            on_first()
        if done >= total:
            return first or now, now
        time.sleep(0.002)
    raise TimeoutError(f"{key}: only {int(store.get(key) or 0)} of {total} tasks done")


def cleanup(store: redis.Redis, prefix: str) -> None:
    for key in store.scan_iter(match=f"*{prefix}*", count=1000):
        store.unlink(key)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (threads included)."""
    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def noop_throughput(
    instrumented: bool, tasks: int, otlp_endpoint: str, extra_env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Tasks/s and worker CPU microseconds per task for ``tasks`` no-op tasks.

    Start-up is excluded: both are measured from the first completion to the last.
    CPU time per task is what the instrumentation really adds; throughput on a
    shared 2-core machine also moves with whatever else runs.
    """
    prefix = f"swbench-{uuid.uuid4().hex[:8]}"
    app = make_app(prefix)
    store = redis.Redis.from_url(REDIS_URL)
    noop = app.tasks["swbench.noop"]
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            noop.apply_async(producer=producer)
    worker = start_worker(prefix, instrumented, otlp_endpoint, extra_env)
    cpu_at_first = [0.0]
    try:
        first, last = wait_done(
            store,
            f"{prefix}:done",
            tasks,
            timeout=300,
            on_first=lambda: cpu_at_first.__setitem__(0, cpu_seconds(worker.pid)),
        )
        cpu = cpu_seconds(worker.pid) - cpu_at_first[0]
    finally:
        stop_worker(worker)
        cleanup(store, prefix)
    return (tasks - 1) / (last - first), cpu / (tasks - 1) * 1e6


def fanout_throughput(app: Celery, prefix: str, mode: str, items: int) -> float:
    """Items/s of one fan-out of ``items`` small tasks: a group, or chunks of 10."""
    store = redis.Redis.from_url(REDIS_URL)
    key = f"{prefix}:done"
    store.delete(key)
    small = app.tasks["swbench.small"]
    started = time.perf_counter()
    if mode == "group":
        group(small.s(number) for number in range(items)).apply_async()
    else:
        small.chunks(((number,) for number in range(items)), 10).apply_async()
    _, last = wait_done(store, key, items, timeout=300)
    return items / (last - started)


def hook_overhead_us(otlp_endpoint: str, rounds: int, runs: int = 3000) -> tuple[float, float]:
    """Microseconds per ``task.apply()`` without and with instrument_celery, interleaved.

    No broker: what the signal receivers (OpenTelemetry's spans, request id, work
    scope, metrics) cost each run, separate from the broker round trips above.
    """
    import stackwatch
    from stackwatch.celery import instrument_celery, uninstrument_celery

    stackwatch.setup(
        service_name="swbench-inprocess", otlp_endpoint=otlp_endpoint, log_level="warning"
    )
    app = Celery("swbench-inprocess", broker="memory://", set_as_current=False)

    @app.task(shared=False, name="swbench.inprocess")
    def inprocess() -> None:
        return None

    def per_run() -> float:
        started = time.perf_counter()
        for _ in range(runs):
            inprocess.apply()
        return (time.perf_counter() - started) / runs * 1e6

    bare, instrumented = [], []
    for _ in range(rounds):
        bare.append(per_run())
        instrument_celery(app)
        instrumented.append(per_run())
        uninstrument_celery(app)
    stackwatch.shutdown()
    return statistics.median(bare), statistics.median(instrumented)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    otlp_endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    try:
        run(options, otlp_endpoint)
    finally:
        sink.shutdown()


def run(options: argparse.Namespace, otlp_endpoint: str) -> None:
    rates: dict[str, list[float]] = {"bare": [], "instrumented": [], "group": [], "chunks": []}
    cpu_us: dict[str, list[float]] = {"bare": [], "instrumented": []}
    for round_number in range(options.rounds):
        order = [False, True] if round_number % 2 == 0 else [True, False]
        for instrumented in order:
            variant = "instrumented" if instrumented else "bare"
            rate, cpu = noop_throughput(instrumented, options.tasks, otlp_endpoint)
            rates[variant].append(rate)
            cpu_us[variant].append(cpu)
        print(
            f"round {round_number + 1}: bare {rates['bare'][-1]:.0f}/s "
            f"{cpu_us['bare'][-1]:.0f} us CPU/task, instrumented {rates['instrumented'][-1]:.0f}/s "
            f"{cpu_us['instrumented'][-1]:.0f} us CPU/task",
            flush=True,
        )

    prefix = f"swbench-{uuid.uuid4().hex[:8]}"
    app = make_app(prefix)
    worker = start_worker(prefix, True, otlp_endpoint)
    store = redis.Redis.from_url(REDIS_URL)
    try:
        fanout_throughput(app, prefix, "chunks", 100)  # warm-up: the worker is up and consuming
        for round_number in range(options.rounds):
            order = ["group", "chunks"] if round_number % 2 == 0 else ["chunks", "group"]
            for mode in order:
                rates[mode].append(fanout_throughput(app, prefix, mode, options.fanout))
    finally:
        stop_worker(worker)
        cleanup(store, prefix)
    bare_us, instrumented_us = hook_overhead_us(otlp_endpoint, options.rounds)

    def row(name: str, values: list[float], unit: str = "") -> str:
        median = f"{statistics.median(values):.0f}{unit}"
        return f"{name:<26}{median:>14}   {' '.join(f'{v:.0f}' for v in values)}"

    throughput_ratio = statistics.median(
        i / b for i, b in zip(rates["instrumented"], rates["bare"], strict=True)
    )
    cpu_ratio = statistics.median(
        b / i for i, b in zip(cpu_us["instrumented"], cpu_us["bare"], strict=True)
    )
    print()
    print(f"no-op tasks: {options.tasks} per run, prefork -c 2, Redis, {options.rounds} rounds")
    print(f"{'':<26}{'median':>14}   runs")
    print(row("bare, tasks/s", rates["bare"]))
    print(row("instrumented, tasks/s", rates["instrumented"]))
    print(row("bare, CPU/task", cpu_us["bare"], " us"))
    print(row("instrumented, CPU/task", cpu_us["instrumented"], " us"))
    print(f"{'throughput ratio':<26}{throughput_ratio:>14.2f}   instrumented/bare, target >= 0.8")
    print(f"{'CPU-bound ratio':<26}{cpu_ratio:>14.2f}   bare CPU/instrumented CPU per task")
    print()
    print(f"fan-out of {options.fanout} small tasks, instrumented worker, {options.rounds} rounds")
    print(row("group, tasks/s", rates["group"]))
    print(row("chunks of 10, tasks/s", rates["chunks"]))
    speedup = statistics.median(rates["chunks"]) / statistics.median(rates["group"])
    print(f"{'chunks / group':<26}{speedup:>14.2f}")
    print()
    print("one task.apply() in-process (no broker): what the signal receivers cost")
    print(f"{'bare':<26}{bare_us:>11.0f} us")
    print(f"{'instrumented':<26}{instrumented_us:>11.0f} us")


if __name__ == "__main__":
    main()
