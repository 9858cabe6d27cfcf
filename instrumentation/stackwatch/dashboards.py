"""Grafana dashboards (API, Cache, Database, Celery) built as code.

Plain dashboard JSON, because the model is small and stable: every panel reads
the metric contract of :mod:`stackwatch.metrics`, every threshold line comes from
a gate in :mod:`stackwatch.slo`, every query goes through the ``$datasource``
variable and filters on ``$service``. Latency panels ask for exemplars; the
provisioned Prometheus datasource links their ``trace_id`` to the Jaeger
datasource (compose/grafana/provisioning), so a dot on a P95 spike opens the trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stackwatch import metrics, slo

#: Grafana 12's dashboard schema version.
SCHEMA_VERSION = 41
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SERVICE = 'service=~"$service"'
RATE = "$__rate_interval"

_API = metrics.api_request_duration_seconds._name
_CACHE = f"{metrics.cache_requests_total._name}_total"
_CACHE_OP = metrics.cache_operation_duration_seconds._name
_DB = metrics.db_query_duration_seconds._name
_SLOW = f"{metrics.db_slow_queries_total._name}_total"
_NPLUSONE = f"{metrics.db_n_plus_one_total._name}_total"
_PER_REQUEST = metrics.db_queries_per_request._name
_TASKS = f"{metrics.celery_tasks_total._name}_total"
_TASK_TIME = metrics.celery_task_duration_seconds._name


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str
    exemplar: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel: its queries, unit, and the gate thresholds drawn on it."""

    title: str
    description: str
    queries: Sequence[Query]
    unit: str
    thresholds: Sequence[tuple[float, str]] = ()
    base_color: str = "green"
    kind: str = "timeseries"
    width: int = 12


def _ratio(numerator: str, denominator: str) -> str:
    """``numerator / denominator`` that reads 0, not "no data", while the numerator is empty."""
    return f"({numerator} or {denominator} * 0) / {denominator}"


def _quantile(quantile: float, metric: str, by: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by ({by}, le) "
        f"(rate({metric}_bucket{{{SERVICE}}}[{RATE}])))"
    )


def _gate(key: str) -> tuple[float, str]:
    gate = slo.gate_by_key(key)
    return gate.threshold, "orange" if gate.severity == "warning" else "red"


def _api_panels() -> list[Panel]:
    total = f"sum by (path) (rate({_API}_count{{{SERVICE}}}[{RATE}]))"
    errors = f'sum by (path) (rate({_API}_count{{{SERVICE}, status=~"5.."}}[{RATE}]))'
    return [
        Panel(
            "Requests per second by path",
            "Throughput per route template.",
            [Query(total, "{{path}}")],
            "reqps",
        ),
        Panel(
            "5xx ratio by path",
            "Share of requests answered with a 5xx.",
            [Query(_ratio(errors, total), "{{path}}")],
            "percentunit",
            [_gate("api_error_ratio")],
        ),
        Panel(
            "Latency P50 / P95 / P99 by path",
            "Lines at the plan's gates: P95 under 500 ms, P99 under 1 s. "
            "Exemplar dots open the request's trace in Jaeger.",
            [
                Query(
                    _quantile(q, _API, "path"), f"P{round(q * 100)} {{{{path}}}}", exemplar=q > 0.5
                )
                for q in (0.5, 0.95, 0.99)
            ],
            "s",
            [_gate("api_latency_p95"), _gate("api_latency_p99")],
            width=24,
        ),
        Panel(
            "Requests in progress",
            "Requests being served right now.",
            [
                Query(
                    f"sum by (path) ({metrics.api_requests_in_progress._name}{{{SERVICE}}})",
                    "{{path}}",
                )
            ],
            "short",
        ),
        Panel(
            "Latency SLO: slow-request ratio (1h)",
            "Share of requests over each objective's bound; budgets: 5% (500 ms), 1% (1 s).",
            [Query(f"{slo.LATENCY_SLOS[0].record_name(slo.HOUR)}{{{SERVICE}}}", "{{slo}}")],
            "percentunit",
        ),
    ]


def _cache_panels() -> list[Panel]:
    lookups = f"sum by (namespace) (rate({_CACHE}{{{SERVICE}}}[{RATE}]))"
    hits = f'sum by (namespace) (rate({_CACHE}{{{SERVICE}, result="hit"}}[{RATE}]))'
    return [
        Panel(
            "Hit ratio by namespace",
            "The plan's gate: at least 80% hits per namespace.",
            [Query(_ratio(hits, lookups), "{{namespace}}")],
            "percentunit",
            [(slo.gate_by_key("cache_hit_ratio").threshold, "green")],
            base_color="red",
        ),
        Panel(
            "Lookups by result",
            "Hits, misses and errors (Redis unreachable or breaker open).",
            [
                Query(
                    f"sum by (namespace, result) (rate({_CACHE}{{{SERVICE}}}[{RATE}]))",
                    "{{namespace}} {{result}}",
                )
            ],
            "ops",
        ),
        Panel(
            "Redis operation latency P95",
            "Time spent in Redis per cache operation.",
            [
                Query(
                    _quantile(0.95, _CACHE_OP, "namespace, operation"),
                    "{{namespace}} {{operation}}",
                )
            ],
            "s",
        ),
        Panel(
            "Redis memory",
            "used_memory against the plan's 500 MiB gate.",
            [
                Query(
                    f"max by (service) ({metrics.cache_memory_bytes._name}{{{SERVICE}}})",
                    "{{service}}",
                )
            ],
            "bytes",
            [_gate("cache_memory")],
        ),
        Panel(
            "Circuit breaker",
            "Open: Redis is bypassed and every call reaches the database.",
            [Query(f"max({metrics.cache_circuit_open._name}{{{SERVICE}}})", "open")],
            "short",
            [(1, "red")],
            kind="stat",
        ),
    ]


