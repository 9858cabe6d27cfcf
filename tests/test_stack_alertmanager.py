"""alerts/alertmanager.yml: valid for amtool, routed by severity, receivers from the environment.

The inhibition and the notification templates are checked on a real Alertmanager
(Debian's) posting to webhooks in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from stackwatch import alertmanager
from stackwatch.render import ALERTMANAGER_FILE, dump_yaml
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
needs_amtool = pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool is not installed (.ci/install-prometheus.sh installs it)",
)


def amtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["amtool", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stackwatch.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


@needs_amtool
def test_amtool_accepts_the_committed_config_and_its_templates() -> None:
    checked = amtool("check-config", ALERTMANAGER_FILE)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 templates" in checked.stdout
    assert "SUCCESS" in checked.stdout


@needs_amtool
def test_amtool_accepts_the_config_with_email(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "alerts" / "templates", tmp_path / "templates")
    receivers = alertmanager.Receivers(
        email_to="oncall@example.com", smtp_smarthost="mail:25", smtp_from="alerts@example.com"
    )
    (tmp_path / "am.yml").write_text(dump_yaml(alertmanager.config(receivers), "alertmanager.py"))
    checked = amtool("check-config", str(tmp_path / "am.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "alertname=ApiLatencyP99High"], "pager,chat"),
        (["severity=warning", "alertname=ApiLatencyP95High"], "chat"),
    ],
)
def test_alerts_are_routed_by_severity(labels: list[str], receivers: str) -> None:
    routed = amtool(
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_FILE}",
        f"--verify.receivers={receivers}",
        *labels,
    )
    assert routed.returncode == 0, routed.stdout + routed.stderr


def test_grouping_and_inhibitions_follow_the_plan() -> None:
    document = yaml.safe_load((ROOT / ALERTMANAGER_FILE).read_text())
    assert document["route"]["group_by"] == ["alertname", "service", "path"]
    inhibitions = {
        (tuple(rule["source_matchers"]), tuple(rule["target_matchers"])): rule["equal"]
        for rule in document["inhibit_rules"]
    }
    assert inhibitions[
        (('alertname="ApiLatencyP99High"',), ('alertname="ApiLatencyP95High"',))
    ] == [
        "service",
        "path",
    ]
    assert inhibitions[(('alertname="TargetDown"',), ('alertname!="TargetDown"',))] == ["service"]


def test_alertmanager_config_reads_receivers_from_the_environment(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "STACKWATCH_ALERT_PAGER_URL": "https://pager.example.com/hook",
        "STACKWATCH_ALERT_CHAT_URL": "https://chat.example.com/hook",
        "STACKWATCH_ALERT_EMAIL_TO": "oncall@example.com",
        "STACKWATCH_ALERT_SMTP_SMARTHOST": "mail.example.com:587",
        "STACKWATCH_ALERT_SMTP_FROM": "alerts@example.com",
    }
    output = tmp_path / "alertmanager.yml"
    rendered = cli("alertmanager-config", "--output", str(output), env=env)
    assert rendered.returncode == 0, rendered.stderr
    document = yaml.safe_load(output.read_text())
    receivers = {r["name"]: r for r in document["receivers"]}
    assert receivers["pager"]["webhook_configs"][0]["url"] == "https://pager.example.com/hook"
    assert receivers["chat"]["slack_configs"][0]["api_url"] == "https://chat.example.com/hook"
    assert receivers["chat"]["email_configs"][0]["to"] == "oncall@example.com"
    assert document["global"]["smtp_smarthost"] == "mail.example.com:587"


def test_unset_receivers_point_at_a_discard_port_not_at_anyone() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWATCH_ALERT_")}
    rendered = cli("alertmanager-config", env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert alertmanager.UNSET_PAGER_URL in rendered.stdout
    assert rendered.stdout == (ROOT / ALERTMANAGER_FILE).read_text()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "STACKWATCH_ALERT_PAGER_URL",
            "pager.example.com/hook",
            "pager_url must be an http(s) URL",
        ),
        ("STACKWATCH_ALERT_EMAIL_TO", "oncall@example.com", "need a smarthost"),
    ],
)
def test_a_bad_receiver_setting_fails_with_one_line(
    variable: str, value: str, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKWATCH_ALERT_")}
    rendered = cli("alertmanager-config", env={**env, variable: value})
    assert rendered.returncode == 2
    assert message in rendered.stderr
    assert "Traceback" not in rendered.stderr


class _Webhooks(BaseHTTPRequestHandler):
    server: WebhookServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        with self.server.lock:
            self.server.messages.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class WebhookServer(ThreadingHTTPServer):
    """Records what Alertmanager posts to /pager and /chat."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Webhooks)
        self.lock = threading.Lock()
        self.messages: list[tuple[str, dict[str, Any]]] = []

    def texts(self, path: str) -> list[str]:
        with self.lock:
            bodies = [body for where, body in self.messages if where == path]
        if path == "/chat":
            return [a["text"] for body in bodies for a in body["attachments"]]
        return [json.dumps(body) for body in bodies]


