"""The service that tests/test_stack_e2e.py runs under uvicorn and Prometheus scrapes.

Every metric of the contract is produced by stackwatch's real code paths:
``instrument_fastapi`` (HTTP), ``instrument_sqlalchemy`` on the test's PostgreSQL
database (query timing, slow queries, queries per request, N+1), ``@cached`` on
the shared Redis under the test's key prefix (lookups, Redis latency, memory),
``instrument_celery`` with tasks run eagerly in this process (task counts and run
time) and ``BrokerQueueLengths`` counting messages published to a queue of the
test's own that no worker consumes (queue length).

Configured by environment: E2E_DATABASE_URL, E2E_REDIS_URL, E2E_PREFIX.
``POST /control/latency?seconds=S`` sets the latency of ``/api/items/{item_id}``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from celery import Celery
from fastapi import FastAPI, HTTPException
from sqlalchemy import create_engine, text

import stackwatch
from stackwatch import metrics
from stackwatch.cache import cache_stats, cached, configure
from stackwatch.celery import BrokerQueueLengths

PREFIX = os.environ["E2E_PREFIX"]
REDIS_URL = os.environ["E2E_REDIS_URL"]
QUEUE = f"{PREFIX}:backlog"

stackwatch.setup(service_name="stackwatch-e2e")
engine = create_engine(
    os.environ["E2E_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
    pool_size=2,
)
stackwatch.instrument_sqlalchemy(engine)
configure(redis_url=REDIS_URL, cache_prefix=PREFIX)

celery_app = Celery("e2e", broker=REDIS_URL)
celery_app.conf.task_default_queue = QUEUE
stackwatch.instrument_celery(celery_app)
metrics.register_scrape_time_collector(
    metrics.CeleryQueueLengthCollector(BrokerQueueLengths(celery_app, [QUEUE]))
)


@celery_app.task(name="e2e.add")
def add(x: int, y: int) -> int:
    """A task that succeeds."""
    return x + y


@celery_app.task(name="e2e.fail")
def fail() -> None:
    """A task that fails, so the failure-ratio series exists."""
    raise RuntimeError("planned failure")


@cached("e2e_quote", ttl=300)
def quote(code: str) -> dict[str, str]:
    """A cached lookup: the first call per code misses, the rest hit."""
    return {"code": code}


app = FastAPI()
latency = {"seconds": 0.0}


@app.get("/api/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    """The endpoint whose latency the test injects."""
    await asyncio.sleep(latency["seconds"])
    return {"item": item_id}


@app.post("/control/latency")
async def set_latency(seconds: float) -> dict[str, float]:
    """Set the injected latency of /api/items/{item_id}."""
    latency["seconds"] = seconds
    return latency


@app.get("/api/quotes/{code}")
def get_quote(code: str) -> dict[str, str]:
    """Cached; also refreshes cache_memory_bytes from Redis INFO."""
    result = quote(code)
    cache_stats()
    return result


@app.get("/api/report")
def report() -> dict[str, int]:
    """Six identical statements in one request: an N+1 pattern."""
    with engine.connect() as connection:
        total = sum(
            int(connection.execute(text("SELECT :n"), {"n": n}).scalar_one()) for n in range(6)
        )
    return {"total": total}


@app.post("/seed/once")
def seed_once() -> dict[str, Any]:
    """One slow query, one failed and one successful task, one queued message."""
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(0.15)"))
    add.apply(args=(1, 2))
    fail.apply()
    add.apply_async(args=(1, 2), queue=QUEUE)
    return {"seeded": True}


@app.post("/api/tasks")
def run_task() -> dict[str, int]:
    """A successful task run."""
    return {"result": int(add.apply(args=(2, 3)).get())}


@app.get("/api/boom")
def boom() -> None:
    """A 5xx, so the error-ratio series exists."""
    raise HTTPException(status_code=503, detail="planned outage")


stackwatch.instrument_fastapi(app)
