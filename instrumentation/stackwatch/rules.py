"""Prometheus recording and alerting rules, rendered from the gates in :mod:`stackwatch.slo`.

One rule file per area (api, cache, database, celery) plus ``slo.yml`` with the
multiwindow multi-burn-rate alerts of the latency objectives. Recording rules
follow Prometheus's ``level:metric:operations`` naming; every alert carries a
``severity`` label, keeps the ``service`` / ``path`` / ``namespace`` labels of its
series and has summary, description, runbook_url and dashboard annotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stackwatch import slo

SLO_FILE = "slo"


@dataclass(frozen=True)
class Links:
    """Where alert annotations point: the Grafana base URL and the runbook page."""

    grafana_url: str = slo.DEFAULT_GRAFANA_URL
    runbook_url: str = slo.DEFAULT_RUNBOOK_URL

    def dashboard(self, uid: str) -> str:
        """A dashboard link filtered on the alert's service (a Go template)."""
        return f"{self.grafana_url.rstrip('/')}/d/{uid}?var-service={{{{ $labels.service }}}}"

    def runbook(self, anchor: str) -> str:
        """The runbook section of one alert."""
        return f"{self.runbook_url}#{anchor}"


def _group(name: str, rules: list[dict[str, Any]], variant: slo.Variant) -> dict[str, Any]:
    group: dict[str, Any] = {"name": name}
    if variant.evaluation_interval_s is not None:
        group["interval"] = slo.format_duration(variant.evaluation_interval_s)
    group["rules"] = rules
    return group


def _annotations(
    summary: str, description: str, uid: str, anchor: str, links: Links
) -> dict[str, str]:
    return {
        "summary": summary,
        "description": description,
        "runbook_url": links.runbook(anchor),
        "dashboard": links.dashboard(uid),
    }


def gate_alert(gate: slo.Gate, variant: slo.Variant, links: Links) -> dict[str, Any]:
    """The alerting rule of one gate."""
    rule: dict[str, Any] = {"alert": gate.alert, "expr": gate.alert_expr(variant)}
    if gate.for_s:
        rule["for"] = variant.duration(gate.for_s)
    rule["labels"] = {"severity": gate.severity}
    rule["annotations"] = _annotations(
        gate.summary, gate.description, gate.dashboard_uid, gate.runbook_anchor(), links
    )
    return rule


def area_groups(area: slo.Area, variant: slo.Variant, links: Links) -> list[dict[str, Any]]:
    """The recording and alerting groups of one area."""
    gates = [gate for gate in slo.GATES if gate.area == area]
    recording = [
        {"record": gate.record, "expr": gate.measure_over(variant.duration(gate.alert_window_s))}
        for gate in gates
        if gate.record
    ]
    groups = []
    if recording:
        groups.append(_group(f"stackwatch-{area}-recording", recording, variant))
    alerts = [gate_alert(gate, variant, links) for gate in gates]
    groups.append(_group(f"stackwatch-{area}-alerts", alerts, variant))
    return groups


BURN_RATE_ALERT = "ApiLatencyErrorBudgetBurn"
_BURN_CONSEQUENCE = {
    "critical": "At this rate the 30-day error budget is gone within days: act now.",
    "warning": "At this rate the 30-day error budget runs out before the month ends.",
}


def _burn_condition(objective: slo.LatencySlo, window: slo.BurnRateWindow) -> str:
    limit = f"{window.factor * objective.error_budget:.6g}"
    selector = f'{{slo="{objective.name}"}}'
    return (
        f"({objective.record_name(window.long_s)}{selector} > {limit}"
        f" and {objective.record_name(window.short_s)}{selector} > {limit})"
    )


def slo_groups(variant: slo.Variant, links: Links) -> list[dict[str, Any]]:
    """Error-ratio recording rules and burn-rate alerts for every latency objective.

    The alert fires when both the long and the short window burn the error budget
    faster than the factor (the short window makes it resolve soon after a fix).
    Windows keep their production names in the test variant; only the ranges shrink.
    """
    recording: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    uid = slo.dashboard_uid("api")
    for objective in slo.LATENCY_SLOS:
        recording.extend(
            {
                "record": objective.record_name(window_s),
                "expr": objective.error_ratio(variant.duration(window_s)),
                "labels": {"slo": objective.name},
            }
            for window_s in objective.all_windows_s()
        )
        for severity in ("critical", "warning"):
            conditions = [w for w in objective.windows if w.severity == severity]
            share = f"{objective.objective:.0%}"
            alerts.append(
                {
                    "alert": BURN_RATE_ALERT,
                    "expr": "\n  or ".join(_burn_condition(objective, w) for w in conditions),
                    "labels": {"severity": severity, "slo": objective.name},
                    "annotations": _annotations(
                        f"{{{{ $labels.service }}}} burns its {objective.name} error budget"
                        f" {'fast' if severity == 'critical' else 'steadily'}",
                        f"{share} of requests must finish within {objective.le_label}s."
                        f" {_BURN_CONSEQUENCE[severity]}",
                        uid,
                        BURN_RATE_ALERT.lower(),
                        links,
                    ),
                }
            )
    return [
        _group("stackwatch-slo-recording", recording, variant),
        _group("stackwatch-slo-alerts", alerts, variant),
    ]


def rule_files(variant: slo.Variant, links: Links | None = None) -> dict[str, dict[str, Any]]:
    """Every rule file of ``variant``: ``{file stem: {"groups": [...]}}``."""
    links = links or Links()
    files: dict[str, dict[str, Any]] = {
        area: {"groups": area_groups(area, variant, links)}
        for area in ("api", "cache", "database", "celery")
    }
    files[SLO_FILE] = {"groups": slo_groups(variant, links)}
    return files


def alert_names() -> list[str]:
    """Every alert the rule files define."""
    return [gate.alert for gate in slo.GATES] + [BURN_RATE_ALERT]
