"""promtool unit tests for every alert, rendered next to the rules they test.

Each alert gets a scenario that breaks its gate (the alert fires with the expected
labels and annotations, its value written into the description) and one that
stays just inside it (no alert). Input series are built from the metric objects
in :mod:`stackwatch.metrics`: names, label names and ``le`` values come from the
code that exports them, so a renamed metric or label breaks these tests instead
of leaving them green against series nothing exports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from stackwatch import metrics, rules, slo

TARGET = {"job": "app", "instance": "app:8000", "service": "api"}
TARGET_LABELS = tuple(TARGET)


@dataclass(frozen=True)
class Expected:
    """One alert the scenario must produce: its labels (beyond alertname) and value."""

    labels: Mapping[str, str]
    value: float | None = None


@dataclass(frozen=True)
class Scenario:
    """Series, an evaluation time and the alerts expected then (none: must stay silent)."""

    alert: str
    title: str
    series: Sequence[dict[str, str]]
    eval_time: str
    interval: str = "1m"
    expected: Sequence[Expected] = field(default_factory=tuple)


def series_name(metric: MetricWrapperBase, suffix: str = "", **labels: str) -> str:
    """A series selector for ``metric`` as exported (``_total``, ``_bucket``...) with target labels.

    Raises:
        ValueError: when a label is not one the metric (or the scrape target) has.
    """
    allowed = (
        set(metric._labelnames) | set(TARGET_LABELS) | ({"le"} if suffix == "_bucket" else set())
    )
    unknown = set(labels) - allowed
    if unknown:
        raise ValueError(f"{metric._name} has no label {sorted(unknown)}")
    name = metric._name + suffix
    if metric._type == "counter":
        name += "_total"
    body = ",".join(f'{key}="{value}"' for key, value in {**labels, **TARGET}.items())
    return f"{name}{{{body}}}"


def counter(increment: float, steps: int) -> str:
    """promtool's notation for a counter growing by ``increment`` every interval."""
    return f"0+{floatToGoString(increment).removesuffix('.0')}x{steps}"


def gauge(value: float, steps: int) -> str:
    """promtool's notation for a constant gauge."""
    return f"{floatToGoString(value).removesuffix('.0')}x{steps}"


def latency_histogram(
    per_interval: Mapping[float, int], steps: int, **labels: str
) -> list[dict[str, str]]:
    """Bucket and count series of ``api_request_duration_seconds``.

    ``per_interval`` maps a bucket's upper bound to the requests that land in it
    each interval; every bound must be a real bucket of the histogram.
    """
    histogram = metrics.api_request_duration_seconds
    bounds = histogram._upper_bounds
    stray = set(per_interval) - set(bounds)
    if stray:
        raise ValueError(f"{sorted(stray)} are not buckets of {histogram._name}")
    series = []
    cumulative = 0
    for bound in bounds:
        cumulative += per_interval.get(bound, 0)
        name = series_name(histogram, "_bucket", le=floatToGoString(bound), **labels)
        series.append({"series": name, "values": counter(cumulative, steps)})
    series.append(
        {"series": series_name(histogram, "_count", **labels), "values": counter(cumulative, steps)}
    )
    return series


_ROUTE = {"method": "GET", "path": "/api/kr/signals", "status": "200"}


def _latency(per_interval: Mapping[float, int]) -> list[dict[str, str]]:
    return latency_histogram(per_interval, 30, **_ROUTE)


def _errors(failed: int, total: int) -> list[dict[str, str]]:
    histogram = metrics.api_request_duration_seconds
    route = {"method": "GET", "path": "/api/kr/signals"}
    return [
        {
            "series": series_name(histogram, "_count", status="500", **route),
            "values": counter(failed, 30),
        },
        {
            "series": series_name(histogram, "_count", status="200", **route),
            "values": counter(total - failed, 30),
        },
    ]


