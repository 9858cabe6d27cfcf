"""Database URLs and Alembic migrations of the demo, run from code (no alembic.ini).

One PostgreSQL URL is given by the user (``postgresql://...``); each consumer needs
its own driver: asyncpg for the service, psycopg for migrations and COPY-free admin.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA_REVISION = "0001"
PLAN_INDEXES_REVISION = "0002"


def with_driver(url: str, driver: str) -> str:
    """``postgresql://...`` (any driver) rewritten for ``driver`` (asyncpg, psycopg)."""
    parsed = make_url(url)
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def plain_url(url: str) -> str:
    """The libpq form (``postgresql://``) of any SQLAlchemy PostgreSQL URL."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the demo's migrations and ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", with_driver(url, "psycopg").replace("%", "%%"))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision``."""
    _run(url, revision, upgrade=True)


def rollback(url: str, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision`` (``base`` drops everything)."""
    _run(url, revision, upgrade=False)


def _run(url: str, revision: str, *, upgrade: bool) -> None:
    config = alembic_config(url)
    engine = create_engine(with_driver(url, "psycopg"))
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            if upgrade:
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
            connection.commit()
    finally:
        engine.dispose()
