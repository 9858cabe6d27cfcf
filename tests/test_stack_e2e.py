"""End to end: app -> Prometheus (e2e rules) -> Alertmanager (rendered config) -> receivers.

Real Prometheus and Alertmanager from Debian's packages run as plain processes on
free loopback ports with their own data directories; the app is
tests/stack_e2e_app.py under uvicorn, producing every metric through stackwatch's
own code paths. The rules are alerts/rules-e2e (the production rules with every
duration divided by 30), so a 5-minute P95 alert fires after 10 s here.

The tests run in file order on one stack: dashboards first, then the latency
breach (alert fires, is routed to chat with path and severity, `stackwatch gate`
fails; latency removed, the alert resolves and the gate passes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import yaml

from stackwatch import alertmanager, dashboards, slo
from stackwatch.render import E2E_RULES_DIR, dump_yaml
from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
        reason="Debian's prometheus and prometheus-alertmanager are not installed "
        "(.ci/install-prometheus.sh installs them)",
    ),
]

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "stackwatch-e2e"
SLOW_PATH = "/api/items/{item_id}"
INJECTED_LATENCY_S = 0.6  # inside the (0.5, 0.75] bucket: P95 over 0.5 s, P99 under 1 s
# Grafana fills these in; any value that spans a few scrapes does for the check.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$service": SERVICE}


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (httpx.HTTPError, ValueError, KeyError) as error:
            last_error, value = error, None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} ({last_error})")


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free ports (free_port alone may hand out one port twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class _Receiver(BaseHTTPRequestHandler):
    server: ReceiverServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.messages.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class ReceiverServer(ThreadingHTTPServer):
    """The pager and chat webhooks: records every notification by path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def received(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for where, body in self.messages if where == path]


def chat_texts(receiver: ReceiverServer) -> list[str]:
    """The text of every Slack-style attachment the chat webhook got."""
    return [
        attachment.get("text", "")
        for body in receiver.received("/chat")
        for attachment in body.get("attachments", [])
    ]


@dataclass
class Stack:
    app_url: str
    prometheus_url: str
    alertmanager_url: str
    receiver: ReceiverServer
    stop_traffic: threading.Event = field(default_factory=threading.Event)

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.prometheus_url}/api/v1/query", params={"query": promql}, timeout=10
        )
        body = response.json()
        assert body["status"] == "success", (promql, body)
        return list(body["data"]["result"])

    def alerts(self, name: str, state: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.prometheus_url}/api/v1/alerts", timeout=10).json()
        return [
            alert
            for alert in body["data"]["alerts"]
            if alert["labels"]["alertname"] == name and alert["state"] == state
        ]