def _cache(hits: int, misses: int) -> list[dict[str, str]]:
    return [
        {
            "series": series_name(metrics.cache_requests_total, namespace="price", result=result),
            "values": counter(count, 30),
        }
        for result, count in (("hit", hits), ("miss", misses), ("error", 0))
    ]


def _tasks(succeeded: int, failed: int, retried: int) -> list[dict[str, str]]:
    labels = {"task": "signals.scan_vcp", "queue": "low"}
    return [
        {
            "series": series_name(metrics.celery_tasks_total, state=state, **labels),
            "values": counter(count, 40),
        }
        for state, count in (("succeeded", succeeded), ("failed", failed), ("retried", retried))
    ]


def _queue_length(length: int) -> list[dict[str, str]]:
    labels = ",".join(f'{k}="{v}"' for k, v in {"queue": "low", **TARGET}.items())
    return [
        {
            "series": f"{metrics.CeleryQueueLengthCollector.name}{{{labels}}}",
            "values": gauge(length, 30),
        }
    ]


def _up(value: int) -> list[dict[str, str]]:
    labels = ",".join(f'{k}="{v}"' for k, v in TARGET.items())
    return [{"series": f"up{{{labels}}}", "values": gauge(value, 10)}]


_SERVICE = {"service": TARGET["service"]}
_PATH = {**_SERVICE, "path": _ROUTE["path"]}
MIB = 1024 * 1024


