"""``stackwatch ...``: the command line (typer + rich).

Each command is a thin shell over a module that does the work, so that everything
the CLI can do is also callable from Python and testable without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

import stackwatch
from stackwatch.alertmanager import UNSET_CHAT_URL, UNSET_PAGER_URL
from stackwatch.slo import DEFAULT_GRAFANA_URL, DEFAULT_RUNBOOK_URL

app = typer.Typer(
    name="stackwatch",
    help="Observability for FastAPI + SQLAlchemy + Redis + Celery services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stackwatch {stackwatch.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Observability for FastAPI + SQLAlchemy + Redis + Celery services."""


# --- doctor -----------------------------------------------------------------------------


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
) -> None:
    """Check the OTLP endpoint, DATABASE_URL, REDIS_URL and the Celery broker."""
    import json

    from rich.console import Console
    from rich.table import Table

    from stackwatch.doctor import run_checks
    from stackwatch.settings import load_settings

    rows = run_checks(load_settings())
    failed = any(row.status == "fail" for row in rows)
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "red"}
        table = Table(title="stackwatch doctor")
        for column in ("check", "status", "detail", "how to fix"):
            table.add_column(column, overflow="fold")
        for row in rows:
            status = f"[{colours[row.status]}]{row.status}[/]"
            table.add_row(row.name, status, row.detail, row.hint)
        Console().print(table)
    if failed:
        raise typer.Exit(1)


# --- celery -----------------------------------------------------------------------------


