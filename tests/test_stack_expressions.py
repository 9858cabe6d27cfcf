"""Every PromQL expression we ship reads series our code really exports.

celery-mixin's promtool tests seed a misspelled series name and still pass; here
every expression of the rendered rules and dashboards is parsed (promql-parser)
and each selector, matcher label, grouping label and ``le`` value is checked
against the metric objects of stackwatch.metrics, as prometheus-client exports
them, or against the recording rules that produce them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import promql_parser
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from stackwatch import dashboards, metrics, rules, slo

# Labels every scraped series gets from its target (compose/prometheus/prometheus.yml).
TARGET_LABELS = {"job", "instance", "service"}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$service": "x"}


@dataclass
class Series:
    labels: set[str]
    le_values: set[str] = field(default_factory=set)


def exported_series() -> dict[str, Series]:
    """Every series name stackwatch exports, with its labels, as prometheus-client writes them."""
    catalogue: dict[str, Series] = {"up": Series(set(TARGET_LABELS))}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames) | TARGET_LABELS
        name = value._name
        if value._type == "counter":
            catalogue[f"{name}_total"] = Series(labels)
            catalogue[f"{name}_created"] = Series(labels)
        elif value._type == "gauge":
            catalogue[name] = Series(labels)
        elif value._type == "histogram":
            bounds = {floatToGoString(b) for b in value._upper_bounds}
            catalogue[f"{name}_bucket"] = Series(labels | {"le"}, bounds)
            for suffix in ("_count", "_sum", "_created"):
                catalogue[f"{name}{suffix}"] = Series(labels)
    queue_family = next(iter(metrics.CeleryQueueLengthCollector(dict).describe()))
    catalogue[queue_family.name] = Series(set(queue_family._labelnames) | TARGET_LABELS)
    return catalogue


def _selectors(expr: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)
        return True

    promql_parser.walk(expr, visit)
    return found


def _grouping_labels(expr: promql_parser.Expr) -> set[str]:
    labels: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        matching = getattr(getattr(node, "modifier", None), "matching", None)
        if isinstance(node, promql_parser.BinaryExpr) and matching is not None:
            labels.update(matching.labels)
        return True

    promql_parser.walk(expr, visit)
    return labels


def problems(expression: str, catalogue: dict[str, Series]) -> list[str]:
    """What in ``expression`` does not match the catalogue (empty: all good)."""
    expr = promql_parser.parse(expression)
    found: list[str] = []
    available: set[str] = set()
    for selector in _selectors(expr):
        series = catalogue.get(selector.name)
        if series is None:
            found.append(f"{selector.name}: no such series is exported or recorded")
            continue
        available |= series.labels
        for matcher in selector.matchers.matchers:
            if matcher.name not in series.labels:
                found.append(f"{selector.name} has no label {matcher.name!r}")
            elif matcher.name == "le" and matcher.value not in series.le_values:
                found.append(f'{selector.name} has no bucket le="{matcher.value}"')
    for label in _grouping_labels(expr) - available:
        found.append(f"grouping label {label!r} is on none of the series read")
    return found


def recording_catalogue(files: dict[str, dict[str, object]]) -> dict[str, Series]:
    """Exported series plus the recording rules of ``files`` with the labels they keep."""
    catalogue = exported_series()
    for content in files.values():
        for group in content["groups"]:  # type: ignore[index]
            for rule in group["rules"]:
                if "record" in rule:
                    kept = _grouping_labels(promql_parser.parse(rule["expr"])) - {"le"}
                    kept |= set(rule.get("labels", {}))
                    catalogue[rule["record"]] = Series(kept)
    return catalogue


def rule_expressions(files: dict[str, dict[str, object]]) -> Iterable[tuple[str, str]]:
    for content in files.values():
        for group in content["groups"]:  # type: ignore[index]
            for rule in group["rules"]:
                yield rule.get("alert") or rule["record"], rule["expr"]


@pytest.mark.parametrize("variant", slo.VARIANTS, ids=lambda v: v.name)
def test_every_rule_reads_series_our_code_exports(variant: slo.Variant) -> None:
    files = rules.rule_files(variant)
    catalogue = recording_catalogue(files)  # type: ignore[arg-type]
    found = {
        name: issues
        for name, expr in rule_expressions(files)  # type: ignore[arg-type]
        if (issues := problems(expr, catalogue))
    }
    assert found == {}


def test_every_dashboard_query_reads_series_our_code_exports() -> None:
    catalogue = recording_catalogue(rules.rule_files(slo.PRODUCTION))  # type: ignore[arg-type]
    found = {}
    for document in dashboards.all_dashboards():
        for title, expr in dashboards.panel_queries(document):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if issues := problems(expr, catalogue):
                found[f"{document['uid']} / {title}"] = issues
    assert found == {}


def test_every_alert_keeps_the_labels_its_routing_and_annotations_use() -> None:
    catalogue = recording_catalogue(rules.rule_files(slo.PRODUCTION))  # type: ignore[arg-type]
    for gate in slo.GATES:
        selectors = _selectors(promql_parser.parse(gate.alert_expr(slo.PRODUCTION)))
        kept = set.union(*(catalogue[s.name].labels for s in selectors))
        grouping = _grouping_labels(promql_parser.parse(gate.alert_expr(slo.PRODUCTION)))
        if grouping:
            kept &= grouping | {"le"}
        assert set(gate.labels) <= kept, gate.alert
        assert "service" in kept, f"{gate.alert} drops the service label Alertmanager groups by"


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("rate(api_request_duration_second_bucket[5m])", "no such series"),
        ('rate(cache_requests_total{outcome="hit"}[5m])', "no label 'outcome'"),
        ('api_request_duration_seconds_bucket{le="1"}', 'no bucket le="1"'),
        ("sum by (route) (rate(api_request_duration_seconds_count[5m]))", "'route'"),
        ('celery_queue_length{task="x"}', "no label 'task'"),
    ],
)
def test_expression_check_rejects_what_nothing_exports(expression: str, complaint: str) -> None:
    found = problems(expression, exported_series())
    assert any(complaint in problem for problem in found), found


def test_latency_objectives_read_buckets_prometheus_client_really_writes() -> None:
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    histogram = Histogram(
        metrics.api_request_duration_seconds._name,
        "copy",
        ["path"],
        buckets=metrics.LATENCY_BUCKETS_S,
        registry=registry,
    )
    histogram.labels("/x").observe(0.1)
    exposition = generate_latest(registry).decode()
    for objective in slo.LATENCY_SLOS:
        assert f'le="{objective.le_label}"' in exposition


def test_latency_objective_on_a_missing_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="not a bucket"):
        slo.LatencySlo("latency-300ms", le_s=0.3, objective=0.95)


def test_p99_gate_can_fire_because_buckets_exist_above_one_second() -> None:
    p99 = slo.gate_by_key("api_latency_p99")
    assert max(b for b in metrics.LATENCY_BUCKETS_S if b != float("inf")) > p99.threshold


def test_service_variables_list_values_of_an_exported_series() -> None:
    catalogue = exported_series()
    for document in dashboards.all_dashboards():
        service = next(v for v in document["templating"]["list"] if v["name"] == "service")
        definition = service["query"]["query"]
        metric = definition.removeprefix("label_values(").removesuffix(", service)")
        assert metric in catalogue, definition
        assert "service" in catalogue[metric].labels
