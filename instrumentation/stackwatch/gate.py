"""``stackwatch gate``: evaluate the plan's gates against a Prometheus server, for CI.

Each gate's measurement (:mod:`stackwatch.slo`) is run as an instant query over
the chosen window through the Prometheus HTTP API; every returned series is
compared with the gate's threshold. A gate with no series is reported as "no
data" rather than passed silently, and a run in which no gate had data is an
error: a pipeline whose Prometheus scrapes nothing must not go green.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from stackwatch import slo

Status = Literal["pass", "fail", "no data"]


class GateError(Exception):
    """Prometheus could not be asked, or refused a query; the message says what to check."""


@dataclass(frozen=True)
class SeriesValue:
    """One series of a gate's measurement."""

    labels: dict[str, str]
    value: float
    breached: bool


@dataclass(frozen=True)
class GateResult:
    """The verdict of one gate over the window."""

    gate: slo.Gate
    query: str
    series: Sequence[SeriesValue] = field(default_factory=tuple)

    @property
    def status(self) -> Status:
        """fail when any series breaks the gate, no data when none was returned."""
        if not self.series:
            return "no data"
        return "fail" if any(s.breached for s in self.series) else "pass"

    def worst(self) -> SeriesValue | None:
        """The series furthest on the wrong side of the threshold."""
        if not self.series:
            return None
        lower_is_worse = self.gate.comparison == "<"
        return (min if lower_is_worse else max)(self.series, key=lambda s: s.value)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (``stackwatch gate --json``)."""
        worst = self.worst()
        return {
            "gate": self.gate.key,
            "title": self.gate.title,
            "status": self.status,
            "comparison": self.gate.comparison,
            "threshold": self.gate.threshold,
            "unit": self.gate.unit,
            "worst": None if worst is None else {"labels": worst.labels, "value": worst.value},
            "breaches": [{"labels": s.labels, "value": s.value} for s in self.series if s.breached],
            "query": self.query,
        }


def _instant_query(client: httpx.Client, base_url: str, query: str) -> list[dict[str, Any]]:
    url = f"{base_url.rstrip('/')}/api/v1/query"
    try:
        response = client.get(url, params={"query": query})
    except httpx.HTTPError as error:
        raise GateError(f"cannot reach Prometheus at {base_url}: {error}") from None
    try:
        body = response.json()
    except ValueError:
        raise GateError(
            f"{url} answered {response.status_code} without JSON: is this the Prometheus base URL?"
        ) from None
    if body.get("status") != "success":
        raise GateError(f"Prometheus refused the query {query!r}: {body.get('error', body)}")
    result = body["data"]["result"]
    if body["data"].get("resultType") != "vector":
        raise GateError(f"query {query!r} did not return an instant vector")
    return list(result)


def evaluate(
    prometheus_url: str,
    window: str = "1h",
    gates: Sequence[slo.Gate] | None = None,
    timeout_s: float = 10.0,
) -> list[GateResult]:
    """Evaluate ``gates`` (default: the plan's) over ``window`` on the server at ``prometheus_url``.

    Raises:
        ValueError: when ``window`` is not a Prometheus duration.
        GateError: when Prometheus cannot be reached or rejects a query.
    """
    if slo.parse_duration(window) <= 0:
        raise ValueError("the window must be longer than 0s")
    results = []
    with httpx.Client(timeout=timeout_s) as client:
        for gate in gates if gates is not None else slo.plan_gates():
            query = gate.measure_over(window)
            series = []
            for sample in _instant_query(client, prometheus_url, query):
                value = float(sample["value"][1])
                if math.isnan(value):  # 0/0: nothing happened in the window
                    continue
                labels = {k: v for k, v in sample["metric"].items() if k != "__name__"}
                series.append(SeriesValue(labels, value, gate.breached(value)))
            results.append(GateResult(gate, query, tuple(series)))
    return results


def format_value(gate: slo.Gate, value: float) -> str:
    """A value in the gate's unit, as a person reads it (``625 ms``, ``81.0 %``, ``12 / day``)."""
    if gate.unit == "seconds":
        return f"{value * 1000:.0f} ms"
    if gate.unit == "ratio":
        return f"{value * 100:.2f} %"
    if gate.unit == "bytes":
        return f"{value / 1024 / 1024:.1f} MiB"
    if gate.unit == "per_day":
        return f"{value:.1f} / day"
    return f"{value:g}"