def _start(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def _ready(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def _traffic(stack: Stack) -> None:
    """Bounded background load: the items endpoint steadily, the others now and then."""
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=stack.app_url, timeout=10) as client:
        round_number = 0
        while not stack.stop_traffic.is_set() and time.monotonic() < deadline:
            round_number += 1
            try:
                client.get(f"/api/items/{round_number % 7}")
                if round_number % 4 == 0:
                    client.get("/api/quotes/005930")
                    client.get("/api/report")
                    client.post("/api/tasks")
                    client.get("/api/boom")
            except httpx.HTTPError:
                pass  # the app restarting or slow is what some tests cause
            time.sleep(0.05)


def _items_traffic(stack: Stack) -> None:
    """A second client on the items endpoint, so the slow path keeps a steady rate."""
    deadline = time.monotonic() + 300
    with httpx.Client(base_url=stack.app_url, timeout=10) as client:
        while not stack.stop_traffic.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                client.get("/api/items/1")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    prefix = f"swtest:{uuid.uuid4().hex[:12]}"
    database = f"sw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    processes: list[subprocess.Popen[bytes]] = []
    receiver = ReceiverServer()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    app_port, prometheus_port, alertmanager_port = distinct_free_ports(3)
    stack = Stack(
        app_url=f"http://127.0.0.1:{app_port}",
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        alertmanager_url=f"http://127.0.0.1:{alertmanager_port}",
        receiver=receiver,
    )
    threads: list[threading.Thread] = []
    try:
        env = {
            **os.environ,
            "E2E_PREFIX": prefix,
            "E2E_REDIS_URL": REDIS_URL,
            "E2E_DATABASE_URL": f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{database}",
            "OTEL_TRACES_EXPORTER": "none",
            "STACKWATCH_LOG_LEVEL": "warning",
        }
        processes.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.stack_e2e_app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(app_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                work / "app.log",
                env,
            )
        )
        receiver_url = f"http://127.0.0.1:{receiver.server_address[1]}"
        config = alertmanager.config(
            alertmanager.Receivers(
                pager_url=f"{receiver_url}/pager", chat_url=f"{receiver_url}/chat"
            ),
            alertmanager.FAST,
            templates=str(ROOT / "alerts/templates/*.tmpl"),
        )
        (work / "alertmanager.yml").write_text(dump_yaml(config, "alertmanager.py"))
        processes.append(
            _start(
                [
                    "prometheus-alertmanager",
                    f"--config.file={work / 'alertmanager.yml'}",
                    f"--storage.path={work / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",
                ],
                work / "alertmanager.log",
            )
        )
        prometheus_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / E2E_RULES_DIR / "*.yml")],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}
                ]
            },
            "scrape_configs": [
                {
                    "job_name": "app",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{app_port}"], "labels": {"service": SERVICE}}
                    ],
                }
            ],
        }
        (work / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
        processes.append(
            _start(
                [
                    "prometheus",
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--enable-feature=exemplar-storage",
                    "--rules.alert.resend-delay=1s",
                ],
                work / "prometheus.log",
            )
        )
        wait_for(lambda: _ready(f"{stack.app_url}/metrics"), 60, "the app")
        wait_for(lambda: _ready(f"{stack.alertmanager_url}/-/ready"), 30, "Alertmanager")
        wait_for(lambda: _ready(f"{stack.prometheus_url}/-/ready"), 30, "Prometheus")
        httpx.post(f"{stack.app_url}/seed/once", timeout=10).raise_for_status()
        threads = [
            threading.Thread(target=_traffic, args=(stack,), daemon=True),
            threading.Thread(target=_items_traffic, args=(stack,), daemon=True),
        ]
        for thread in threads:
            thread.start()
        yield stack
    finally:
        stack.stop_traffic.set()
        for thread in threads:
            thread.join(15)
        for process in reversed(processes):
            _stop(process)
        receiver.shutdown()
        receiver.server_close()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL)
        try:
            for pattern in (f"{prefix}*", f"_kombu.binding.{prefix}*", f"_kombu.*{prefix}*"):
                for key in client.scan_iter(match=pattern, count=500):
                    client.unlink(key)
        finally:
            client.close()


