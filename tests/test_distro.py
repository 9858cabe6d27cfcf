"""`opentelemetry-instrument` gives an unmodified app the same configuration as setup()."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.support.otlp_receiver import BlackHole, OtlpReceiver
from tests.support.process import clean_env

BIN = Path(sys.executable).parent

APP = """
import structlog
from fastapi import FastAPI

app = FastAPI()
log = structlog.get_logger("app")


@app.get("/items/{item_id}")
def read_item(item_id: int) -> dict[str, int]:
    log.info("item read", item_id=item_id)
    return {"item_id": item_id}
"""


@contextmanager
def instrumented_uvicorn(
    tmp_path: Path, env: dict[str, str], *uvicorn_args: str
) -> Iterator[tuple[str, Path]]:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    log_path = tmp_path / "out.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(BIN / "opentelemetry-instrument"),
                str(BIN / "uvicorn"),
                "app:app",
                "--port",
                str(port),
                *uvicorn_args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"{base}/items/0", timeout=1)
                    break
                except httpx.TransportError:
                    assert process.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.2)
            yield base, log_path
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _json_lines(path: Path) -> list[dict[str, object]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_unmodified_app_gets_spans_and_json_logs_with_trace_ids(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(
            OTEL_SERVICE_NAME="auto-app",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        with instrumented_uvicorn(tmp_path, env) as (base, log_path):
            assert httpx.get(f"{base}/items/7", timeout=5).json() == {"item_id": 7}
        deadline = time.monotonic() + 10
        while len([s for s in receiver.spans if s.kind == "SERVER"]) < 2:
            assert time.monotonic() < deadline, receiver.spans
            time.sleep(0.1)
        time.sleep(0.5)
    servers = [s for s in receiver.spans if s.kind == "SERVER"]
    assert {s.resource["service.name"] for s in receiver.spans} == {"auto-app"}
    assert all(s.resource["telemetry.distro.name"] == "stackwatch" for s in servers)
    lines = _json_lines(log_path)
    item_line = next(line for line in lines if line.get("item_id") == 7)
    assert item_line["event"] == "item read"
    # the log line of the request belongs to the request's server span's trace
    trace_ids = {s.trace_id for s in servers}
    assert item_line["trace_id"] in trace_ids
    # two requests (the readiness probe and /items/7), one server span each
    assert len(servers) == 2, [(s.name, s.kind) for s in receiver.spans]


def test_black_holed_collector_does_not_slow_requests(tmp_path: Path) -> None:
    with BlackHole() as hole:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=hole.endpoint,
            OTEL_EXPORTER_OTLP_TIMEOUT="2",
            OTEL_BSP_SCHEDULE_DELAY="50",
        )
        with instrumented_uvicorn(tmp_path, env) as (base, _):
            slowest = 0.0
            with httpx.Client(base_url=base, timeout=5) as client:
                for n in range(50):
                    started = time.perf_counter()
                    assert client.get(f"/items/{n}").status_code == 200
                    slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.5, slowest


def test_uvicorn_workers_each_export_their_spans(tmp_path: Path) -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(
            OTEL_SERVICE_NAME="multi",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        # a long health-check timeout: uvicorn restarts workers that miss the 5 s
        # default, which a loaded 2-core machine can make them do
        workers = ("--workers", "2", "--timeout-worker-healthcheck", "60")
        with instrumented_uvicorn(tmp_path, env, *workers) as (base, _):
            with httpx.Client(base_url=base, timeout=5) as client:
                for n in range(40):
                    assert client.get(f"/items/{n}", headers={"Connection": "close"}).is_success
            time.sleep(1.0)
    servers = [s for s in receiver.spans if s.kind == "SERVER"]
    # 40 requests plus readiness probes: every request's span arrived, once
    assert len(servers) >= 41
    assert len({s.span_id for s in servers}) == len(servers)