@app.command(
    "celery",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def celery_command(context: typer.Context) -> None:
    """Run ``celery ARGS...`` with metrics from every prefork process (PROMETHEUS_MULTIPROC_DIR).

    Example: stackwatch celery -A proj worker --autoscale=10,2 -Q high,default
    """
    from stackwatch.celery import exec_celery

    if not context.args:
        typer.echo(context.get_usage())
        typer.echo("Try 'stackwatch celery -A proj worker'.")
        raise typer.Exit(2)
    exec_celery(context.args)


# --- render, gate, alertmanager-config (the stack as code: stackwatch.slo) ---------------


@app.command()
def render(
    check: bool = typer.Option(
        False, "--check", help="Write nothing; exit 1 if a generated file differs."
    ),
    root: Annotated[
        Path, typer.Option("--root", help="Repository root holding alerts/ and dashboards/.")
    ] = Path("."),
    grafana_url: str = typer.Option(
        DEFAULT_GRAFANA_URL, "--grafana-url", help="Base URL of the dashboard links in alerts."
    ),
    runbook_url: str = typer.Option(
        DEFAULT_RUNBOOK_URL, "--runbook-url", help="Page the runbook_url annotations point to."
    ),
) -> None:
    """Write alert rules, promtool tests, alertmanager.yml and dashboards from stackwatch.slo."""
    from stackwatch.render import render as render_files
    from stackwatch.rules import Links

    if not (root / "alerts").is_dir() and not check:
        typer.echo(
            f"{root.resolve()} has no alerts/ folder: run from the repository root or pass --root."
        )
        raise typer.Exit(2)
    result = render_files(root, check=check, links=Links(grafana_url, runbook_url))
    verb = "differs" if check else "written"
    for relative in result.changed:
        typer.echo(f"{verb}: {relative}")
    for relative in result.stray:
        typer.echo(f"not generated (remove it, or add it to stackwatch.render): {relative}")
    if check and not result.clean:
        typer.echo("generated files are out of date: run `stackwatch render` and commit them.")
        raise typer.Exit(1)
    typer.echo(f"{len(result.changed)} changed, {len(result.unchanged)} up to date.")


@app.command()
def gate(
    prometheus: str = typer.Option(
        ..., "--prometheus", envvar="STACKWATCH_PROMETHEUS_URL", help="Prometheus base URL."
    ),
    window: str = typer.Option("1h", "--window", help="Range the gates are measured over."),
    only: Annotated[
        list[str] | None,
        typer.Option("--gate", help="Check only these gates (repeatable); default: the plan's."),
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print the verdicts as JSON."),
) -> None:
    """Evaluate the plan's quality gates on Prometheus; exit 1 on a breach, 2 on no data."""
    import json

    from rich.console import Console
    from rich.table import Table

    from stackwatch import slo
    from stackwatch.gate import GateError, evaluate, format_value

    try:
        slo.parse_duration(window)
        gates = [slo.gate_by_key(key) for key in only] if only else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--window") from None
    except KeyError as error:
        known = ", ".join(g.key for g in slo.GATES)
        raise typer.BadParameter(
            f"unknown gate {error}; known: {known}", param_hint="--gate"
        ) from None
    try:
        results = evaluate(prometheus, window, gates)
    except GateError as error:
        typer.echo(f"stackwatch gate: {error}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        colours = {"pass": "green", "fail": "red", "no data": "yellow"}
        table = Table(title=f"stackwatch gate over {window}")
        for column in ("gate", "must be", "worst", "where", "status"):
            table.add_column(column, overflow="fold")
        for result in results:
            worst = result.worst()
            breach = {"<": ">=", ">": "<=", ">=": "<", "==": "!="}[result.gate.comparison]
            table.add_row(
                result.gate.title,
                f"{breach} {format_value(result.gate, result.gate.threshold)}",
                "-" if worst is None else format_value(result.gate, worst.value),
                "-"
                if worst is None
                else ", ".join(f"{k}={v}" for k, v in sorted(worst.labels.items())),
                f"[{colours[result.status]}]{result.status}[/]",
            )
        Console().print(table)
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)
    if all(r.status == "no data" for r in results):
        typer.echo("no gate had data: is Prometheus scraping the service?", err=True)
        raise typer.Exit(2)


@app.command("alertmanager-config")
def alertmanager_config(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write; default stdout.")
    ] = None,
    pager_url: str = typer.Option(
        UNSET_PAGER_URL, envvar="STACKWATCH_ALERT_PAGER_URL", help="Webhook for critical alerts."
    ),
    chat_url: str = typer.Option(
        UNSET_CHAT_URL, envvar="STACKWATCH_ALERT_CHAT_URL", help="Slack-compatible webhook."
    ),
    email_to: str | None = typer.Option(None, envvar="STACKWATCH_ALERT_EMAIL_TO"),
    smtp_smarthost: str | None = typer.Option(None, envvar="STACKWATCH_ALERT_SMTP_SMARTHOST"),
    smtp_from: str | None = typer.Option(None, envvar="STACKWATCH_ALERT_SMTP_FROM"),
    templates: str = typer.Option(
        "templates/*.tmpl", help="Template glob, relative to the written file or absolute."
    ),
) -> None:
    """Render alertmanager.yml with receiver URLs from STACKWATCH_ALERT_* variables."""
    from stackwatch import alertmanager
    from stackwatch.render import dump_yaml

    try:
        receivers = alertmanager.Receivers(
            pager_url, chat_url, email_to or None, smtp_smarthost or None, smtp_from or None
        )
    except alertmanager.ConfigError as error:
        raise typer.BadParameter(str(error)) from None
    text = dump_yaml(alertmanager.config(receivers, templates=templates), "alertmanager.py")
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


# --- demo (the reference workload: stackwatch.demo.runner) -------------------------------


@app.command()
def demo(
    quick: bool = typer.Option(False, "--quick", help="Small data, short load: about 30 s."),
    serve: bool = typer.Option(
        False, "--serve", help="Afterwards keep the app and worker running until Ctrl-C."
    ),
    no_compare: bool = typer.Option(
        False,
        "--no-compare",
        help="With --serve: skip the baseline-vs-optimized run; seed, then serve right away "
        "(optimized, or --mode baseline) until Ctrl-C / SIGTERM.",
    ),
    fault_injection: bool = typer.Option(
        False,
        "--fault-injection",
        help="With --serve: enable PUT/DELETE /api/system/faults/latency on the served app, "
        "to slow one route for an alert drill (without it the routes do not exist).",
    ),
    users: int | None = typer.Option(None, "--users", min=1, max=500, help="Virtual users."),
    duration: float | None = typer.Option(
        None, "--duration", min=1.0, max=3600.0, help="Seconds of load per mode."
    ),
    scale: float | None = typer.Option(
        None, "--scale", min=0.01, max=20.0, help="Data scale: 1.0 is 2,000 tickers x 250 days."
    ),
    mode: str = typer.Option(
        "both", "--mode", help="baseline, optimized or both (baseline first)."
    ),
    report_dir: Annotated[
        Path, typer.Option("--report-dir", help="Where the JSON and HTML reports go.")
    ] = Path("."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="App port with --serve."),
    worker_metrics_port: int | None = typer.Option(
        None,
        "--worker-metrics-port",
        min=1,
        max=65535,
        help="Port of the served worker's /metrics with --serve (default: --port + 1).",
    ),
) -> None:
    """Run the KRX reference service baseline vs optimized and check the plan's gates.

    With no DATABASE_URL / REDIS_URL it starts embedded PostgreSQL and Valkey servers;
    exits 1 when a plan gate fails. With --serve --no-compare it only seeds and serves,
    and exits 0 when stopped by Ctrl-C or SIGTERM (the demo data removed).
    """
    if mode not in ("baseline", "optimized", "both"):
        raise typer.BadParameter("choose baseline, optimized or both", param_hint="--mode")
    for flag, given in (("--no-compare", no_compare), ("--fault-injection", fault_injection)):
        if given and not serve:
            raise typer.BadParameter(
                "only applies to what --serve serves: add --serve", param_hint=flag
            )
    from stackwatch.demo.runner import DemoOptions, busy_ports, run_demo, run_serve

    options = DemoOptions(
        quick=quick,
        serve=serve,
        users=users,
        duration_s=duration,
        scale=scale,
        mode=mode,
        report_dir=report_dir,
        port=port,
        compare=not no_compare,
        fault_injection=fault_injection,
        worker_metrics_port=worker_metrics_port,
    )
    if serve:
        ports = {"--port": port, "--worker-metrics-port": options.served_worker_metrics_port()}
        if ports["--worker-metrics-port"] in (port, 65536):
            raise typer.BadParameter(
                "give the worker a port of its own (not --port; --port + 1 by default)",
                param_hint="--worker-metrics-port",
            )
        if busy := busy_ports(ports):
            raise typer.BadParameter(
                f"already in use on 127.0.0.1: {', '.join(busy)}; choose free ports"
            )
    try:
        code = run_demo(options) if options.compare else run_serve(options)
    except KeyboardInterrupt:
        typer.echo("interrupted: servers stopped and demo data removed", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


# --- cache (stackwatch.cache: stats and namespace purge) ---------------------------------

cache_app = typer.Typer(help="Look at and purge the @cached Redis cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _configure_cache(redis_url: str | None, prefix: str | None) -> None:
    from stackwatch.cache import configure

    configure(redis_url=redis_url, cache_prefix=prefix)


@cache_app.command("stats")
def cache_stats_command(
    namespaces: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Only this namespace (repeatable); default: all."),
    ] = None,
    redis_url: str | None = typer.Option(None, "--redis-url", help="Default: REDIS_URL."),
    prefix: str | None = typer.Option(None, "--prefix", help="Default: STACKWATCH_CACHE_PREFIX."),
    as_json: bool = typer.Option(False, "--json", help="Print the stats as JSON."),
) -> None:
    """Hits, misses, errors, hit ratio, keys and memory per namespace (over all processes)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from stackwatch.cache import cache_stats
    from stackwatch.cache.stats import STATS_COLUMNS, stats_rows

    _configure_cache(redis_url, prefix)
    try:
        stats = cache_stats(namespaces or None)
    except ValueError as error:
        typer.echo(f"stackwatch: {error}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
    else:
        table = Table(title=f"stackwatch cache ({stats['source']}, circuit {stats['circuit']})")
        for column in STATS_COLUMNS:
            table.add_column(column, justify="left" if column == "namespace" else "right")
        for row in stats_rows(stats):
            table.add_row(*row)
        Console().print(table)
    if stats["source"] != "redis":
        typer.echo(f"stackwatch: Redis not reachable ({stats.get('error')})", err=True)
        raise typer.Exit(1)


@cache_app.command("purge")
def cache_purge_command(
    namespace: str = typer.Argument(..., help="The namespace to invalidate."),
    redis_url: str | None = typer.Option(None, "--redis-url", help="Default: REDIS_URL."),
    prefix: str | None = typer.Option(None, "--prefix", help="Default: STACKWATCH_CACHE_PREFIX."),
) -> None:
    """Invalidate every value of NAMESPACE: bump its version, then SCAN + UNLINK its keys."""
    import redis

    from stackwatch.cache import invalidate_namespace

    _configure_cache(redis_url, prefix)
    try:
        removed = invalidate_namespace(namespace)
    except ValueError as error:
        typer.echo(f"stackwatch: {error}", err=True)
        raise typer.Exit(2) from None
    except (redis.RedisError, OSError) as error:
        typer.echo(f"stackwatch: cannot purge {namespace!r}: Redis error {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"purged {namespace}: {removed} keys deleted, older values unreachable")


# --- db (PostgreSQL reports: stackwatch.postgres, stackwatch.pglog) ----------------------

db_app = typer.Typer(
    help="PostgreSQL reports: setup, top statements, indexes, EXPLAIN, slow-log scan.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")

_DATABASE_URL_OPTION = typer.Option(
    None,
    "--database-url",
    envvar=["STACKWATCH_DATABASE_URL", "DATABASE_URL"],
    help="PostgreSQL URL; default $STACKWATCH_DATABASE_URL or $DATABASE_URL.",
    show_envvar=False,
)


def _db_print(value: object, as_json: bool) -> None:
    """Print a report: JSON (dataclasses as dicts) or its rich rendering."""
    import json

    from rich.console import Console

    from stackwatch.postgres import as_json as report_as_json

    if as_json:
        typer.echo(json.dumps(report_as_json(value), indent=2, default=str))
    else:
        from stackwatch import dbreports

        renderers = {
            "SetupReport": dbreports.setup_table,
            "TopReport": dbreports.top_table,
            "IndexReport": dbreports.index_tables,
            "list": dbreports.explain_tables,
            "LogScanReport": dbreports.logscan_tables,
        }
        Console().print(renderers[type(value).__name__](value))  # type: ignore[operator]


def _db_run(database_url: str | None, report: Callable[[Any], object], as_json: bool) -> None:
    """Connect, run ``report(connection)``, print it; a DatabaseReportError is one line, exit 1."""
    from stackwatch.postgres import DatabaseReportError, connect

    if not database_url:
        raise typer.BadParameter(
            "no database: pass --database-url or set DATABASE_URL", param_hint="--database-url"
        )
    try:
        with connect(database_url) as connection:
            result = report(connection)
    except DatabaseReportError as error:
        typer.echo(f"stackwatch db: {error}", err=True)
        raise typer.Exit(1) from None
    _db_print(result, as_json)


@db_app.command("setup")
def db_setup(
    database_url: str | None = _DATABASE_URL_OPTION,
    slow_ms: float = typer.Option(
        100.0,
        "--slow-ms",
        min=0,
        envvar="STACKWATCH_SLOW_QUERY_MS",
        help="log_min_duration_statement to set.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Enable pg_stat_statements and the slow-statement log (ALTER SYSTEM); idempotent."""
    from stackwatch.postgres import setup_database

    _db_run(database_url, lambda conn: setup_database(conn, slow_ms), as_json)


@db_app.command("top")
def db_top(
    database_url: str | None = _DATABASE_URL_OPTION,
    limit: int = typer.Option(10, "--limit", "-n", min=1, help="Statements to show."),
    order: str = typer.Option("total", "--order", help="total, mean or calls."),
    since: Annotated[
        Path | None, typer.Option("--since", help="Show deltas since this saved snapshot.")
    ] = None,
    save: Annotated[
        Path | None, typer.Option("--save", help="Also save a snapshot here for a later --since.")
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Top statements of this database from pg_stat_statements, with route and request id."""
    from stackwatch import postgres

    if order not in ("total", "mean", "calls"):
        raise typer.BadParameter("choose total, mean or calls", param_hint="--order")
    try:
        snapshot = postgres.load_snapshot(since) if since is not None else None
    except postgres.DatabaseReportError as error:
        raise typer.BadParameter(str(error), param_hint="--since") from None

    def report(conn: Any) -> object:
        result = postgres.top_statements(conn, limit=limit, order=order, since=snapshot)  # type: ignore[arg-type]
        if save is not None:
            postgres.save_snapshot(conn, save)
        return result

    _db_run(database_url, report, as_json)


@db_app.command("indexes")
def db_indexes(
    database_url: str | None = _DATABASE_URL_OPTION,
    min_rows: int = typer.Option(1000, "--min-rows", min=0, help="Ignore smaller tables."),
    slowest: int = typer.Option(
        10, "--slowest", min=0, help="Statements to try index suggestions for."
    ),
    timeout_ms: int = typer.Option(10_000, "--timeout-ms", min=100, help="Per check."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Unused and redundant indexes, seq-scan tables, suggested indexes (checked, rolled back)."""
    from stackwatch.postgres import index_report

    _db_run(
        database_url,
        lambda conn: index_report(conn, min_rows=min_rows, slowest=slowest, timeout_ms=timeout_ms),
        as_json,
    )


@db_app.command("explain")
def db_explain(
    statement: Annotated[str | None, typer.Argument(help="A SELECT statement.")] = None,
    database_url: str | None = _DATABASE_URL_OPTION,
    top: int | None = typer.Option(
        None, "--top", min=1, help="Explain the N SELECTs with most total time instead."
    ),
    timeout_ms: int = typer.Option(5000, "--timeout-ms", min=100, help="statement_timeout."),
    large_rows: int = typer.Option(
        10_000, "--large-rows", min=1, help="Flag seq scans on tables at least this big."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (plans included)."),
) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) a SELECT in a rolled-back read-only transaction."""
    from stackwatch import postgres

    if (statement is None) == (top is None):
        raise typer.BadParameter("give a SELECT statement or --top N (one of the two)")
    if statement is not None:
        try:
            postgres.require_select(statement)
        except postgres.DatabaseReportError as error:
            raise typer.BadParameter(str(error), param_hint="STATEMENT") from None

    def report(conn: Any) -> object:
        if statement is not None:
            return [
                postgres.explain_statement(
                    conn, statement, timeout_ms=timeout_ms, large_table_rows=large_rows
                )
            ]
        return postgres.explain_top(
            conn, top or 1, timeout_ms=timeout_ms, large_table_rows=large_rows
        )

    _db_run(database_url, report, as_json)


@db_app.command("logscan")
def db_logscan(
    files: Annotated[list[Path], typer.Argument(help="PostgreSQL log files (.gz too).")],
    log_format: str = typer.Option("auto", "--format", help="auto, stderr, csvlog or jsonlog."),
    prefix: str = typer.Option(
        "%m [%p] ", "--prefix", help="log_line_prefix of stderr logs (SHOW log_line_prefix)."
    ),
    slow_ms: float = typer.Option(
        100.0,
        "--slow-ms",
        min=0,
        envvar="STACKWATCH_SLOW_QUERY_MS",
        help="Slow-statement threshold.",
    ),
    top: int = typer.Option(20, "--top", min=1, help="Statements to list."),
    fail_on_gate: bool = typer.Option(
        False, "--fail-on-gate", help="Exit 1 if any day has 10 or more slow statements."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Summarise `duration:` lines by normalised statement, per day against the gate."""
    from stackwatch.pglog import scan_logs

    if log_format not in ("auto", "stderr", "csvlog", "jsonlog"):
        raise typer.BadParameter("choose auto, stderr, csvlog or jsonlog", param_hint="--format")
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise typer.BadParameter(f"no such file: {', '.join(missing)}", param_hint="FILES")
    report = scan_logs(
        files,
        log_format=log_format,  # type: ignore[arg-type]
        line_prefix=prefix,
        slow_threshold_ms=slow_ms,
        top=top,
    )
    _db_print(report, as_json)
    if fail_on_gate and any(not day.gate_ok for day in report.days):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
