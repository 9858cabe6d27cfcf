"""``opentelemetry-instrument uvicorn app:app`` on an app that never calls stackwatch."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.uvicorn_server import run_uvicorn

pytestmark = pytest.mark.integration


def test_opentelemetry_instrument_gives_request_ids_metrics_and_one_server_span(
    tmp_path: Path,
) -> None:
    env = {
        "OTEL_SERVICE_NAME": "plain-app",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    with run_uvicorn(
        tmp_path, env=env, app="tests.support.plain_app:app", auto_instrument=True
    ) as server:
        response = httpx.get(f"{server.url}/hello/world", headers={"X-Request-ID": "auto-42"})
        assert response.headers["x-request-id"] == "auto-42"
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'path="/hello/{name}"' in metrics
        deadline = time.monotonic() + 10
        while '"request.id": "auto-42"' not in server.raw_log() and time.monotonic() < deadline:
            time.sleep(0.1)
        output = server.raw_log()
    assert '"request.id": "auto-42"' in output
    # one SERVER span per request: the readiness probe, the request, and nothing doubled
    server_spans = output.count('"kind": "SpanKind.SERVER"')
    assert server_spans == output.count('"name": "GET /echo-headers"') + 1
    assert output.count('"name": "GET /hello/{name}"') == 1
