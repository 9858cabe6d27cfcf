"""``stackwatch ...``: the command line (typer + rich).

Each command is a thin shell over a module that does the work, so that everything
the CLI can do is also callable from Python and testable without a terminal.
"""

from __future__ import annotations

import typer

import stackwatch

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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
