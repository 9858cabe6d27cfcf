"""/metrics: bearer token, its own port, and multiprocess totals across uvicorn workers."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stackwatch.metrics import MetricsServer, metrics_asgi_app, start_metrics_server
from tests.conftest import free_port
from tests.support.uvicorn_server import run_uvicorn

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-tests"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def test_metrics_on_the_app_require_the_bearer_token_when_set(tmp_path: Path) -> None:
    with run_uvicorn(tmp_path, env={"STACKWATCH_METRICS_TOKEN": TOKEN}) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        wrong = httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        right = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert "api_request_duration_seconds_bucket" in right.text
        assert TOKEN not in server.raw_log()


def test_metrics_port_serves_metrics_apart_from_the_app(tmp_path: Path) -> None:
    port = free_port()
    env = {"STACKWATCH_METRICS_PORT": str(port), "STACKWATCH_METRICS_TOKEN": TOKEN}
    with run_uvicorn(tmp_path, env=env) as server:
        httpx.get(f"{server.url}/api/kr/stocks/1")
        assert httpx.get(f"{server.url}/metrics").status_code == 404  # not on the app
        separate = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(separate).status_code == 401
        response = httpx.get(
            separate, headers={"Authorization": f"Bearer {TOKEN}", "Accept": OPENMETRICS}
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert 'path="/api/kr/stocks/{ticker}"' in response.text


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = start_metrics_server(0, token=TOKEN, host="127.0.0.1")
    yield server
    server.shutdown()


def test_metrics_server_negotiates_format_and_checks_the_token(
    metrics_server: MetricsServer,
) -> None:
    url = f"http://127.0.0.1:{metrics_server.port}/metrics"
    assert httpx.get(url).status_code == 401
    auth = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    plain = httpx.get(url, headers=auth)
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain")
    openmetrics = httpx.get(url, headers={**auth, "Accept": OPENMETRICS})
    assert openmetrics.text.endswith("# EOF\n")


def test_metrics_server_refuses_scrapes_beyond_its_bound(metrics_server: MetricsServer) -> None:
    # Idle connections each hold a handler thread until their socket timeout.
    idle = [socket.create_connection(("127.0.0.1", metrics_server.port)) for _ in range(4)]
    try:
        time.sleep(0.3)
        response = httpx.get(
            f"http://127.0.0.1:{metrics_server.port}/metrics",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 503
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        response = httpx.get(
            f"http://127.0.0.1:{metrics_server.port}/metrics",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        if response.status_code == 200:
            return
        time.sleep(0.1)
    pytest.fail("the metrics server did not recover after the idle connections closed")


def test_metrics_server_shutdown_frees_its_port() -> None:
    server = start_metrics_server(0, host="127.0.0.1")
    port = server.port
    server.shutdown()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    assert not any(thread.name == "stackwatch-metrics" for thread in threading.enumerate())


async def test_metrics_asgi_app_rejects_other_methods() -> None:
    transport = httpx.ASGITransport(app=metrics_asgi_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/metrics")).status_code == 405
        assert (await client.get("/metrics")).status_code == 200


def count_for(text: str, path: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("api_request_duration_seconds_count{") and f'path="{path}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_uvicorn_workers_in_multiprocess_mode_add_up(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    requests_sent = 300
    with run_uvicorn(
        tmp_path, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(directory)}
    ) as server:
        pids: set[int] = set()
        # A new connection per request lets the kernel spread them over both workers.
        for index in range(requests_sent):
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            connection.request("GET", f"/api/kr/stocks/{index}")
            pids.add(json.loads(connection.getresponse().read())["pid"])
            connection.close()
        assert len(pids) == 2, "both workers should have served requests"
        for _ in range(4):  # whichever worker answers, it reports everybody's counts
            text = httpx.get(f"{server.url}/metrics").text
            assert count_for(text, "/api/kr/stocks/{ticker}") == requests_sent
        in_progress = re.findall(r"api_requests_in_progress\{[^}]*\} (\S+)", text)
        assert in_progress
        assert all(float(value) == 0.0 for value in in_progress)
