"""`stackwatch gate`: exit codes and messages a CI pipeline relies on.

A breach (exit 1) and a pass (exit 0) against live data are proven end to end in
tests/test_stack_e2e.py; here: the cases where there is nothing to judge.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stackwatch import slo
from stackwatch.gate import format_value
from tests.conftest import free_port


def gate(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stackwatch.cli", "gate", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def empty_prometheus(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus that scrapes nothing."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (.ci/install-prometheus.sh installs it)")
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 1s\n")
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.integration
def test_gate_without_any_data_is_an_error_not_a_pass(empty_prometheus: str) -> None:
    run = gate("--prometheus", empty_prometheus, "--json")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "no gate had data" in run.stderr
    assert '"status": "no data"' in run.stdout
    table = gate("--prometheus", empty_prometheus, "--gate", "api_latency_p95")
    assert table.returncode == 2
    assert "API latency P95 per path" in table.stdout
    assert "no data" in table.stdout


def test_unreachable_prometheus_fails_with_one_line() -> None:
    run = gate("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 2
    assert run.stderr.startswith("stackwatch gate: cannot reach Prometheus")
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--window", "an hour"], "not a duration"),
        (["--gate", "latency"], "unknown gate"),
    ],
)
def test_bad_options_print_usage(arguments: list[str], message: str) -> None:
    run = gate("--prometheus", "http://127.0.0.1:9", *arguments)
    assert run.returncode == 2
    assert "Usage:" in run.stderr
    assert message in run.stderr


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("api_latency_p95", 0.625, "625 ms"),
        ("cache_hit_ratio", 0.8123, "81.23 %"),
        ("cache_memory", 600 * 1024 * 1024, "600.0 MiB"),
        ("slow_queries", 12, "12.0 / day"),
    ],
)
def test_values_are_shown_in_the_gate_unit(key: str, value: float, text: str) -> None:
    assert format_value(slo.gate_by_key(key), value) == text
