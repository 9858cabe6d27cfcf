"""The verdict: the plan's gates, baseline against optimized, as a table, JSON and HTML.

Absolute thresholds come from stackwatch.slo (defined once for alerts, dashboards
and this report); the improvement targets are the plan's ("slow queries -90 %",
"main API latency -30 %"...). Each row also carries its margin target, the stricter
figure the issue asks the optimized mode to reach so that the plan's gates pass
with margin (P95 <= 100 ms and P99 <= 250 ms per endpoint, slow queries -99 %, hit
ratio >= 95 %, DB reads -80 %, VCP scan -90 %, Celery throughput x5, no failed
task): shown and recorded, but only the plan's gates decide the exit code.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from stackwatch import slo
from stackwatch.demo.measure import PhaseResult
from stackwatch.demo.workload import DETAIL, ENDPOINTS

REPORT_JSON = "stackwatch-report.json"
REPORT_HTML = "stackwatch-report.html"


@dataclass(frozen=True)
class GateRow:
    """One line of the verdict."""

    name: str
    unit: str
    baseline: float | None
    optimized: float | None
    change: str
    target: str
    passed: bool | None
    margin: str
    margin_passed: bool | None


def _threshold(key: str) -> float:
    return slo.gate_by_key(key).threshold


def _change(before: float | None, after: float | None, ratio: bool = False) -> str:
    if before is None or after is None:
        return "n/a"
    if ratio:
        return f"x{after / before:.1f}" if before else "n/a"
    if before == 0:
        return "n/a"
    return f"{(after - before) / before * 100:+.0f}%"


def _reduction(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before <= 0:
        return None
    return (before - after) / before


def _at_least(value: float | None, wanted: float) -> bool | None:
    return None if value is None else value >= wanted


def _below(value: float | None, limit: float, inclusive: bool = False) -> bool | None:
    if value is None:
        return None
    return value <= limit if inclusive else value < limit


def build_gates(baseline: PhaseResult | None, optimized: PhaseResult | None) -> list[GateRow]:
    """Every gate row; comparisons need both phases, absolute gates judge the optimized one."""
    rows: list[GateRow] = []

    def add(
        name: str,
        unit: str,
        read: Callable[[PhaseResult], float | None],
        target: str,
        passed: Callable[[float | None, float | None], bool | None],
        margin: str,
        margin_passed: Callable[[float | None, float | None], bool | None],
        ratio: bool = False,
    ) -> None:
        before = read(baseline) if baseline else None
        after = read(optimized) if optimized else None
        now = after if optimized else before
        rows.append(
            GateRow(
                name,
                unit,
                before,
                after,
                _change(before, after, ratio),
                target,
                passed(before, now),
                margin,
                margin_passed(before, now),
            )
        )

    p95_limit = _threshold("api_latency_p95") * 1000
    p99_limit = _threshold("api_latency_p99") * 1000
    for endpoint in ENDPOINTS:

        def p95(phase: PhaseResult, endpoint: str = endpoint) -> float | None:
            value = phase.endpoints.get(endpoint, {}).get("p95_ms")
            return float(value) if value is not None else None

        def p99(phase: PhaseResult, endpoint: str = endpoint) -> float | None:
            value = phase.endpoints.get(endpoint, {}).get("p99_ms")
            return float(value) if value is not None else None

        add(
            f"P95 {endpoint}",
            "ms",
            p95,
            f"< {p95_limit:.0f} ms",
            lambda _b, a: _below(a, p95_limit),
            "<= 100 ms",
            lambda _b, a: _below(a, 100, True),
        )
        add(
            f"P99 {endpoint}",
            "ms",
            p99,
            f"< {p99_limit:.0f} ms",
            lambda _b, a: _below(a, p99_limit),
            "<= 250 ms",
            lambda _b, a: _below(a, 250, True),
        )

    def main_p95(phase: PhaseResult) -> float | None:
        value = phase.endpoints.get(DETAIL, {}).get("p95_ms")
        return float(value) if value is not None else None

    add(
        "Main API latency (detail P95)",
        "ms",
        main_p95,
        "-30 %",
        lambda b, a: _at_least(_reduction(b, a), 0.30),
        "-30 %",
        lambda b, a: _at_least(_reduction(b, a), 0.30),
    )
    slow_limit = _threshold("slow_queries")
    add(
        "Slow queries (>= 100 ms) under load",
        "count",
        lambda p: p.slow_queries,
        f"-90 % and < {slow_limit:.0f}",
        lambda b, a: (
            _below(a, slow_limit)
            if not b
            else (bool(_at_least(_reduction(b, a), 0.90)) and bool(_below(a, slow_limit)))
        ),
        "-99 %",
        lambda b, a: _below(a, 1) if not b else _at_least(_reduction(b, a), 0.99),
    )
    hit_limit = _threshold("cache_hit_ratio")
    add(
        "Cache hit ratio (all namespaces)",
        "%",
        lambda p: None if p.hit_ratio() is None else 100 * (p.hit_ratio() or 0.0),
        f">= {hit_limit * 100:.0f} %",
        lambda _b, a: _at_least(a, hit_limit * 100),
        ">= 95 %",
        lambda _b, a: _at_least(a, 95.0),
    )
    add(
        "Lowest namespace hit ratio",
        "%",
        lambda p: (
            min(p.namespace_hit_ratios().values()) * 100 if p.namespace_hit_ratios() else None
        ),
        f">= {hit_limit * 100:.0f} %",
        lambda _b, a: _at_least(a, hit_limit * 100),
        ">= 80 %",
        lambda _b, a: _at_least(a, 80.0),
    )
    memory_limit = _threshold("cache_memory") / 2**20
    add(
        "Cache memory",
        "MiB",
        lambda p: None if p.cache_memory_bytes is None else p.cache_memory_bytes / 2**20,
        f"< {memory_limit:.0f} MiB",
        lambda _b, a: _below(a, memory_limit),
        f"< {memory_limit:.0f} MiB",
        lambda _b, a: _below(a, memory_limit),
    )
    add(
        "DB reads per request",
        "queries",
        lambda p: p.reads_per_request(),
        "-50 %",
        lambda b, a: _at_least(_reduction(b, a), 0.50),
        "-80 %",
        lambda b, a: _at_least(_reduction(b, a), 0.80),
    )
    add(
        "DB queries per request (stackwatch)",
        "queries",
        lambda p: (
            None if p.queries_total is None or not p.requests else p.queries_total / p.requests
        ),
        "-50 %",
        lambda b, a: _at_least(_reduction(b, a), 0.50),
        "-80 %",
        lambda b, a: _at_least(_reduction(b, a), 0.80),
    )
    add(
        "N+1 patterns detected",
        "count",
        lambda p: sum(p.n_plus_one.values()) if p.requests else None,
        "0",
        lambda _b, a: _below(a, 0, True),
        "0",
        lambda _b, a: _below(a, 0, True),
    )
    add(
        "VCP scan time",
        "s",
        lambda p: p.scan_seconds,
        "-50 %",
        lambda b, a: _at_least(_reduction(b, a), 0.50),
        "-90 %",
        lambda b, a: _at_least(_reduction(b, a), 0.90),
    )
    add(
        "Celery throughput (tickers/s)",
        "tickers/s",
        lambda p: p.throughput(),
        "x2",
        lambda b, a: None if not b or a is None else a / b >= 2,
        "x5",
        lambda b, a: None if not b or a is None else a / b >= 5,
        ratio=True,
    )
    failure_limit = _threshold("celery_failure_ratio") * 100
    add(
        "Celery task failure rate",
        "%",
        lambda p: None if p.failure_rate() is None else 100 * (p.failure_rate() or 0.0),
        f"< {failure_limit:.0f} %",
        lambda _b, a: _below(a, failure_limit),
        "0 %",
        lambda _b, a: _below(a, 0, True),
    )
    if baseline is None or optimized is None:
        rows = [row for row in rows if not row.target.startswith(("-", "x"))]
    return rows


def failed(rows: list[GateRow]) -> list[GateRow]:
    """The rows whose plan gate failed (rows that could not be measured do not fail)."""
    return [row for row in rows if row.passed is False]


def short_of_margin(rows: list[GateRow]) -> list[GateRow]:
    """The rows whose margin target was missed (informational: the exit code ignores them)."""
    return [row for row in rows if row.margin_passed is False]


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _mark(passed: bool | None) -> str:
    return {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]n/a[/]"}[passed]


def table(rows: list[GateRow]) -> Table:
    """The gate table for the terminal."""
    grid = Table(title="stackwatch demo: the plan's gates, baseline vs optimized")
    for column in (
        "gate",
        "baseline",
        "optimized",
        "change",
        "plan target",
        "",
        "margin target",
        "",
    ):
        grid.add_column(column, justify="left" if column in ("gate",) else "right")
    for row in rows:
        grid.add_row(
            f"{row.name} [dim]({row.unit})[/]",
            _fmt(row.baseline),
            _fmt(row.optimized),
            row.change,
            row.target,
            _mark(row.passed),
            row.margin,
            _mark(row.margin_passed),
        )
    return grid


def write_json(
    path: Path, rows: list[GateRow], phases: list[PhaseResult], meta: dict[str, Any]
) -> None:
    """stackwatch-report.json: settings of the run, every phase's numbers, every gate row."""
    document = {
        "meta": meta,
        "gates": [asdict(row) for row in rows],
        "passed": not failed(rows),
        "margin_passed": not short_of_margin(rows),
        "phases": [
            {
                **{k: v for k, v in asdict(phase).items() if k != "latencies_ms"},
                "requests_per_second": phase.requests_per_second,
                "hit_ratio": phase.hit_ratio(),
                "reads_per_request": phase.reads_per_request(),
                "throughput_tickers_per_s": phase.throughput(),
                "failure_rate": phase.failure_rate(),
            }
            for phase in phases
        ],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False, default=str))


