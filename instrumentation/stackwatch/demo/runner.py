"""``stackwatch demo``: servers, seed, baseline then optimized, the verdict.

The runner owns every resource it creates (embedded servers, the demo database,
the Redis key prefix, the app and worker processes, a temporary directory) and
releases them on exit, on errors and on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psycopg
import redis
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from stackwatch.demo import data as demo_data
from stackwatch.demo import measure, report, schema, workload
from stackwatch.demo.embedded import embedded_servers, free_port
from stackwatch.demo.measure import PhaseResult

MODES = ("baseline", "optimized")
READY_TIMEOUT_S = 180.0
SCAN_TIMEOUT_S = 900.0
REFRESH_EVERY_S = 20.0


@dataclass(frozen=True)
class DemoOptions:
    """What the user asked for (``stackwatch demo`` flags)."""

    quick: bool = False
    serve: bool = False
    users: int | None = None
    duration_s: float | None = None
    scale: float | None = None
    mode: str = "both"
    report_dir: Path = Path()
    port: int = 8000
    seed: int = 20260128

    def effective_users(self) -> int:
        """Virtual users: 8 in quick mode, 20 otherwise, unless given."""
        return self.users or (8 if self.quick else 20)

    def effective_duration(self) -> float:
        """Seconds of load per mode: 5 in quick mode, 30 otherwise, unless given."""
        return self.duration_s or (5.0 if self.quick else 30.0)

    def effective_scale(self) -> float:
        """Data scale: 0.2 (400 tickers) in quick mode, 1.0 (2,000) otherwise, unless given."""
        return self.scale or (0.2 if self.quick else 1.0)

    def warm_up(self) -> tuple[int, int]:
        """Popular tickers and analyses the optimized app warms at start: fewer when quick."""
        return (50, 10) if self.quick else (500, 500)

    def modes(self) -> tuple[str, ...]:
        """The modes to run, in order."""
        return MODES if self.mode == "both" else (self.mode,)


@dataclass(frozen=True)
class Target:
    """Where the demo's data lives: its own database and Redis key prefix."""

    admin_url: str
    database_url: str
    redis_url: str
    prefix: str
    embedded: bool
    work_dir: Path


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every cleanup below runs."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def demo_target(console: Console) -> Iterator[Target]:
    """DATABASE_URL / REDIS_URL when set, embedded servers for whichever is not."""
    database_url = os.environ.get("DATABASE_URL") or os.environ.get("STACKWATCH_DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("STACKWATCH_REDIS_URL")
    run_id = uuid.uuid4().hex[:10]
    work_dir = Path(tempfile.mkdtemp(prefix="stackwatch-demo-run-"))
    try:
        with embedded_servers(postgres=not database_url, redis=not redis_url) as servers:
            if not database_url or not redis_url:
                started = [
                    n for n, u in (("PostgreSQL", database_url), ("Redis", redis_url)) if not u
                ]
                console.print(f"[dim]embedded {' and '.join(started)} in {servers.directory}[/]")
            admin = schema.plain_url(database_url or servers.postgres_url)
            name = f"stackwatch_demo_{run_id}"
            admin_db = admin.rsplit("/", 1)[0] + "/postgres"
            with psycopg.connect(admin_db, autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
            prefix = f"stackwatch-demo:{run_id}"
            target = Target(
                admin_url=admin_db,
                database_url=admin.rsplit("/", 1)[0] + f"/{name}",
                redis_url=redis_url or servers.redis_url,
                prefix=prefix,
                embedded=not database_url,
                work_dir=work_dir,
            )
            try:
                yield target
            finally:
                with psycopg.connect(admin_db, autocommit=True) as connection:
                    connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                purge_prefix(target.redis_url, prefix)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def purge_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN + UNLINK, never KEYS)."""
    client = redis.Redis.from_url(redis_url)
    removed = 0
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            removed += int(client.unlink(key))
    finally:
        client.close()
    return removed


def seed(target: Target, scale: float, seed_value: int, console: Console) -> demo_data.Dataset:
    """Create the schema (no plan indexes) and COPY the generated data, with a progress bar."""
    schema.migrate(target.database_url, schema.SCHEMA_REVISION)
    dataset = demo_data.generate(scale, seed_value)
    totals = demo_data.row_counts(dataset)
    with Progress(
        TextColumn("[bold]seeding[/] {task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bars = {table: progress.add_task(table, total=count) for table, count in totals.items()}
        asyncio.run(
            demo_data.load(
                target.database_url,
                dataset,
                lambda table, rows: progress.advance(bars[table], rows),
            )
        )
    return dataset


def service_environment(
    target: Target, mode: str, warm: tuple[int, int] = (300, 300)
) -> dict[str, str]:
    """Environment of the app and worker processes for ``mode``.

    ``warm`` is how many popular tickers, and how many of their analyses, the
    optimized app warms before it reports ready.
    """
    environment = dict(os.environ)
    environment.update(
        {
            "STACKWATCH_DEMO_WARM_TICKERS": str(warm[0]),
            "STACKWATCH_DEMO_WARM_ANALYSES": str(warm[1]),
            "DATABASE_URL": target.database_url,
            "REDIS_URL": target.redis_url,
            "CELERY_BROKER_URL": target.redis_url,
            "STACKWATCH_DEMO_MODE": mode,
            "STACKWATCH_DEMO_PREFIX": f"{target.prefix}:celery",
            "STACKWATCH_CACHE_PREFIX": f"{target.prefix}:cache",
            "STACKWATCH_LOG_LEVEL": environment.get("STACKWATCH_LOG_LEVEL", "warning"),
            "OTEL_TRACES_EXPORTER": environment.get("OTEL_TRACES_EXPORTER", "none"),
            "OTEL_SERVICE_NAME": f"stackwatch-demo-{mode}",
        }
    )
    return environment


@dataclass
class Services:
    """The app and worker processes of one mode."""

    app: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    base_url: str
    worker_metrics_url: str
    multiproc_dir: Path

    def stop(self) -> None:
        """SIGTERM both, then SIGKILL whatever is still alive after 15 s."""
        for process in (self.app, self.worker):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 15.0
        for process in (self.app, self.worker):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(self.multiproc_dir, ignore_errors=True)


def start_services(
    target: Target, mode: str, port: int | None = None, warm: tuple[int, int] = (300, 300)
) -> Services:
    """Start uvicorn (the app) and a Celery worker for ``mode``; return once /healthz answers."""
    return wait_until_ready(launch_services(target, mode, port, warm), target, mode)


def launch_services(
    target: Target, mode: str, port: int | None = None, warm: tuple[int, int] = (300, 300)
) -> Services:
    """Start uvicorn (the app) and a Celery worker for ``mode`` without waiting for them."""
    environment = service_environment(target, mode, warm)
    app_port = port or free_port()
    worker_port = free_port()
    logs = target.work_dir
    multiproc = Path(tempfile.mkdtemp(prefix="prom-", dir=target.work_dir))
    worker_environment = {
        **environment,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "STACKWATCH_METRICS_PORT": str(worker_port),
    }
    queues = "default" if mode == "baseline" else "high,default,low"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "stackwatch.demo.tasks",
            "worker",
            "-Q",
            queues,
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "-n",
            f"demo-{mode}-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=worker_environment,
        stdout=(logs / f"worker-{mode}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "stackwatch.demo.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(app_port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=environment,
        stdout=(logs / f"app-{mode}.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    return Services(
        app,
        worker,
        f"http://127.0.0.1:{app_port}",
        f"http://127.0.0.1:{worker_port}/metrics",
        multiproc,
    )


def wait_until_ready(services: Services, target: Target, mode: str) -> Services:
    """``services`` once the app answers /healthz; stopped if it does not (or on Ctrl-C)."""
    try:
        _wait_until_ready(services, target.work_dir, mode)
    except BaseException:  # also Ctrl-C / SIGTERM while waiting: never leave them running
        services.stop()
        raise
    return services


def _wait_until_ready(services: Services, logs: Path, mode: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, process in (("app", services.app), ("worker", services.worker)):
            if process.poll() is not None:
                tail = (logs / f"{name}-{mode}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the demo {name} ({mode}) exited at start-up:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{services.base_url}/healthz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(
        f"the demo app ({mode}) did not answer /healthz within {READY_TIMEOUT_S:.0f}s"
    )


def _celery_app(target: Target, mode: str) -> Any:
    """The demo's Celery app in this process, as a producer (imported once, env set first)."""
    for key, value in service_environment(target, mode).items():
        if key not in ("STACKWATCH_DEMO_MODE", "OTEL_SERVICE_NAME"):
            os.environ[key] = value
    from stackwatch.demo import tasks

    return tasks


async def _load_phase(
    services: Services,
    target: Target,
    mode: str,
    tickers: list[str],
    options: DemoOptions,
    result: PhaseResult,
    reads: bool,
) -> None:
    before = await workload.read_metrics(f"{services.base_url}/metrics")
    reads_before = measure.statement_reads(target.database_url) if reads else None
    refresher: asyncio.Task[None] | None = None
    if mode == "optimized":
        tasks = _celery_app(target, mode)

        async def refresh() -> None:
            # The app warmed prices (30 s) in the seconds before it reported ready:
            # the first refresh is due before those expire, then every 20 s.
            await asyncio.sleep(REFRESH_EVERY_S / 2)
            while True:
                await asyncio.to_thread(tasks.refresh_cache.apply_async)
                await asyncio.sleep(REFRESH_EVERY_S)

        refresher = asyncio.create_task(refresh())
    try:
        load = await workload.run_load(
            services.base_url,
            tickers,
            options.effective_users(),
            options.effective_duration(),
            seed=options.seed,
        )
    finally:
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
    after = await workload.read_metrics(f"{services.base_url}/metrics")
    if reads_before is not None:
        reads_after = measure.statement_reads(target.database_url)
        result.db_reads = reads_after[0] - reads_before[0]
        result.db_rows_read = reads_after[1] - reads_before[1]
    result.endpoints = load.summary()
    result.latencies_ms = {k: [v * 1000 for v in values] for k, values in load.latencies.items()}
    result.requests = load.requests
    result.load_seconds = load.seconds
    measure.fill_from_metrics(result, measure.delta(after, before))
    client = redis.Redis.from_url(target.redis_url)
    try:
        result.cache_memory_bytes = float(client.info("memory")["used_memory"])
    finally:
        client.close()


def _scan_phase(
    services: Services, target: Target, mode: str, tickers: list[str], result: PhaseResult
) -> None:
    tasks = _celery_app(target, mode)
    before = asyncio.run(workload.read_metrics(services.worker_metrics_url))
    started = time.perf_counter()
    failed = 0
    try:
        if mode == "baseline":
            outcome = tasks.scan_serial.apply_async().get(timeout=SCAN_TIMEOUT_S)
            result.scan_hits = int(outcome["hits"])
            result.scan_tasks = 1
        else:
            outcome = tasks.start_chunked_scan(sorted(tickers)).get(
                timeout=SCAN_TIMEOUT_S, disable_sync_subtasks=False
            )
            result.scan_hits = int(outcome["hits"])
            result.scan_tasks = -(-len(tickers) // tasks.CHUNK_TICKERS) + 1
    except Exception as error:  # a failed scan is a measured outcome, not a crash of the demo
        failed = 1
        result.scan_error = f"{type(error).__name__}: {error}"[:300]
    result.scan_seconds = time.perf_counter() - started
    result.scan_tickers = len(tickers)
    time.sleep(1.0)  # let the worker's children write their last counters
    after = asyncio.run(workload.read_metrics(services.worker_metrics_url))
    counted = measure.delta(after, before)
    if counted.get("celery_tasks_total"):
        result.tasks_succeeded = measure.sum_samples(
            counted, "celery_tasks_total", state="succeeded"
        )
        result.tasks_failed = measure.sum_samples(counted, "celery_tasks_total", state="failed")
        result.tasks_retried = measure.sum_samples(counted, "celery_tasks_total", state="retried")
        result.scan_slow_queries = measure.sum_samples(counted, "db_slow_queries_total")
    else:
        result.tasks_succeeded = float(result.scan_tasks - failed)
        result.tasks_failed = float(failed)


def run_phase(
    target: Target,
    mode: str,
    dataset: demo_data.Dataset,
    options: DemoOptions,
    console: Console,
    reads: bool,
    launched: Services | None = None,
    stopping: list[threading.Thread] | None = None,
) -> PhaseResult:
    """Start the services in ``mode`` (or take ``launched`` ones), drive the load, run the scan.

    The services are stopped in a thread added to ``stopping`` when the phase went
    well (nothing waits for them any more), right away otherwise.
    """
    if mode == "optimized":
        console.print("[bold]optimized[/]: creating the plan's indexes CONCURRENTLY")
        schema.migrate(target.database_url, schema.PLAN_INDEXES_REVISION)
        with psycopg.connect(target.database_url, autocommit=True) as connection:
            connection.execute("ANALYZE")
    purge_prefix(target.redis_url, f"{target.prefix}:cache")
    result = PhaseResult(mode=mode)
    tickers = dataset.by_popularity()
    if launched is None:
        console.print(f"[bold]{mode}[/]: starting app and worker")
        launched = launch_services(target, mode, warm=options.warm_up())
    services = wait_until_ready(launched, target, mode)
    try:
        console.print(
            f"[bold]{mode}[/]: {options.effective_users()} users for "
            f"{options.effective_duration():.0f}s on {services.base_url}"
        )
        asyncio.run(_load_phase(services, target, mode, tickers, options, result, reads))
        console.print(f"[bold]{mode}[/]: VCP scan of {len(tickers)} tickers")
        _scan_phase(services, target, mode, tickers, result)
    except BaseException:
        services.stop()
        raise
    if stopping is None:
        services.stop()
    else:
        stopping.append(threading.Thread(target=services.stop, name=f"stop-{mode}"))
        stopping[-1].start()
    console.print(
        f"[bold]{mode}[/]: {result.requests} requests ({result.requests_per_second:.0f}/s), "
        f"scan {result.scan_seconds or 0:.1f}s"
    )
    if result.scan_error:
        console.print(f"[red]{mode}: the VCP scan failed:[/] {result.scan_error}")
    return result


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """The whole demo; returns the exit code (1 when a plan gate fails)."""
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    options.report_dir.mkdir(parents=True, exist_ok=True)
    phases: list[PhaseResult] = []
    started = time.monotonic()
    stopping: list[threading.Thread] = []
    with _terminate_as_interrupt(), demo_target(console) as target:
        launched: Services | None = None
        if options.modes()[0] == "baseline":
            # The baseline app and worker read nothing at start: they start while the data loads.
            console.print("[bold]baseline[/]: starting app and worker")
            launched = launch_services(target, "baseline")
        try:
            dataset = seed(target, options.effective_scale(), options.seed, console)
            reads = measure.enable_statement_stats(target.database_url)
            if not reads:
                console.print(
                    "[yellow]pg_stat_statements is not loaded: "
                    "DB reads come from stackwatch's counts[/]"
                )
        except BaseException:
            if launched is not None:
                launched.stop()
            raise
        try:
            for mode in options.modes():
                phases.append(
                    run_phase(target, mode, dataset, options, console, reads, launched, stopping)
                )
                launched = None
        finally:
            if launched is not None:  # a phase that failed before taking them over
                launched.stop()
            for thread in stopping:
                thread.join()
        by_mode = {phase.mode: phase for phase in phases}
        rows = report.build_gates(by_mode.get("baseline"), by_mode.get("optimized"))
        meta = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "tickers": len(dataset.tickers),
            "price_rows": len(dataset.tickers) * len(dataset.dates),
            "users": options.effective_users(),
            "duration_s": options.effective_duration(),
            "embedded_servers": target.embedded,
            "cpus": os.cpu_count(),
            "seconds": round(time.monotonic() - started, 1),
        }
        console.print(report.table(rows))
        json_path = options.report_dir / report.REPORT_JSON
        html_path = options.report_dir / report.REPORT_HTML
        report.write_json(json_path, rows, phases, meta)
        report.write_html(html_path, rows, phases, meta)
        console.print(f"reports: {json_path} and {html_path}")
        if options.serve:
            serve(target, options, console)
    failures = report.failed(rows)
    if failures:
        console.print(
            f"[red]{len(failures)} plan gate(s) failed:[/] " + ", ".join(r.name for r in failures)
        )
        return 1
    console.print("[green]every plan gate passed[/]")
    return 0


def serve(target: Target, options: DemoOptions, console: Console) -> None:
    """Keep the last mode's app and worker running until Ctrl-C."""
    mode = options.modes()[-1]
    services = start_services(target, mode, port=options.port, warm=options.warm_up())
    console.print(
        f"serving {mode} on {services.base_url} (metrics: {services.base_url}/metrics, "
        f"worker metrics: {services.worker_metrics_url}); Ctrl-C stops and cleans up"
    )
    try:
        while services.app.poll() is None and services.worker.poll() is None:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        services.stop()