def _database_panels() -> list[Panel]:
    slow_per_day = f"sum by (service) (increase({_SLOW}{{{SERVICE}}}[1d]))"
    per_request = (
        f"sum by (path) (rate({_PER_REQUEST}_sum{{{SERVICE}}}[{RATE}]))"
        f" / sum by (path) (rate({_PER_REQUEST}_count{{{SERVICE}}}[{RATE}]))"
    )
    return [
        Panel(
            "Query latency P95 / P99 by operation",
            "Exemplars link slow statements to their traces.",
            [
                Query(
                    _quantile(q, _DB, "operation"),
                    f"P{round(q * 100)} {{{{operation}}}}",
                    exemplar=True,
                )
                for q in (0.95, 0.99)
            ],
            "s",
        ),
        Panel(
            "Slow queries in the last 24 h",
            "The plan's gate: fewer than 10 a day.",
            [Query(slow_per_day, "{{service}}")],
            "short",
            [_gate("slow_queries")],
        ),
        Panel(
            "Slow queries by operation",
            "Statements over STACKWATCH_SLOW_QUERY_MS, per second.",
            [Query(f"sum by (operation) (rate({_SLOW}{{{SERVICE}}}[{RATE}]))", "{{operation}}")],
            "ops",
        ),
        Panel(
            "N+1 patterns by route",
            "Detections of repeated statements within one request.",
            [Query(f"sum by (path) (increase({_NPLUSONE}{{{SERVICE}}}[{RATE}]))", "{{path}}")],
            "short",
        ),
        Panel(
            "Queries per request by route",
            "Mean and P95 statements per request or task.",
            [
                Query(per_request, "mean {{path}}"),
                Query(_quantile(0.95, _PER_REQUEST, "path"), "P95 {{path}}"),
            ],
            "short",
            width=24,
        ),
    ]


def _celery_panels() -> list[Panel]:
    finished = f'sum by (task) (rate({_TASKS}{{{SERVICE}, state=~"succeeded|failed"}}[{RATE}]))'
    failed = f'sum by (task) (rate({_TASKS}{{{SERVICE}, state="failed"}}[{RATE}]))'
    queue = metrics.CeleryQueueLengthCollector.name
    return [
        Panel(
            "Throughput by queue",
            "Finished task runs per second, by queue and outcome.",
            [
                Query(
                    f"sum by (queue, state) (rate({_TASKS}{{{SERVICE}}}[{RATE}]))",
                    "{{queue}} {{state}}",
                )
            ],
            "ops",
        ),
        Panel(
            "Failure ratio by task",
            "The plan's gate: under 1% of runs fail.",
            [Query(_ratio(failed, finished), "{{task}}")],
            "percentunit",
            [_gate("celery_failure_ratio")],
        ),
        Panel(
            "Task run time P95 by task",
            "Time from task start to its end.",
            [Query(_quantile(0.95, _TASK_TIME, "queue, task"), "{{queue}} {{task}}")],
            "s",
        ),
        Panel(
            "Queue length",
            "Messages waiting in the broker, read when Prometheus scrapes.",
            [Query(f"max by (queue) ({queue}{{{SERVICE}}})", "{{queue}}")],
            "short",
            [_gate("celery_queue_backlog")],
        ),
    ]


def _thresholds(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": panel.base_color, "value": None}]
    steps.extend({"color": color, "value": value} for value, color in panel.thresholds)
    return {"mode": "absolute", "steps": steps}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if panel.kind == "timeseries":
        custom = {
            "thresholdsStyle": {"mode": "line" if panel.thresholds else "off"},
            "fillOpacity": 5,
        }
    options: dict[str, Any] = (
        {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
        if panel.kind == "timeseries"
        else {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
        }
    )
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "min": 0,
                "custom": custom,
                "thresholds": _thresholds(panel),
            },
            "overrides": [],
        },
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend,
                "range": True,
                "exemplar": query.exemplar,
            }
            for index, query in enumerate(panel.queries)
        ],
    }


def _variables(service_metric: str) -> dict[str, Any]:
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Prometheus",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
            },
            {
                "name": "service",
                "label": "Service",
                "type": "query",
                "datasource": DATASOURCE,
                "definition": f"label_values({service_metric}, service)",
                "query": {"query": f"label_values({service_metric}, service)", "refId": "service"},
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "current": {"text": "All", "value": "$__all"},
                "refresh": 2,
                "sort": 1,
            },
        ]
    }


def dashboard(
    area: slo.Area, title: str, service_metric: str, panels: Sequence[Panel]
) -> dict[str, Any]:
    """A complete dashboard document with a stable uid (alert annotations link to it)."""
    laid_out = []
    x = y = 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        laid_out.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
    return {
        "uid": slo.dashboard_uid(area),
        "title": title,
        "tags": ["stackwatch"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [
            {
                "title": "stackwatch",
                "type": "dashboards",
                "tags": ["stackwatch"],
                "asDropdown": True,
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": _variables(service_metric),
        "panels": laid_out,
    }


def all_dashboards() -> list[dict[str, Any]]:
    """The four dashboards, in the order of the plan's phases."""
    return [
        dashboard("api", "stackwatch / API", f"{_API}_count", _api_panels()),
        dashboard("cache", "stackwatch / Cache", _CACHE, _cache_panels()),
        dashboard("database", "stackwatch / Database", f"{_DB}_count", _database_panels()),
        dashboard("celery", "stackwatch / Celery", _TASKS, _celery_panels()),
    ]


def panel_queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every target of a dashboard document."""
    return [
        (panel["title"], target["expr"])
        for panel in document["panels"]
        for target in panel["targets"]
    ]
