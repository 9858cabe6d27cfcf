"""``stackwatch demo``: servers, seed, baseline then optimized, the verdict; or just serve.

The runner owns every resource it creates (embedded servers, the demo database,
the Redis key prefix, the app and worker processes, a temporary directory) and
releases them on exit, on errors and on Ctrl-C / SIGTERM. ``--serve --no-compare``
skips the comparison: seed, then serve one mode until Ctrl-C / SIGTERM, for a
Prometheus to scrape and alert drills to run against.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
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
from stackwatch.demo.faults import FAULTS_PATH
from stackwatch.demo.measure import PhaseResult, StepTimes
from stackwatch.demo.warmup import warm_sizes

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
    compare: bool = True
    fault_injection: bool = False
    worker_metrics_port: int | None = None

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
        """Popular tickers the optimized app warms, analyses the nightly batch computes.

        Fewer when quick; otherwise warmup.py's.
        """
        return (200, 100) if self.quick else warm_sizes()

    def modes(self) -> tuple[str, ...]:
        """The modes to run, in order."""
        return MODES if self.mode == "both" else (self.mode,)

    def served_mode(self) -> str:
        """The mode ``--serve`` keeps running: the last one measured (optimized for both)."""
        return self.modes()[-1]

    def served_worker_metrics_port(self) -> int:
        """The served worker's /metrics port: as given, else the app's port + 1."""
        return self.worker_metrics_port or self.port + 1


@dataclass(frozen=True)
class Target:
    """Where the demo's data lives: its own database and Redis key prefix."""

    admin_url: str
    database_url: str
    redis_url: str
    prefix: str
    embedded: bool
    work_dir: Path

    @property
    def database_name(self) -> str:
        """The demo database's name (``stackwatch_demo_<id>``)."""
        return self.database_url.rsplit("/", 1)[-1]


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
    target: Target,
    mode: str,
    warm: tuple[int, int] | None = None,
    faults: bool = False,
) -> dict[str, str]:
    """Environment of the app and worker processes for ``mode``.

    ``warm`` is how many popular tickers the optimized app warms before it reports
    ready, and how many analyses the nightly batch computes (default: warmup.py's,
    or the STACKWATCH_DEMO_WARM_* variables when set). ``faults`` enables the app's
    latency-fault routes; only this argument does (an inherited variable does not).
    """
    warm = warm or warm_sizes()
    environment = dict(os.environ)
    environment.update(
        {
            "STACKWATCH_DEMO_FAULTS": "1" if faults else "0",
            "STACKWATCH_DEMO_WARM_TICKERS": str(warm[0]),
            "STACKWATCH_DEMO_WARM_ANALYSES": str(warm[1]),
            "DATABASE_URL": target.database_url,
            "REDIS_URL": target.redis_url,
            "CELERY_BROKER_URL": target.redis_url,
            "STACKWATCH_DEMO_MODE": mode,
            "STACKWATCH_DEMO_PREFIX": f"{target.prefix}:celery",
            "STACKWATCH_CACHE_PREFIX": f"{target.prefix}:cache",
            # 100 ms (the library's default) is shorter than a process can wait for
            # the CPU on 2 shared cores: the breaker opened during the warm-up and the
            # warmed values were thrown away. Redis itself never hangs here.
            "STACKWATCH_CACHE_SOCKET_TIMEOUT_MS": environment.get(
                "STACKWATCH_CACHE_SOCKET_TIMEOUT_MS", "500"
            ),
            "STACKWATCH_LOG_LEVEL": environment.get("STACKWATCH_LOG_LEVEL", "warning"),
            "OTEL_TRACES_EXPORTER": environment.get("OTEL_TRACES_EXPORTER", "none"),
            "OTEL_SERVICE_NAME": f"stackwatch-demo-{mode}",
        }
    )
    if sys.dont_write_bytecode:
        # No bytecode cache (PYTHONDONTWRITEBYTECODE): each of the demo's processes would
        # compile its modules from source, several CPU-seconds apiece. They share one
        # cache in the run's temporary directory instead, removed with it.
        environment.pop("PYTHONDONTWRITEBYTECODE", None)
        environment["PYTHONPYCACHEPREFIX"] = str(target.work_dir / "pycache")
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
    target: Target,
    mode: str,
    port: int | None = None,
    warm: tuple[int, int] | None = None,
    worker_port: int | None = None,
    faults: bool = False,
) -> Services:
    """Start uvicorn (the app) and a Celery worker for ``mode``; return once /healthz answers."""
    launched = launch_services(target, mode, port, warm, worker_port, faults)
    return wait_until_ready(launched, target, mode)


def launch_services(
    target: Target,
    mode: str,
    port: int | None = None,
    warm: tuple[int, int] | None = None,
    worker_port: int | None = None,
    faults: bool = False,
) -> Services:
    """Start uvicorn (the app) and a Celery worker for ``mode`` without waiting for them.

    Ports not given are free ones; the worker serves its /metrics on ``worker_port``.
    """
    environment = service_environment(target, mode, warm, faults)
    app_port = port or free_port()
    worker_port = worker_port or free_port()
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
    _wait_for(
        f"{services.base_url}/healthz",
        {"app": services.app, "worker": services.worker},
        logs,
        mode,
        f"the demo app ({mode}) did not answer /healthz within {READY_TIMEOUT_S:.0f}s",
    )