def _grafana_expression(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_every_dashboard_panel_query_returns_data(stack: Stack) -> None:
    queries = [
        (document["uid"], title, _grafana_expression(expr))
        for document in dashboards.all_dashboards()
        for title, expr in dashboards.panel_queries(document)
    ]

    def empty() -> list[str]:
        return [f"{uid} / {title}: {expr}" for uid, title, expr in queries if not stack.query(expr)]

    wait_for(lambda: not empty(), 90, "every panel query to return data", interval_s=2)


def test_latency_histogram_carries_trace_exemplars(stack: Stack) -> None:
    def exemplars() -> list[dict[str, Any]]:
        response = httpx.get(
            f"{stack.prometheus_url}/api/v1/query_exemplars",
            params={
                "query": f'api_request_duration_seconds_bucket{{service="{SERVICE}"}}',
                "start": time.time() - 120,
                "end": time.time(),
            },
            timeout=10,
        )
        return [e for series in response.json()["data"] for e in series["exemplars"]]

    found = wait_for(exemplars, 30, "exemplars on api_request_duration_seconds")
    assert all(len(e["labels"]["trace_id"]) == 32 for e in found)


def _gate(stack: Stack, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stackwatch.cli",
            "gate",
            "--prometheus",
            stack.prometheus_url,
            "--window",
            "10s",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _p95_of(stack: Stack) -> list[dict[str, Any]]:
    record = slo.gate_by_key("api_latency_p95").record
    return stack.query(f'{record}{{service="{SERVICE}", path="{SLOW_PATH}"}} > 0.5')


def test_latency_breach_fires_is_routed_and_resolves(stack: Stack) -> None:
    alert = slo.gate_by_key("api_latency_p95").alert
    wait_for(lambda: stack.query(f'up{{service="{SERVICE}"}} == 1'), 30, "the app to be scraped")
    assert not stack.alerts(alert, "firing"), "the P95 alert fired before any latency was injected"

    httpx.post(
        f"{stack.app_url}/control/latency", params={"seconds": INJECTED_LATENCY_S}
    ).raise_for_status()
    try:
        wait_for(lambda: _p95_of(stack), 60, "the recorded P95 of the slow path to pass 500 ms")
        firing = wait_for(lambda: stack.alerts(alert, "firing"), 60, f"{alert} to fire")
        assert {(a["labels"]["path"], a["labels"]["severity"]) for a in firing} == {
            (SLOW_PATH, "warning")
        }

        message = wait_for(
            lambda: [t for t in chat_texts(stack.receiver) if f"FIRING {alert}" in t],
            30,
            "the chat webhook to get the alert",
        )[0]
        assert f"severity=warning service={SERVICE} path={SLOW_PATH}" in message
        assert "P95 latency is" in message
        assert "runbook" in message.lower()
        assert not any(alert in json.dumps(body) for body in stack.receiver.received("/pager")), (
            "a warning reached the pager"
        )

        during = _gate(stack, "--json")
        assert during.returncode == 1, during.stdout + during.stderr
        verdicts = {v["gate"]: v for v in json.loads(during.stdout)}
        assert verdicts["api_latency_p95"]["status"] == "fail"
        assert {b["labels"]["path"] for b in verdicts["api_latency_p95"]["breaches"]} == {SLOW_PATH}
        table = _gate(stack, "--gate", "api_latency_p95")
        assert table.returncode == 1
        assert "fail" in table.stdout
    finally:
        httpx.post(f"{stack.app_url}/control/latency", params={"seconds": 0}).raise_for_status()

    wait_for(
        lambda: not stack.alerts(alert, "firing") and not stack.alerts(alert, "pending"),
        60,
        f"{alert} to resolve in Prometheus",
    )
    wait_for(
        lambda: [t for t in chat_texts(stack.receiver) if f"RESOLVED {alert}" in t],
        30,
        "the chat webhook to get the resolution",
    )
    after = wait_for(
        lambda: (r := _gate(stack, "--json")).returncode == 0 and r, 30, "stackwatch gate to pass"
    )
    statuses = {v["gate"]: v["status"] for v in json.loads(after.stdout)}
    assert statuses["api_latency_p95"] == "pass", statuses


def test_critical_alerts_go_to_the_pager(stack: Stack) -> None:
    # /api/boom answers 503 to every call: ApiErrorRateHigh (critical) fires for it.
    alert = slo.gate_by_key("api_error_ratio").alert
    pages = wait_for(
        lambda: [
            a
            for body in stack.receiver.received("/pager")
            for a in body["alerts"]
            if a["labels"]["alertname"] == alert and a["status"] == "firing"
        ],
        60,
        f"{alert} on the pager webhook",
    )
    assert {(a["labels"]["path"], a["labels"]["severity"]) for a in pages} == {
        ("/api/boom", "critical")
    }
    assert all(a["annotations"]["runbook_url"].endswith("#apierrorratehigh") for a in pages)