@pytest.fixture
def running_alertmanager(tmp_path: Path) -> Iterator[tuple[str, WebhookServer]]:
    """Alertmanager (Debian's) on a loopback port with the rendered config, fast timings."""
    if shutil.which("prometheus-alertmanager") is None:
        pytest.skip("prometheus-alertmanager is not installed (.ci/install-prometheus.sh)")
    webhooks = WebhookServer()
    threading.Thread(target=webhooks.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{webhooks.server_address[1]}"
    config = alertmanager.config(
        alertmanager.Receivers(pager_url=f"{base}/pager", chat_url=f"{base}/chat"),
        alertmanager.FAST,
        templates=str(ROOT / "alerts/templates/*.tmpl"),
    )
    (tmp_path / "am.yml").write_text(dump_yaml(config, "alertmanager.py"))
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus-alertmanager",
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield url, webhooks
    finally:
        process.terminate()
        process.wait(10)
        webhooks.shutdown()
        webhooks.server_close()


def _alert(name: str, severity: str, path: str, summary: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, "service": "api", "path": path},
        "annotations": {"summary": summary, "runbook_url": f"docs/x.md#{name.lower()}"},
    }


@pytest.mark.integration
def test_p99_page_silences_the_p95_warning_of_the_same_path_only(
    running_alertmanager: tuple[str, WebhookServer],
) -> None:
    url, webhooks = running_alertmanager
    alerts = [
        _alert("ApiLatencyP99High", "critical", "/slow", "P99 of /slow over 1s"),
        _alert("ApiLatencyP95High", "warning", "/slow", "P95 of /slow over 500ms"),
        _alert("ApiLatencyP95High", "warning", "/other", "P95 of /other over 500ms"),
    ]
    httpx.post(f"{url}/api/v2/alerts", json=alerts, timeout=5).raise_for_status()

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (
        any("ApiLatencyP99High" in t for t in webhooks.texts("/pager"))
        and len(webhooks.texts("/chat")) >= 2
    ):
        time.sleep(0.2)
    time.sleep(3)  # a wrongly uninhibited P95 for /slow would arrive with the next group flush

    chat = webhooks.texts("/chat")
    assert any(
        "FIRING ApiLatencyP99High severity=critical service=api path=/slow" in t for t in chat
    ), chat
    assert any(
        "FIRING ApiLatencyP95High severity=warning service=api path=/other" in t
        and "Runbook: docs/x.md#apilatencyp95high" in t
        for t in chat
    ), chat
    assert not any("ApiLatencyP95High" in t and "path=/slow" in t for t in chat), chat
    pager = webhooks.texts("/pager")
    assert pager, "the critical alert never reached the pager"
    assert not any("ApiLatencyP95High" in t for t in pager), pager
