"""Demo services for tests: a seeded demo database, and the `stackwatch demo --serve` command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from stackwatch.demo import data as demo_data
from stackwatch.demo import schema
from stackwatch.demo.runner import Target, purge_prefix
from tests.conftest import POSTGRES_ADMIN_URL, REDIS_URL


@contextmanager
def seeded_target(
    pg_url: str, redis_prefix: str, work_dir: Path, scale: float
) -> Iterator[tuple[Target, list[str]]]:
    """``pg_url`` migrated and seeded at ``scale``: the demo Target and tickers by popularity.

    The Redis keys under ``redis_prefix`` are purged afterwards; the database is the
    caller's (the ``pg_url`` fixture drops it).
    """
    schema.migrate(pg_url, schema.SCHEMA_REVISION)
    dataset = demo_data.generate(scale)
    asyncio.run(demo_data.load(pg_url, dataset))
    target = Target(
        admin_url=POSTGRES_ADMIN_URL,
        database_url=pg_url,
        redis_url=REDIS_URL,
        prefix=redis_prefix,
        embedded=False,
        work_dir=work_dir,
    )
    try:
        yield target, dataset.by_popularity()
    finally:
        purge_prefix(REDIS_URL, redis_prefix)


def serve_command(scale: float, port: int, worker_port: int, *options: str) -> list[str]:
    """``stackwatch demo --serve --no-compare --quick`` at ``scale`` on the given ports."""
    return [
        sys.executable,
        "-m",
        "stackwatch.cli",
        "demo",
        "--serve",
        "--no-compare",
        *options,
        "--quick",
        "--scale",
        str(scale),
        "--port",
        str(port),
        "--worker-metrics-port",
        str(worker_port),
    ]
