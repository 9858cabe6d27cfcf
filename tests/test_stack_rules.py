"""The generated rules, their promtool unit tests and `stackwatch render`.

promtool comes from Debian's ``prometheus`` package (.ci/install-prometheus.sh).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stackwatch import promtool_tests, rules, slo
from stackwatch.render import E2E_RULES_DIR, RULES_DIR, TESTS_DIR, generated_files, render

ROOT = Path(__file__).resolve().parents[1]
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (.ci/install-prometheus.sh installs it)",
)


def promtool(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *arguments], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_committed_files_are_what_render_writes() -> None:
    result = render(ROOT, check=True)
    assert result.changed == [], "run `stackwatch render` and commit the result"
    assert result.stray == []


def test_render_check_fails_on_a_hand_edited_file_and_a_stray_one(tmp_path: Path) -> None:
    for relative, content in generated_files().items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    edited = tmp_path / RULES_DIR / "api.yml"
    edited.write_text(edited.read_text().replace("> 0.5", "> 0.7"))
    (tmp_path / RULES_DIR / "old.yml").write_text("groups: []\n")

    check = subprocess.run(
        [sys.executable, "-m", "stackwatch.cli", "render", "--check", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 1
    assert f"differs: {RULES_DIR}/api.yml" in check.stdout
    assert f"{RULES_DIR}/old.yml" in check.stdout

    subprocess.run(
        [sys.executable, "-m", "stackwatch.cli", "render", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "> 0.5" in edited.read_text()


@needs_promtool
def test_promtool_accepts_every_rule_file() -> None:
    files = sorted(str(p) for d in (RULES_DIR, E2E_RULES_DIR) for p in (ROOT / d).glob("*.yml"))
    checked = promtool("check", "rules", *files)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("SUCCESS") == len(files)


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    tests = sorted(p.name for p in (ROOT / TESTS_DIR).glob("*_test.yml"))
    run = promtool("test", "rules", *tests, cwd=ROOT / TESTS_DIR)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == len(tests) == len(rules.rule_files(slo.PRODUCTION))


@needs_promtool
def test_promtool_unit_tests_catch_a_moved_threshold(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    original = (ROOT / RULES_DIR / "api.yml").read_text()
    (tmp_path / "rules" / "api.yml").write_text(original.replace("> 0.5", "> 0.7"))
    shutil.copy(ROOT / TESTS_DIR / "api_test.yml", tmp_path / "tests")
    run = promtool("test", "rules", "api_test.yml", cwd=tmp_path / "tests")
    assert run.returncode != 0
    assert "ApiLatencyP95High fires at P95 625ms" in run.stdout + run.stderr


def test_every_alert_has_a_firing_and_a_silent_scenario() -> None:
    assert promtool_tests.untested_alerts() == []


def test_scenarios_refuse_labels_the_metric_does_not_have() -> None:
    from stackwatch import metrics

    with pytest.raises(ValueError, match="no label"):
        promtool_tests.series_name(metrics.cache_requests_total, outcome="hit")


def test_expected_annotations_are_expanded_like_prometheus_does() -> None:
    expand = promtool_tests.expand
    labels = {"path": "/x", "service": "api"}
    assert expand("{{ $labels.path }} on {{ $labels.service }}", labels, None) == "/x on api"
    assert expand("{{ $value | humanizeDuration }}", labels, 0.625) == "625ms"
    assert expand("{{ $value | humanizeDuration }}", labels, 2.0) == "2s"
    assert expand("{{ $value | humanizePercentage }}", labels, 0.02) == "2%"
    assert expand("{{ $value | humanize1024 }}B", labels, 600 * 1024 * 1024) == "600MiB"
    assert expand("{{ $value | humanize }}", labels, 12.0) == "12"


def test_every_alert_has_severity_runbook_and_dashboard() -> None:
    for content in rules.rule_files(slo.PRODUCTION).values():
        for group in content["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                assert rule["labels"]["severity"] in ("critical", "warning")
                annotations = rule["annotations"]
                assert set(annotations) == {"summary", "description", "runbook_url", "dashboard"}
                assert annotations["runbook_url"].endswith("#" + rule["alert"].lower())
                assert "/d/stackwatch-" in annotations["dashboard"]


def test_runbook_anchors_exist_in_the_docs() -> None:
    page = (ROOT / "docs" / "alerts-and-dashboards.md").read_text()
    for name in rules.alert_names():
        assert f"### {name}" in page, f"docs/alerts-and-dashboards.md has no runbook for {name}"


def test_test_variant_shrinks_every_duration_of_the_production_rules() -> None:
    production, fast = rules.rule_files(slo.PRODUCTION), rules.rule_files(slo.TEST)
    p95 = slo.gate_by_key("api_latency_p95")
    assert p95.alert_expr(slo.PRODUCTION) == p95.alert_expr(slo.TEST)  # same recorded series
    assert "[5m]" in str(production["api"])
    assert "[10s]" in str(fast["api"])
    api_alerts = {r["alert"]: r for r in fast["api"]["groups"][1]["rules"]}
    assert api_alerts[p95.alert]["for"] == "10s"
    assert all(
        group["interval"] == "1s" for content in fast.values() for group in content["groups"]
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10), ("5m", 300), ("1h30m", 5400), ("1d", 86400), ("2h24m", 8640)]
)
def test_durations_round_trip(text: str, seconds: int) -> None:
    assert slo.parse_duration(text) == seconds
    assert slo.format_duration(seconds) == text


@pytest.mark.parametrize("text", ["", "5", "1x", "m5", "5m "])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        slo.parse_duration(text)


def test_gates_break_on_the_side_the_plan_says() -> None:
    assert slo.gate_by_key("api_latency_p95").breached(0.51)
    assert not slo.gate_by_key("api_latency_p95").breached(0.5)
    assert slo.gate_by_key("cache_hit_ratio").breached(0.79)
    assert not slo.gate_by_key("cache_hit_ratio").breached(0.8)
    assert slo.gate_by_key("slow_queries").breached(10)
    assert not slo.gate_by_key("slow_queries").breached(9.9)
    assert {g.key for g in slo.plan_gates()} == {
        "api_latency_p95",
        "api_latency_p99",
        "cache_hit_ratio",
        "cache_memory",
        "slow_queries",
        "celery_failure_ratio",
    }
