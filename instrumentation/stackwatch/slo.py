"""The quality gates of the performance plan, defined once.

Each gate is a PromQL measurement, a threshold and how to alert on it. The same
definitions render the Prometheus recording and alerting rules, their promtool
unit tests, the threshold lines of the Grafana dashboards and the checks of
``stackwatch gate``; nothing else in the repository types a threshold, so a gate
can never say one thing in CI and another on a dashboard.

Durations are kept as seconds and written out through a :class:`Variant`: the
production variant writes them as they are, the test variant divides them so that
an end-to-end test sees an alert fire and resolve within seconds, from the same
expressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.utils import floatToGoString

from stackwatch import metrics

Severity = Literal["critical", "warning"]
Comparison = Literal[">", ">=", "<", "=="]
Unit = Literal["seconds", "ratio", "bytes", "per_day", "count"]
Area = Literal["api", "cache", "database", "celery"]

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR

#: The grouping label every scrape job sets (compose/prometheus.yml); rules keep it.
SERVICE_LABEL = "service"
DEFAULT_GRAFANA_URL = "http://localhost:3000"
DEFAULT_RUNBOOK_URL = "docs/alerts-and-dashboards.md"
CACHE_MEMORY_LIMIT_BYTES = 500 * 1024 * 1024


@dataclass(frozen=True)
class Variant:
    """How durations are written: ``production`` as defined, ``test`` divided for fast e2e runs."""

    name: str
    time_divisor: int = 1
    evaluation_interval_s: int | None = None

    def duration(self, seconds: int) -> str:
        """A Prometheus duration string for ``seconds`` in this variant (at least 1 s)."""
        return format_duration(max(1, seconds // self.time_divisor))


PRODUCTION = Variant("production")
TEST = Variant("test", time_divisor=30, evaluation_interval_s=1)
VARIANTS = (PRODUCTION, TEST)


@dataclass(frozen=True)
class Gate:
    """One quality gate: what is measured, where it breaks, and how it alerts.

    ``measure`` is PromQL with a ``{window}`` placeholder for the range of its rate
    or increase: the alert uses ``alert_window_s``, ``stackwatch gate`` the window it
    is given. When ``record`` is set the alert compares the recorded series.
    """

    key: str
    alert: str
    title: str
    measure: str
    comparison: Comparison
    threshold: float
    unit: Unit
    severity: Severity
    for_s: int
    summary: str
    description: str
    area: Area
    labels: tuple[str, ...]
    alert_window_s: int = 5 * MINUTE
    record: str | None = None
    in_plan: bool = True

    def measure_over(self, window: str) -> str:
        """The measurement over ``window`` (a Prometheus duration)."""
        return self.measure.format(window=window)

    def breached(self, value: float) -> bool:
        """Whether ``value`` breaks the gate."""
        if self.comparison == ">":
            return value > self.threshold
        if self.comparison == ">=":
            return value >= self.threshold
        if self.comparison == "<":
            return value < self.threshold
        return value == self.threshold

    def threshold_text(self) -> str:
        """The threshold as written in PromQL: ``0.5``, ``10``, ``524288000``."""
        if float(self.threshold).is_integer():
            return str(int(self.threshold))
        return repr(self.threshold)

    def alert_expr(self, variant: Variant) -> str:
        """The alerting expression: the (recorded) measurement compared to the threshold."""
        value = self.record or self.measure_over(variant.duration(self.alert_window_s))
        return f"{value} {self.comparison} {self.threshold_text()}"

    @property
    def dashboard_uid(self) -> str:
        """The uid of the Grafana dashboard that shows this gate."""
        return dashboard_uid(self.area)

    def runbook_anchor(self) -> str:
        """The heading anchor of this alert's runbook in docs/alerts-and-dashboards.md."""
        return self.alert.lower()


def _histogram_quantile(quantile: float, metric: str, by: str) -> str:
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket[{{window}}])))"


_API = metrics.api_request_duration_seconds._name
_CACHE = f"{metrics.cache_requests_total._name}_total"
_SLOW = f"{metrics.db_slow_queries_total._name}_total"
_TASKS = f"{metrics.celery_tasks_total._name}_total"