def scenarios() -> list[Scenario]:
    """The breach and just-inside scenario of every alert."""
    memory = metrics.cache_memory_bytes
    slow = metrics.db_slow_queries_total
    return [
        # 10 of 100 requests in (0.5, 0.75]: P95 interpolates to 0.625 s.
        Scenario(
            "ApiLatencyP95High",
            "fires at P95 625ms",
            _latency({0.25: 90, 0.75: 10}),
            "15m",
            expected=[Expected({**_PATH, "severity": "warning"}, 0.625)],
        ),
        # 4 of 100 over 0.5 s: P95 stays in (0.25, 0.5].
        Scenario(
            "ApiLatencyP95High", "silent at P95 458ms", _latency({0.25: 90, 0.5: 6, 0.75: 4}), "15m"
        ),
        # 3 of 100 in (1, 2.5]: P99 = 1 + 1.5 * 2/3 = 2 s.
        Scenario(
            "ApiLatencyP99High",
            "fires at P99 2s",
            _latency({0.5: 97, 2.5: 3}),
            "15m",
            expected=[Expected({**_PATH, "severity": "critical"}, 2.0)],
        ),
        # 1 of 200 over 1 s: P99 = 0.75 + 0.25 * 2/3, under 1 s.
        Scenario(
            "ApiLatencyP99High", "silent at P99 917ms", _latency({0.5: 196, 1.0: 3, 2.5: 1}), "15m"
        ),
        Scenario(
            "ApiErrorRateHigh",
            "fires at 2% 5xx",
            _errors(2, 100),
            "15m",
            expected=[Expected({**_PATH, "severity": "critical"}, 0.02)],
        ),
        Scenario("ApiErrorRateHigh", "silent at 0.9% 5xx", _errors(9, 1000), "15m"),
        Scenario(
            "CacheHitRatioLow",
            "fires at 70% hits",
            _cache(70, 30),
            "20m",
            expected=[Expected({**_SERVICE, "namespace": "price", "severity": "warning"}, 0.7)],
        ),
        Scenario("CacheHitRatioLow", "silent at 81% hits", _cache(81, 19), "20m"),
        Scenario(
            "CacheMemoryHigh",
            "fires at 600MiB",
            [{"series": series_name(memory), "values": gauge(600 * MIB, 30)}],
            "10m",
            expected=[Expected({**_SERVICE, "severity": "warning"}, 600 * MIB)],
        ),
        Scenario(
            "CacheMemoryHigh",
            "silent at 499MiB",
            [{"series": series_name(memory), "values": gauge(499 * MIB, 30)}],
            "10m",
        ),
        # Hourly samples: 0.5 per hour is 12 slow queries a day; 0.375 is 9.
        Scenario(
            "SlowQueriesHigh",
            "fires at 12 a day",
            [{"series": series_name(slow, operation="SELECT"), "values": counter(0.5, 60)}],
            "36h",
            interval="1h",
            expected=[Expected({**_SERVICE, "severity": "warning"}, 12)],
        ),
        Scenario(
            "SlowQueriesHigh",
            "silent at 9 a day",
            [{"series": series_name(slow, operation="SELECT"), "values": counter(0.375, 60)}],
            "36h",
            interval="1h",
        ),
        # Retried runs are neither successes nor failures: 50 a minute change nothing.
        Scenario(
            "CeleryTaskFailureRateHigh",
            "fires at 2% failed",
            _tasks(98, 2, 50),
            "25m",
            expected=[
                Expected(
                    {**_SERVICE, "queue": "low", "task": "signals.scan_vcp", "severity": "warning"},
                    0.02,
                )
            ],
        ),
        Scenario("CeleryTaskFailureRateHigh", "silent at 0.9% failed", _tasks(991, 9, 50), "25m"),
        Scenario(
            "CeleryQueueBacklog",
            "fires at 150 waiting",
            _queue_length(150),
            "15m",
            expected=[Expected({**_SERVICE, "queue": "low", "severity": "warning"}, 150)],
        ),
        Scenario("CeleryQueueBacklog", "silent at 100 waiting", _queue_length(100), "15m"),
        Scenario(
            "TargetDown",
            "fires when up is 0",
            _up(0),
            "5m",
            expected=[Expected({**TARGET, "severity": "critical"}, 0)],
        ),
        Scenario("TargetDown", "silent when up is 1", _up(1), "5m"),
        # 80% of requests over 0.5 s burn the 5% budget 16x: page and ticket.
        Scenario(
            rules.BURN_RATE_ALERT,
            "pages at 16x burn",
            latency_histogram({0.25: 20, 0.75: 80}, 80, **_ROUTE),
            "70m",
            expected=[
                Expected({**_SERVICE, "slo": "latency-500ms", "severity": "critical"}),
                Expected({**_SERVICE, "slo": "latency-500ms", "severity": "warning"}),
            ],
        ),
        # 28%: 5.6x, under both pages (14.4x and 6x) but over the 3x ticket.
        Scenario(
            rules.BURN_RATE_ALERT,
            "tickets only at 5.6x burn",
            latency_histogram({0.25: 72, 0.75: 28}, 80, **_ROUTE),
            "70m",
            expected=[Expected({**_SERVICE, "slo": "latency-500ms", "severity": "warning"})],
        ),
        # 2% over 1 s burn the 1% budget of latency-1s 2x; latency-500ms keeps 98% inside.
        Scenario(
            rules.BURN_RATE_ALERT,
            "tickets latency-1s at 2x burn",
            latency_histogram({0.25: 98, 2.5: 2}, 100, **_ROUTE),
            "7h",
            interval="5m",
            expected=[Expected({**_SERVICE, "slo": "latency-1s", "severity": "warning"})],
        ),
        Scenario(
            rules.BURN_RATE_ALERT,
            "silent within budget",
            latency_histogram({0.25: 96, 0.75: 4}, 100, **_ROUTE),
            "7h",
            interval="5m",
        ),
    ]


# --- Go template helpers Prometheus applies to annotations, for the subset the rules use.


def _go_float(value: float) -> str:
    """Go's ``%.4g``."""
    text = f"{value:.4g}"
    return text.replace("e+0", "e+").replace("e-0", "e-")


def _humanize(value: float) -> str:
    for prefix in ("", "k", "M", "G", "T", "P", "E", "Z", "Y"):
        if abs(value) < 1000 or prefix == "Y":
            return f"{_go_float(value)}{prefix}"
        value /= 1000
    raise AssertionError("unreachable")


