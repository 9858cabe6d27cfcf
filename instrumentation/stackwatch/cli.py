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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