GATES: tuple[Gate, ...] = (
    Gate(
        key="api_latency_p95",
        alert="ApiLatencyP95High",
        title="API latency P95 per path",
        measure=_histogram_quantile(0.95, _API, "service, path"),
        comparison=">",
        threshold=0.5,
        unit="seconds",
        severity="warning",
        for_s=5 * MINUTE,
        summary="P95 latency of {{ $labels.path }} on {{ $labels.service }} is over 500ms",
        description="P95 latency is {{ $value | humanizeDuration }} (gate: under 500ms).",
        area="api",
        labels=("service", "path"),
        record=f"service_path:{_API}:p95_rate5m",
    ),
    Gate(
        key="api_latency_p99",
        alert="ApiLatencyP99High",
        title="API latency P99 per path",
        measure=_histogram_quantile(0.99, _API, "service, path"),
        comparison=">",
        threshold=1.0,
        unit="seconds",
        severity="critical",
        for_s=5 * MINUTE,
        summary="P99 latency of {{ $labels.path }} on {{ $labels.service }} is over 1s",
        description="P99 latency is {{ $value | humanizeDuration }} (gate: under 1s).",
        area="api",
        labels=("service", "path"),
        record=f"service_path:{_API}:p99_rate5m",
    ),
    Gate(
        key="api_error_ratio",
        alert="ApiErrorRateHigh",
        title="API 5xx ratio per path",
        measure=(
            f'sum by (service, path) (rate({_API}_count{{{{status=~"5.."}}}}[{{window}}]))'
            f" / sum by (service, path) (rate({_API}_count[{{window}}]))"
        ),
        comparison=">",
        threshold=0.01,
        unit="ratio",
        severity="critical",
        for_s=5 * MINUTE,
        summary="{{ $labels.path }} on {{ $labels.service }} answers over 1% 5xx",
        description="{{ $value | humanizePercentage }} of requests end in a 5xx (gate: 1%).",
        area="api",
        labels=("service", "path"),
        in_plan=False,
    ),
    Gate(
        key="cache_hit_ratio",
        alert="CacheHitRatioLow",
        title="Cache hit ratio per namespace",
        measure=(
            f'sum by (service, namespace) (rate({_CACHE}{{{{result="hit"}}}}[{{window}}]))'
            f" / sum by (service, namespace) (rate({_CACHE}[{{window}}]))"
        ),
        comparison="<",
        threshold=0.8,
        unit="ratio",
        severity="warning",
        for_s=10 * MINUTE,
        summary="Cache hit ratio of {{ $labels.namespace }} on {{ $labels.service }} is under 80%",
        description="Hit ratio is {{ $value | humanizePercentage }} (gate: at least 80%).",
        area="cache",
        labels=("service", "namespace"),
        record="service_namespace:cache_hit_ratio:rate5m",
    ),
    Gate(
        key="cache_memory",
        alert="CacheMemoryHigh",
        title="Cache memory (Redis used_memory)",
        measure=f"max by (service) (max_over_time({metrics.cache_memory_bytes._name}[{{window}}]))",
        comparison=">",
        threshold=float(CACHE_MEMORY_LIMIT_BYTES),
        unit="bytes",
        severity="warning",
        for_s=5 * MINUTE,
        summary="Redis of {{ $labels.service }} uses over 500MiB",
        description="used_memory is {{ $value | humanize1024 }}B (gate: under 500MiB).",
        area="cache",
        labels=("service",),
        alert_window_s=MINUTE,
    ),
    Gate(
        key="slow_queries",
        alert="SlowQueriesHigh",
        title="Slow queries (>= 100 ms) per day",
        measure=f"sum by (service) (rate({_SLOW}[{{window}}])) * 86400",
        comparison=">=",
        threshold=10,
        unit="per_day",
        severity="warning",
        for_s=0,
        summary="{{ $labels.service }} ran 10 or more slow queries in a day",
        description="{{ $value | humanize }} slow queries per day (gate: under 10).",
        area="database",
        labels=("service",),
        alert_window_s=DAY,
    ),
    Gate(
        key="celery_failure_ratio",
        alert="CeleryTaskFailureRateHigh",
        title="Celery task failure ratio per task",
        measure=(
            f'sum by (service, queue, task) (rate({_TASKS}{{{{state="failed"}}}}[{{window}}]))'
            f" / sum by (service, queue, task)"
            f' (rate({_TASKS}{{{{state=~"succeeded|failed"}}}}[{{window}}]))'
        ),
        comparison=">",
        threshold=0.01,
        unit="ratio",
        severity="warning",
        for_s=10 * MINUTE,
        summary="Task {{ $labels.task }} on {{ $labels.service }} fails over 1% of runs",
        description="{{ $value | humanizePercentage }} of runs failed (gate: under 1%).",
        area="celery",
        labels=("service", "queue", "task"),
        record="service_queue_task:celery_task_failure_ratio:rate5m",
    ),
    Gate(
        key="celery_queue_backlog",
        alert="CeleryQueueBacklog",
        title="Celery queue length",
        measure=(
            f"max by (service, queue) "
            f"(min_over_time({metrics.CeleryQueueLengthCollector.name}[{{window}}]))"
        ),
        comparison=">",
        threshold=100,
        unit="count",
        severity="warning",
        for_s=10 * MINUTE,
        summary="Queue {{ $labels.queue }} on {{ $labels.service }} holds over 100 messages",
        description="{{ $value | humanize }} messages waiting for 10 minutes or more.",
        area="celery",
        labels=("service", "queue"),
        alert_window_s=MINUTE,
        in_plan=False,
    ),
    Gate(
        key="target_down",
        alert="TargetDown",
        title="Scrape target up",
        measure="up",
        comparison="==",
        threshold=0,
        unit="count",
        severity="critical",
        for_s=MINUTE,
        summary="{{ $labels.instance }} of {{ $labels.service }} cannot be scraped",
        description="Prometheus has not scraped {{ $labels.job }}/{{ $labels.instance }} for 1m.",
        area="api",
        labels=("service", "job", "instance"),
        in_plan=False,
    ),
)