def _humanize_1024(value: float) -> str:
    for prefix in ("", "ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(value) < 1024 or prefix == "Yi":
            return f"{_go_float(value)}{prefix}"
        value /= 1024
    raise AssertionError("unreachable")


def _humanize_duration(seconds: float) -> str:
    if abs(seconds) >= 1:
        if abs(seconds) < 60:
            return f"{_go_float(seconds)}s"
        raise ValueError("durations over a minute are not used by the rules")
    if seconds == 0:
        return f"{_go_float(seconds)}s"
    prefix = ""
    for candidate in ("m", "u", "n"):
        if abs(seconds) >= 1:
            break
        prefix = candidate
        seconds *= 1000
    return f"{_go_float(seconds)}{prefix}s"


_FUNCTIONS = {
    "humanize": _humanize,
    "humanize1024": _humanize_1024,
    "humanizeDuration": _humanize_duration,
    "humanizePercentage": lambda value: f"{_go_float(value * 100)}%",
}
_TEMPLATE = re.compile(r"\{\{\s*\$(labels\.(\w+)|value)(?:\s*\|\s*(\w+))?\s*\}\}")


def expand(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """Expand ``{{ $labels.x }}`` and ``{{ $value | fn }}`` as Prometheus would."""

    def replace(match: re.Match[str]) -> str:
        if match.group(2):
            return labels.get(match.group(2), "")
        if value is None:
            raise ValueError(f"{template!r} needs the alert's value")
        function = match.group(3)
        return _FUNCTIONS[function](value) if function else _go_float(value)

    return _TEMPLATE.sub(replace, template)


def _alert_rules(files: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (stem, rule)
        for stem, content in files.items()
        for group in content["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def _matching_rule(
    alert_rules: list[tuple[str, dict[str, Any]]], alert: str, labels: Mapping[str, str]
) -> dict[str, Any]:
    """The rule of ``alert`` whose own labels (severity, slo) the expected alert carries."""
    for _, rule in alert_rules:
        if rule["alert"] == alert and rule["labels"].items() <= labels.items():
            return rule
    raise ValueError(f"no rule of {alert} has labels within {dict(labels)}")


def unit_test_files(links: rules.Links | None = None) -> dict[str, dict[str, Any]]:
    """promtool test files by rule-file stem: ``{"api": {...}, ...}`` for alerts/tests/."""
    alert_rules = _alert_rules(rules.rule_files(slo.PRODUCTION, links))
    tests: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios():
        stems = {stem for stem, rule in alert_rules if rule["alert"] == scenario.alert}
        if len(stems) != 1:
            raise ValueError(
                f"alert {scenario.alert} is defined in {sorted(stems) or 'no rule file'}"
            )
        expected = []
        for alert in scenario.expected:
            rule = _matching_rule(alert_rules, scenario.alert, alert.labels)
            annotations = {
                key: expand(text, alert.labels, alert.value)
                for key, text in rule["annotations"].items()
            }
            expected.append({"exp_labels": dict(alert.labels), "exp_annotations": annotations})
        tests.setdefault(stems.pop(), []).append(
            {
                "name": f"{scenario.alert} {scenario.title}",
                "interval": scenario.interval,
                "input_series": list(scenario.series),
                "alert_rule_test": [
                    {
                        "eval_time": scenario.eval_time,
                        "alertname": scenario.alert,
                        "exp_alerts": expected,
                    }
                ],
            }
        )
    return {
        stem: {"rule_files": [f"../rules/{stem}.yml"], "evaluation_interval": "1m", "tests": cases}
        for stem, cases in tests.items()
    }


def untested_alerts() -> list[str]:
    """Alerts without both a firing and a silent scenario (a test asserts this is empty)."""
    fired = {s.alert for s in scenarios() if s.expected}
    silent = {s.alert for s in scenarios() if not s.expected}
    return [name for name in rules.alert_names() if name not in fired or name not in silent]
