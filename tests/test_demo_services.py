"""The demo against real services: migrations up and down, the N+1 detector per mode.

PostgreSQL and Redis are the machine's (own database via ``pg_url``, own key prefix).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from stackwatch.demo import data as demo_data
from stackwatch.demo import schema
from stackwatch.demo.runner import Target, start_services
from stackwatch.demo.workload import scrape
from tests.support.demo_target import seeded_target

pytestmark = pytest.mark.integration

PLAN_INDEXES = {
    "ix_daily_price_ticker_date",
    "ix_signal_status",
    "ix_institutional_flow_date",
    "ix_institutional_flow_ticker_date",
    "ix_signal_ticker",
}


def _indexes(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def _invalid_indexes(url: str) -> int:
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
    return int(row[0]) if row else -1


def test_migrations_create_and_roll_back_the_plan_indexes_concurrently(pg_url: str) -> None:
    schema.migrate(pg_url, schema.SCHEMA_REVISION)
    assert not _indexes(pg_url) & PLAN_INDEXES
    asyncio.run(demo_data.load(pg_url, demo_data.generate(0.01)))
    schema.migrate(pg_url, "head")
    assert _indexes(pg_url) >= PLAN_INDEXES
    assert _invalid_indexes(pg_url) == 0
    schema.rollback(pg_url, schema.SCHEMA_REVISION)
    assert not _indexes(pg_url) & PLAN_INDEXES
    with psycopg.connect(pg_url) as connection:
        assert connection.execute("SELECT count(*) FROM daily_price").fetchone() == (20 * 250,)
    schema.rollback(pg_url, "base")
    assert _indexes(pg_url) <= {"alembic_version_pkc"}


@pytest.fixture
def seeded(pg_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[tuple[Target, list[str]]]:
    with seeded_target(pg_url, redis_prefix, tmp_path, scale=0.02) as seeded:
        yield seeded


def _n_plus_one(base_url: str, path: str) -> float:
    samples = scrape(httpx.get(f"{base_url}/metrics", timeout=10).text)
    return sum(
        value
        for labels, value in samples.get("db_n_plus_one_total", {}).items()
        if dict(labels).get("path") == path
    )


def test_n_plus_one_detector_fires_in_baseline_and_not_in_optimized(
    seeded: tuple[Target, list[str]],
) -> None:
    target, tickers = seeded
    detail = "/api/kr/stocks/{ticker}"
    baseline = start_services(target, "baseline")
    try:
        response = httpx.get(f"{baseline.base_url}/api/kr/stocks/{tickers[0]}", timeout=30)
        assert response.status_code == 200
        assert len(response.json()["peers"]) > 0
        assert _n_plus_one(baseline.base_url, detail) >= 1
    finally:
        baseline.stop()

    schema.migrate(target.database_url, "head")
    optimized = start_services(target, "optimized", warm=(10, 2))
    try:
        for ticker in tickers[:5] + tickers[-5:]:
            answer = httpx.get(f"{optimized.base_url}/api/kr/stocks/{ticker}", timeout=30)
            assert answer.status_code == 200
        assert answer.json().keys() == response.json().keys()
        assert _n_plus_one(optimized.base_url, detail) == 0
        missing = httpx.get(f"{optimized.base_url}/api/kr/stocks/999999", timeout=30)
        assert missing.status_code == 404
        hostile = httpx.get(f"{optimized.base_url}/api/kr/stocks/12%27%3B--", timeout=30)
        assert hostile.status_code == 422
    finally:
        optimized.stop()