@dataclass(frozen=True)
class BurnRateWindow:
    """One multiwindow burn-rate condition (Google SRE workbook, chapter 5, table 5-8)."""

    long_s: int
    short_s: int
    factor: float
    severity: Severity


#: 2 % of a 30-day budget in 1 h and 5 % in 6 h page; 10 % in 3 days opens a ticket.
BURN_RATE_WINDOWS = (
    BurnRateWindow(HOUR, 5 * MINUTE, 14.4, "critical"),
    BurnRateWindow(6 * HOUR, 30 * MINUTE, 6, "critical"),
    BurnRateWindow(DAY, 2 * HOUR, 3, "warning"),
    BurnRateWindow(3 * DAY, 6 * HOUR, 1, "warning"),
)


@dataclass(frozen=True)
class LatencySlo:
    """A latency objective: ``objective`` of requests finish within ``le_s`` seconds.

    ``le_s`` must be a bucket boundary of ``api_request_duration_seconds``: the
    error ratio reads the bucket whose ``le`` label prometheus-client writes as
    ``floatToGoString(le_s)`` ("0.5", "1.0"), never an interpolation.
    """

    name: str
    le_s: float
    objective: float
    windows: tuple[BurnRateWindow, ...] = field(default=BURN_RATE_WINDOWS)

    def __post_init__(self) -> None:
        if self.le_s not in metrics.LATENCY_BUCKETS_S:
            raise ValueError(
                f"latency SLO {self.name}: {self.le_s}s is not a bucket of {_API} "
                f"({metrics.LATENCY_BUCKETS_S}); add the bucket in stackwatch/metrics.py"
            )

    @property
    def le_label(self) -> str:
        """The ``le`` label value exactly as prometheus-client exports it."""
        return str(floatToGoString(self.le_s))

    @property
    def error_budget(self) -> float:
        """The share of requests allowed to be slower than ``le_s``."""
        return round(1 - self.objective, 10)

    def record_name(self, window_s: int) -> str:
        """The recording rule holding the slow-request ratio over ``window_s``."""
        return f"service:{_API}:slo_errors_ratio_rate{format_duration(window_s)}"

    def error_ratio(self, window: str) -> str:
        """Share of requests slower than the objective's bucket over ``window``."""
        return (
            f'1 - sum by (service) (rate({_API}_bucket{{le="{self.le_label}"}}[{window}]))'
            f" / sum by (service) (rate({_API}_count[{window}]))"
        )

    def all_windows_s(self) -> list[int]:
        """Every window a burn-rate alert reads, shortest first."""
        return sorted({w.long_s for w in self.windows} | {w.short_s for w in self.windows})


LATENCY_SLOS = (
    LatencySlo("latency-500ms", le_s=0.5, objective=0.95),
    LatencySlo("latency-1s", le_s=1.0, objective=0.99),
)

_DURATION_UNITS = (("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1))
_DURATION_PART = re.compile(r"(\d+)([dhms])")


def format_duration(seconds: int) -> str:
    """``seconds`` as a Prometheus duration (``90`` -> ``1m30s``, ``0`` -> ``0s``)."""
    if seconds == 0:
        return "0s"
    parts = []
    remaining = seconds
    for suffix, size in _DURATION_UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)


def parse_duration(text: str) -> int:
    """A Prometheus duration such as ``1h`` or ``1h30m`` in seconds.

    Raises:
        ValueError: when ``text`` is not a duration of whole d/h/m/s units.
    """
    sizes = dict(_DURATION_UNITS)
    matches = list(_DURATION_PART.finditer(text))
    if not text or "".join(m.group(0) for m in matches) != text:
        raise ValueError(f"{text!r} is not a duration such as 30m, 1h or 1d")
    return sum(int(m.group(1)) * sizes[m.group(2)] for m in matches)


def dashboard_uid(area: Area) -> str:
    """The stable uid of an area's Grafana dashboard (links in alerts depend on it)."""
    return f"stackwatch-{area}"


def plan_gates() -> tuple[Gate, ...]:
    """The gates the plan sets (checked by ``stackwatch gate``)."""
    return tuple(gate for gate in GATES if gate.in_plan)


def gate_by_key(key: str) -> Gate:
    """The gate named ``key`` (``api_latency_p95`` ...)."""
    for gate in GATES:
        if gate.key == key:
            return gate
    raise KeyError(key)