# --- HTML with inline SVG (no network, no JavaScript) ---

COLORS = {"baseline": "#d9534f", "optimized": "#2b8a3e"}


def _latency_svg(endpoint: str, phases: list[PhaseResult]) -> str:
    """Distribution of one endpoint's latencies per mode on log-spaced bins (1 ms .. 30 s)."""
    width, height, pad = 460, 180, 34
    edges = [10 ** (i / 8) for i in range(0, 4 * 8 + 4)]  # 1 ms .. ~30 s
    series = []
    peak = 1e-9
    for phase in phases:
        values = phase.latencies_ms.get(endpoint, [])
        counts = [0] * (len(edges) - 1)
        for value in values:
            for i in range(len(edges) - 1):
                if value < edges[i + 1]:
                    counts[i] += 1
                    break
        share = [c / len(values) if values else 0.0 for c in counts]
        peak = max(peak, *share) if share else peak
        series.append((phase.mode, share))
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(endpoint)}">'
    ]
    parts.append(f'<text x="{pad}" y="14" font-size="12">{html.escape(endpoint)}</text>')
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    for mode, share in series:
        points = " ".join(
            f"{pad + plot_w * i / (len(share) - 1):.1f},{pad + plot_h * (1 - s / peak):.1f}"
            for i, s in enumerate(share)
        )
        parts.append(
            f'<polyline fill="none" stroke="{COLORS.get(mode, "#333")}" stroke-width="2" '
            f'points="{points}"/>'
        )
    for label_ms in (1, 10, 100, 1000, 10000):
        position = math.log10(label_ms) * 8
        x = pad + plot_w * position / (len(edges) - 2)
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad + plot_h}" x2="{x:.1f}" '
            f'y2="{pad + plot_h + 4}" stroke="#555"/>'
        )
        text = f"{label_ms} ms" if label_ms < 1000 else f"{label_ms // 1000} s"
        parts.append(
            f'<text x="{x:.1f}" y="{pad + plot_h + 16}" font-size="10" '
            f'text-anchor="middle">{text}</text>'
        )
    parts.append(
        f'<line x1="{pad}" y1="{pad + plot_h}" x2="{pad + plot_w}" '
        f'y2="{pad + plot_h}" stroke="#555"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _bars_svg(title: str, bars: list[tuple[str, float, str]], unit: str) -> str:
    """Horizontal bars: (label, value, color)."""
    width, row_h, label_w = 460, 22, 170
    height = 24 + row_h * max(1, len(bars))
    peak = max((value for _l, value, _c in bars), default=1.0) or 1.0
    parts = [
        f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
    ]
    parts.append(f'<text x="0" y="14" font-size="12">{html.escape(title)}</text>')
    for i, (label, value, color) in enumerate(bars):
        y = 22 + i * row_h
        bar_w = (width - label_w - 80) * value / peak
        parts.append(f'<text x="0" y="{y + 14}" font-size="11">{html.escape(label)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{bar_w:.1f}" '
            f'height="{row_h - 6}" fill="{color}"/>'
        )
        parts.append(
            f'<text x="{label_w + bar_w + 4:.1f}" y="{y + 14}" font-size="11">'
            f"{_fmt(value)} {html.escape(unit)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def write_html(
    path: Path, rows: list[GateRow], phases: list[PhaseResult], meta: dict[str, Any]
) -> None:
    """A self-contained HTML report: gate table and charts as inline SVG."""
    marks = {True: "pass", False: "FAIL", None: "n/a"}
    body = [
        "<!doctype html><html><head><meta charset='utf-8'><title>stackwatch demo report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child{text-align:left}"
        ".pass{color:#2b8a3e}.FAIL{color:#d9534f;font-weight:bold}.charts svg{margin:8px}</style>",
        "</head><body><h1>stackwatch demo: baseline vs optimized</h1>",
        f"<p>{html.escape(json.dumps(meta, ensure_ascii=False))}</p>",
        "<table><tr><th>gate</th><th>baseline</th><th>optimized</th><th>change</th>"
        "<th>plan target</th><th></th><th>margin target</th><th></th></tr>",
    ]
    for row in rows:
        body.append(
            f"<tr><td>{html.escape(row.name)} ({html.escape(row.unit)})</td>"
            f"<td>{_fmt(row.baseline)}</td>"
            f"<td>{_fmt(row.optimized)}</td><td>{html.escape(row.change)}</td>"
            f"<td>{html.escape(row.target)}</td>"
            f"<td class='{marks[row.passed]}'>{marks[row.passed]}</td>"
            f"<td>{html.escape(row.margin)}</td>"
            f"<td class='{marks[row.margin_passed]}'>{marks[row.margin_passed]}</td></tr>"
        )
    body.append("</table><h2>Latency distribution per endpoint</h2><p>")
    body.append(" ".join(f"<span style='color:{c}'>&#9632; {m}</span>" for m, c in COLORS.items()))
    body.append("</p><div class='charts'>")
    body.extend(_latency_svg(endpoint, phases) for endpoint in ENDPOINTS)
    body.append("</div><h2>Cache and scan</h2><div class='charts'>")
    hit_bars = [
        (f"{phase.mode} {namespace}", 100 * ratio, COLORS.get(phase.mode, "#333"))
        for phase in phases
        for namespace, ratio in sorted(phase.namespace_hit_ratios().items())
    ]
    body.append(_bars_svg("Cache hit ratio per namespace", hit_bars, "%"))
    scan_bars = [
        (phase.mode, phase.scan_seconds, COLORS.get(phase.mode, "#333"))
        for phase in phases
        if phase.scan_seconds is not None
    ]
    body.append(_bars_svg("VCP scan time", scan_bars, "s"))
    p95_bars = [
        (
            f"{phase.mode} {endpoint.rsplit('/', 1)[-1] or endpoint}",
            float(value),
            COLORS.get(phase.mode, "#333"),
        )
        for endpoint in ENDPOINTS
        for phase in phases
        if (value := phase.endpoints.get(endpoint, {}).get("p95_ms")) is not None
    ]
    body.append(_bars_svg("P95 latency per endpoint", p95_bars, "ms"))
    body.append("</div></body></html>")
    path.write_text("".join(body))
