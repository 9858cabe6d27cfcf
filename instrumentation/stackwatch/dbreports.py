"""Rich tables for the ``stackwatch db`` reports (the CLI prints them; ``--json`` skips them)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from stackwatch.pglog import LogScanReport
from stackwatch.postgres import ExplainResult, IndexReport, SetupReport, TopReport

_STATEMENT_WIDTH = 70


def _short(statement: str, width: int = _STATEMENT_WIDTH) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _size(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TB"


def setup_table(report: SetupReport) -> Group:
    """What ``db setup`` did, and the restart it still needs."""
    lines = [f"changed: {action}" for action in report.actions] or ["nothing to change"]
    if report.restart_needed:
        lines.append(
            "RESTART NEEDED: pg_stat_statements loads at server start; restart PostgreSQL "
            "(e.g. pg_ctlcluster <version> main restart), then run `stackwatch db setup` again"
        )
    else:
        lines.append("pg_stat_statements is loaded and ready")
    lines.append(f"slow statements (>= {report.log_min_duration_statement_ms} ms) are logged")
    return Group(*(Text(line) for line in lines))


def top_table(report: TopReport) -> Table:
    """The top statements with their share of the total time."""
    window = f"since {report.since}" if report.since else "since statistics reset"
    if report.reset_since_snapshot:
        window += " (statistics were reset after the snapshot: counting from the reset)"
    table = Table(title=f"top statements in {report.database}, {window}")
    for column in ("total ms", "mean ms", "calls", "rows", "share"):
        table.add_column(column, justify="right")
    for column in ("route", "statement"):
        table.add_column(column, overflow="fold")
    for entry in report.statements:
        table.add_row(
            f"{entry.total_ms:,.1f}",
            f"{entry.mean_ms:,.2f}",
            f"{entry.calls:,}",
            f"{entry.rows:,}",
            f"{entry.share:.1%}",
            entry.route or "-",
            _short(entry.query),
        )
    return table


def index_tables(report: IndexReport) -> Group:
    """Unused, redundant, seq-scan tables and suggestions, one table each."""
    unused = Table(title="unused indexes (never scanned, not enforcing a constraint)")
    for column in ("index", "table", "size", "definition"):
        unused.add_column(column, overflow="fold")
    for index in report.unused:
        unused.add_row(index.index, index.table, _size(index.size_bytes), index.definition)

    redundant = Table(title="duplicate or prefix-redundant indexes")
    for column in ("index", "covered by", "why", "size"):
        redundant.add_column(column, overflow="fold")
    for entry in report.redundant:
        redundant.add_row(entry.index, entry.covered_by, entry.reason, _size(entry.size_bytes))

    seq = Table(title="tables read mostly by sequential scans")
    for column in ("table", "seq scans", "index scans", "live rows", "rows read by seq", "size"):
        seq.add_column(column, overflow="fold")
    for table in report.seq_scan_tables:
        seq.add_row(
            table.table,
            f"{table.seq_scan:,}",
            f"{table.idx_scan:,}",
            f"{table.live_rows:,}",
            f"{table.seq_rows_read:,}",
            _size(table.size_bytes),
        )

    suggested = Table(
        title=f"suggested indexes ({report.suggestions_checked} candidates checked, rolled back)"
    )
    for column in ("create", "cost before", "cost after", "for statement"):
        suggested.add_column(column, overflow="fold")
    for suggestion in report.suggestions:
        suggested.add_row(
            suggestion.definition,
            f"{suggestion.cost_before:,.1f}",
            f"{suggestion.cost_after:,.1f}",
            _short(suggestion.query),
        )
    notes = [Text(f"note: {note}") for note in report.notes]
    return Group(unused, redundant, seq, suggested, *notes)


def explain_tables(results: list[ExplainResult]) -> Group:
    """Each plan's headline numbers and findings."""
    parts: list[Table | Text] = []
    for result in results:
        timing = (
            f"{result.execution_ms:,.2f} ms (ANALYZE)"
            if result.analyzed and result.execution_ms is not None
            else "estimated only (generic plan: the statement has parameters)"
        )
        table = Table(title=f"{_short(result.query)}  —  cost {result.total_cost:,.1f}, {timing}")
        for column in ("finding", "node", "detail"):
            table.add_column(column, overflow="fold")
        for finding in result.findings:
            table.add_row(finding.kind, finding.node, finding.detail)
        if not result.findings:
            table.add_row("-", "-", "nothing flagged")
        parts.append(table)
    if not parts:
        parts.append(Text("no SELECT statements to explain"))
    return Group(*parts)


def logscan_tables(report: LogScanReport) -> Group:
    """Statements by total time and the daily slow-query count against the gate."""
    statements = Table(
        title=f"slow-log statements ({report.durations:,} durations in {len(report.files)} file(s))"
    )
    for column in ("count", "total ms", "mean ms", "p95 ms", "max ms"):
        statements.add_column(column, justify="right")
    statements.add_column("statement", overflow="fold")
    for entry in report.statements:
        statements.add_row(
            f"{entry.count:,}",
            f"{entry.total_ms:,.1f}",
            f"{entry.mean_ms:,.1f}",
            f"{entry.p95_ms:,.1f}",
            f"{entry.max_ms:,.1f}",
            _short(entry.statement),
        )
    days = Table(
        title=f"per day: slow = >= {report.slow_threshold_ms:g} ms, "
        f"gate: fewer than {report.gate_slow_per_day:g} a day"
    )
    for column in ("day", "logged", "slow", "gate"):
        days.add_column(column)
    for day in report.days:
        verdict = "[green]pass[/]" if day.gate_ok else "[red]fail[/]"
        days.add_row(day.day, f"{day.statements:,}", f"{day.slow:,}", verdict)
    footer = Text(
        f"{report.lines:,} lines, {report.malformed_lines:,} malformed (skipped), "
        f"{report.groups:,} statement groups"
        + (
            f", {report.entries_in_overflow_group:,} entries past the group limit"
            if report.entries_in_overflow_group
            else ""
        )
    )
    errors = [Text(f"error: {error}") for error in report.errors]
    return Group(statements, days, footer, *errors)
