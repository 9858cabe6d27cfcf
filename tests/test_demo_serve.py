"""The demo served for drills: latency faults, and ``stackwatch demo --serve --no-compare``.

Faults are tested on the baseline app (it starts without a warm-up); the served
demo runs on the machine's PostgreSQL and Redis under its own database and key
prefix, has no fault routes without --fault-injection, and SIGTERM must leave no
process, database or key behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from stackwatch.cli import app as cli
from stackwatch.demo.faults import FAULTS_PATH, MAX_DELAY_S
from stackwatch.demo.runner import Services, Target, start_services
from stackwatch.demo.workload import DETAIL, SIGNALS, scrape
from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL, distinct_free_ports
from tests.support.bytecode import with_bytecode_cache
from tests.support.demo_target import seeded_target, serve_command

SLOW_S = 2.0  # far above what any route takes here, so a delayed request stands out


@pytest.fixture(scope="module", autouse=True)
def _shared_bytecode() -> Iterator[None]:
    # The demo's processes inherit this environment: one compilation for all of them.
    environment = with_bytecode_cache()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        patch.setenv("PYTHONPYCACHEPREFIX", environment["PYTHONPYCACHEPREFIX"])
        yield


def _said(output: str) -> str:
    """The words of a usage error, without rich's box and line breaks."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


def test_serve_flags_need_serve_and_ports_of_their_own() -> None:
    runner = CliRunner()
    for flags in (["--no-compare"], ["--fault-injection"]):
        result = runner.invoke(cli, ["demo", *flags])
        assert result.exit_code == 2, result.output
        assert (
            f"Invalid value for {flags[0]}: only applies to what --serve serves: add --serve"
            in _said(result.output)
        )
    same = runner.invoke(
        cli, ["demo", "--serve", "--port", "9123", "--worker-metrics-port", "9123"]
    )
    assert same.exit_code == 2
    assert "a port of its own" in _said(same.output)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        taken = listening.getsockname()[1]
        busy = runner.invoke(cli, ["demo", "--serve", "--no-compare", "--port", str(taken)])
    assert busy.exit_code == 2
    assert f"already in use on 127.0.0.1: --port {taken}" in _said(busy.output)


