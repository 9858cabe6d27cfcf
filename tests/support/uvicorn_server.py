"""Run tests/support/http_app.py under a real uvicorn in a subprocess, on a free port."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

REPOSITORY = Path(__file__).parents[2]


@dataclass
class Server:
    """A running uvicorn: its base URL and the file its stdout (our JSON log lines) goes to."""

    url: str
    port: int
    log_path: Path

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (other output is skipped)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    def raw_log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_uvicorn(
    tmp_path: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    app: str = "tests.support.http_app:app",
    auto_instrument: bool = False,
) -> Iterator[Server]:
    """Start uvicorn serving ``app``; stop it (SIGTERM, then SIGKILL) afterwards.

    ``auto_instrument`` runs it under ``opentelemetry-instrument``, as users would.
    """
    port = free_port()
    log_path = tmp_path / f"uvicorn-{port}.log"
    wrapper = [str(Path(sys.executable).parent / "opentelemetry-instrument")]
    command = [
        *(wrapper if auto_instrument else []),
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(REPOSITORY),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        # uvicorn restarts a worker that misses a 5 s health check; on a loaded
        # 2-core CI machine that is a restart loop, not a failure under test.
        "--timeout-worker-healthcheck",
        "60",
        "--no-access-log",
    ]
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STACKWATCH_", "OTEL_", "PROMETHEUS_MULTIPROC"))
    }
    child_env.update(env or {})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log_path, workers)
        yield Server(url=url, port=port, log_path=log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, workers: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited early:\n{log.read_text(errors='replace')}")
        started = log.read_text(errors="replace").count("Application startup complete")
        if started >= workers:
            try:
                httpx.get(f"{url}/echo-headers", timeout=1)
                return
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"uvicorn did not start in 30 s:\n{log.read_text(errors='replace')}")