def wait_for_worker_metrics(services: Services, logs: Path, mode: str) -> None:
    """Return once the worker serves /metrics (it starts serving when it is ready)."""
    _wait_for(
        services.worker_metrics_url,
        {"worker": services.worker},
        logs,
        mode,
        f"the demo worker ({mode}) did not serve {services.worker_metrics_url} within "
        f"{READY_TIMEOUT_S:.0f}s: is its port taken? (log: {logs / f'worker-{mode}.log'})",
    )


def _wait_for(
    url: str,
    processes: dict[str, subprocess.Popen[bytes]],
    logs: Path,
    mode: str,
    timed_out: str,
) -> None:
    """Poll ``url`` until it answers 200; fail with a process's log tail if one exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    # One client: httpx.get builds an SSL context per call (~60 ms of CPU), which
    # polling would take from the app warming up on the same cores.
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            for name, process in processes.items():
                if process.poll() is not None:
                    tail = _log_tail(logs, name, mode)
                    raise RuntimeError(f"the demo {name} ({mode}) exited at start-up:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.3)
    raise RuntimeError(timed_out)


def _log_tail(logs: Path, name: str, mode: str) -> str:
    """The last 2,000 characters of the ``name`` process's log (app or worker)."""
    return (logs / f"{name}-{mode}.log").read_text(errors="replace")[-2000:]


def busy_ports(ports: dict[str, int]) -> list[str]:
    """The entries of ``{flag: port}`` whose loopback port something already listens on."""
    busy = []
    for flag, port in ports.items():
        with socket.socket() as sock:
            # As the servers bind: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{flag} {port}")
    return busy


def create_plan_indexes(target: Target) -> None:
    """Migration 0002 (the plan's indexes, CONCURRENTLY), then ANALYZE for the planner."""
    schema.migrate(target.database_url, schema.PLAN_INDEXES_REVISION)
    with psycopg.connect(target.database_url, autocommit=True) as connection:
        connection.execute("ANALYZE")


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
    console: Console,
) -> None:
    before = await workload.read_metrics(f"{services.base_url}/metrics")
    reads_before = measure.statement_reads(target.database_url) if reads else None
    refreshing = refreshing_cache(target, mode, console) if mode == "optimized" else None
    with refreshing or contextlib.nullcontext():
        load = await workload.run_load(
            services.base_url,
            tickers,
            options.effective_users(),
            options.effective_duration(),
            seed=options.seed,
        )
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


def _start_nightly_analyses(target: Target, tickers: list[str]) -> Any:
    """Publish the nightly batch of analyses (most popular first) on the worker's low queue."""
    tasks = _celery_app(target, "optimized")
    return tasks.start_nightly_analyses(tickers)


def _finish_nightly_analyses(
    batch: Any, target: Target, mode: str, console: Console, result: PhaseResult
) -> None:
    """Wait for the nightly batch, then refresh what expired meanwhile, before any load.

    The load starts when the night is over: a batch still running would take the
    CPU from the requests it measures. Prices (30 s) warmed by the app while the
    batch ran have expired by then: one ``refresh_cache`` fills them again.
    """
    tasks = _celery_app(target, mode)
    console.print(f"[bold]{mode}[/]: nightly batch: analyses of {len(batch.results)} chunks")
    started = time.perf_counter()
    try:
        result.analyses_precomputed = sum(batch.get(timeout=SCAN_TIMEOUT_S))
    except Exception as error:  # analyses are then computed on demand: slower, still right
        batch.revoke()
        console.print(f"[yellow]{mode}: the nightly batch failed:[/] {type(error).__name__}")
    result.analysis_batch_seconds = time.perf_counter() - started
    tasks.refresh_cache.apply_async().get(timeout=SCAN_TIMEOUT_S)