@pytest.fixture
def seeded(pg_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[tuple[Target, list[str]]]:
    with seeded_target(pg_url, redis_prefix, tmp_path, scale=0.01) as seeded:
        yield seeded


def _timed_get(url: str) -> float:
    started = time.perf_counter()
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


def _samples(services: Services, name: str, **labels: str) -> float:
    families = scrape(httpx.get(f"{services.base_url}/metrics", timeout=10).text)
    return sum(
        value
        for key, value in families.get(name, {}).items()
        if labels.items() <= dict(key).items()
    )


@pytest.mark.integration
def test_a_latency_fault_slows_its_route_inside_the_request_until_removed(
    seeded: tuple[Target, list[str]],
) -> None:
    target, tickers = seeded
    services = start_services(target, "baseline", faults=True)
    url = f"{services.base_url}{FAULTS_PATH}"
    try:
        for wrong in (
            {"path": DETAIL, "seconds": 0},
            {"path": DETAIL, "seconds": -1},
            {"path": DETAIL, "seconds": MAX_DELAY_S + 0.01},
            {"path": DETAIL, "seconds": 1, "layer": "disk"},
            {"path": DETAIL, "seconds": 1, "colour": "red"},
            {"path": "/api/kr/stocks/005930", "seconds": 1},
            {"path": FAULTS_PATH, "seconds": 1},
        ):
            answer = httpx.put(url, json=wrong, timeout=30)
            assert answer.status_code == 422, (wrong, answer.text)
        not_a_template = {"path": "/api/kr/stocks/005930", "seconds": 1}
        assert DETAIL in httpx.put(url, json=not_a_template, timeout=30).json()["detail"]

        fault = {"path": DETAIL, "seconds": SLOW_S, "layer": "app"}
        assert httpx.put(url, json=fault, timeout=30).json() == fault
        assert httpx.get(url, timeout=30).json()["faults"] == [fault]
        # Every ticker of the route waits; other routes do not.
        assert _timed_get(f"{services.base_url}/api/kr/stocks/{tickers[0]}") >= SLOW_S
        assert _timed_get(f"{services.base_url}/api/kr/stocks/{tickers[-1]}") >= SLOW_S
        assert _timed_get(f"{services.base_url}/healthz") < SLOW_S
        # Measured by the latency histogram under the route's template.
        slow = _samples(services, "api_request_duration_seconds_count", path=DETAIL) - _samples(
            services, "api_request_duration_seconds_bucket", path=DETAIL, le="1.0"
        )
        assert slow == 2

        # The database layer: a statement held in PostgreSQL, timed and logged as slow.
        slow_before = _samples(services, "db_slow_queries_total")
        database_fault = {"path": SIGNALS, "seconds": 0.3, "layer": "database"}
        assert httpx.put(url, json=database_fault, timeout=30).status_code == 200
        assert _timed_get(f"{services.base_url}{SIGNALS}") >= 0.3
        assert _samples(services, "db_slow_queries_total") >= slow_before + 1
        log = (target.work_dir / "app-baseline.log").read_text()
        assert re.search(r'"statement":"SELECT pg_sleep[^"]*".*"path":"/api/kr/signals"', log), log

        assert httpx.delete(url, params={"path": DETAIL}, timeout=30).json() == {
            "removed": [DETAIL]
        }
        assert _timed_get(f"{services.base_url}/api/kr/stocks/{tickers[0]}") < SLOW_S
        assert httpx.delete(url, timeout=30).json() == {"removed": [SIGNALS]}
        assert httpx.delete(url, timeout=30).json() == {"removed": []}
        assert httpx.get(url, timeout=30).json()["faults"] == []
    finally:
        services.stop()


def _demo_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_serve_without_comparing_serves_until_sigterm_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    port, worker_port = distinct_free_ports(2)
    log = tmp_path / "demo.log"
    demo = subprocess.Popen(
        serve_command(0.02, port, worker_port),
        env={
            **os.environ,
            "DATABASE_URL": POSTGRES_ADMIN_URL,
            "REDIS_URL": REDIS_URL,
            # Only --fault-injection enables the fault routes, not an inherited variable.
            "STACKWATCH_DEMO_FAULTS": "1",
        },
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while not re.search(r"^\s+Redis keys\s", log.read_text(), re.MULTILINE):
            assert demo.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        output = log.read_text()
        database = re.search(r"^\s+database\s+(\S+)$", output, re.MULTILINE)
        keys = re.search(r"^\s+Redis keys\s+(\S+):\*$", output, re.MULTILINE)
        assert database, output
        assert keys, output
        base = f"http://127.0.0.1:{port}"
        assert f"worker metrics  http://127.0.0.1:{worker_port}/metrics" in output
        assert httpx.get(f"{base}/healthz", timeout=30).json()["mode"] == "optimized"
        assert "celery_queue_length" in httpx.get(f"http://127.0.0.1:{worker_port}/metrics").text
        faults = f"{base}{FAULTS_PATH}"
        assert httpx.put(faults, json={"path": DETAIL, "seconds": 1}, timeout=30).status_code == 404
        assert httpx.get(faults, timeout=30).status_code == 404
        assert httpx.delete(faults, timeout=30).status_code == 404
        # The scan the app publishes is run by the served worker.
        scan = httpx.post(f"{base}/api/kr/scans", timeout=30)
        assert scan.status_code == 202, scan.text
        assert scan.json()["method"] == "chunked"
        state: dict[str, object] = {}
        while state.get("state") != "SUCCESS":
            assert state.get("state") != "FAILURE", state
            assert time.monotonic() < deadline + 60, state
            time.sleep(0.5)
            state = httpx.get(f"{base}/api/kr/scans/{scan.json()['id']}", timeout=30).json()
        tree = _demo_tree(demo.pid)
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if demo.poll() is None:  # a failed check: still let it clean up, then make sure
            demo.terminate()
            try:
                demo.wait(60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait(10)
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, [process.cmdline() for process in alive]
    with psycopg.connect(POSTGRES_ADMIN_URL) as connection:
        found = connection.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (database[1],)
        ).fetchone()
    assert found == (0,)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert not list(client.scan_iter(match=f"{keys[1]}:*", count=1000))
    finally:
        client.close()