def run_phase(
    target: Target,
    mode: str,
    dataset: demo_data.Dataset,
    options: DemoOptions,
    console: Console,
    reads: bool,
    launched: Services | None = None,
    stopping: list[threading.Thread] | None = None,
    times: StepTimes | None = None,
) -> PhaseResult:
    """Start the services in ``mode`` (or take ``launched`` ones), drive the load, run the scan.

    The services are stopped in a thread added to ``stopping`` when the phase went
    well (nothing waits for them any more), right away otherwise. ``times`` gets a
    lap per step.
    """
    times = times or StepTimes()
    if mode == "optimized":
        console.print("[bold]optimized[/]: creating the plan's indexes CONCURRENTLY")
        create_plan_indexes(target)
        times.lap(f"{mode} indexes")
    purge_prefix(target.redis_url, f"{target.prefix}:cache")
    result = PhaseResult(mode=mode)
    tickers = dataset.by_popularity()
    if launched is None:
        console.print(f"[bold]{mode}[/]: starting app and worker")
        launched = launch_services(target, mode, warm=options.warm_up())
    batch = None
    if mode == "optimized":
        try:  # published now: the worker starts on it while the app warms up
            batch = _start_nightly_analyses(target, tickers[: options.warm_up()[1]])
        except BaseException:
            launched.stop()
            raise
    services = wait_until_ready(launched, target, mode)
    times.lap(f"{mode} start")
    try:
        if batch is not None:
            _finish_nightly_analyses(batch, target, mode, console, result)
            times.lap(f"{mode} analyses")
        console.print(
            f"[bold]{mode}[/]: {options.effective_users()} users for "
            f"{options.effective_duration():.0f}s on {services.base_url}"
        )
        asyncio.run(_load_phase(services, target, mode, tickers, options, result, reads, console))
        times.lap(f"{mode} load")
        console.print(f"[bold]{mode}[/]: VCP scan of {len(tickers)} tickers")
        _scan_phase(services, target, mode, tickers, result)
        times.lap(f"{mode} scan")
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
    times = StepTimes()
    stopping: list[threading.Thread] = []
    with _terminate_as_interrupt(), demo_target(console) as target:
        times.lap("servers")
        launched: Services | None = None
        if options.modes()[0] == "baseline":
            # The baseline app and worker read nothing at start: they start while the data loads.
            console.print("[bold]baseline[/]: starting app and worker")
            launched = launch_services(target, "baseline")
        try:
            dataset = seed(target, options.effective_scale(), options.seed, console)
            reads = measure.enable_statement_stats(target.database_url)
            times.lap("seed")
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
                    run_phase(
                        target, mode, dataset, options, console, reads, launched, stopping, times
                    )
                )
                launched = None
        finally:
            if launched is not None:  # a phase that failed before taking them over
                launched.stop()
            for thread in stopping:
                thread.join()
        times.lap("stop")
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
            "step_seconds": times.seconds,
        }
        console.print(report.table(rows))
        console.print(f"[dim]time per step: {times.summary()}[/]")
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


def run_serve(options: DemoOptions, console: Console | None = None) -> int:
    """``--serve --no-compare``: seed, then serve one mode until Ctrl-C / SIGTERM.

    Returns 0 once stopped by a signal (everything removed), 1 when the app or the
    worker exited on its own.
    """
    console = console or Console(width=None if sys.stdout.isatty() else 150)
    mode = options.served_mode()
    with _terminate_as_interrupt(), demo_target(console) as target:
        seed(target, options.effective_scale(), options.seed, console)
        if mode == "optimized":
            create_plan_indexes(target)
        return serve(target, options, console)


@contextlib.contextmanager
def refreshing_cache(target: Target, mode: str, console: Console) -> Iterator[None]:
    """Publish ``refresh_cache`` every REFRESH_EVERY_S, as beat would.

    The app warmed prices (30 s) in the seconds before it reported ready: the first
    refresh is due before those expire (after half the interval), then every 20 s.
    """
    tasks = _celery_app(target, mode)
    stop = threading.Event()

    def publish() -> None:
        wait = REFRESH_EVERY_S / 2
        while not stop.wait(wait):
            try:
                tasks.refresh_cache.apply_async()
            except Exception as error:  # the broker gone: say so, keep serving
                console.print(f"[yellow]refresh_cache not published:[/] {error}")
            wait = REFRESH_EVERY_S

    thread = threading.Thread(target=publish, name="refresh-cache", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10.0)


def serve(target: Target, options: DemoOptions, console: Console) -> int:
    """Keep the served mode's app and worker running until Ctrl-C / SIGTERM (returns 0).

    Returns 1 when one of them exits on its own; both are stopped either way.
    """
    mode = options.served_mode()
    services = start_services(
        target,
        mode,
        port=options.port,
        warm=options.warm_up(),
        worker_port=options.served_worker_metrics_port(),
        faults=options.fault_injection,
    )
    try:
        wait_for_worker_metrics(services, target.work_dir, mode)
        _print_serving(console, services, target, mode, options.fault_injection)
        refreshing = refreshing_cache(target, mode, console) if mode == "optimized" else None
        with refreshing or contextlib.nullcontext():
            while services.app.poll() is None and services.worker.poll() is None:
                time.sleep(0.5)
        name = "app" if services.app.poll() is not None else "worker"
        console.print(f"[red]the demo {name} exited; stopping[/]")
        console.print(_log_tail(target.work_dir, name, mode), markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("stopping: app and worker, then the demo data")
        return 0
    finally:
        services.stop()


def _print_serving(
    console: Console, services: Services, target: Target, mode: str, faults: bool
) -> None:
    rows = [
        ("app", services.base_url),
        ("app metrics", f"{services.base_url}/metrics"),
        ("worker metrics", services.worker_metrics_url),
        ("cache stats", f"{services.base_url}/api/system/cache-stats"),
    ]
    if faults:
        rows.append(("latency faults", f"{services.base_url}{FAULTS_PATH}"))
    rows += [("database", target.database_name), ("Redis keys", f"{target.prefix}:*")]
    console.print(f"serving {mode} until Ctrl-C or SIGTERM (then the demo data is removed)")
    for label, value in rows:
        console.print(f"  {label:<15} {value}", markup=False, highlight=False)
