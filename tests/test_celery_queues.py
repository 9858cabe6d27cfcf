"""Queues: lengths read from the real brokers at scrape time, and a high queue that is never
stuck behind a backlog of low-priority work.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import structlog
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest

from stackwatch.celery import BrokerQueueLengths, uninstrument_celery
from stackwatch.metrics import CeleryQueueLengthCollector
from tests.conftest import free_port
from tests.support.celery_app import make_app, queue_names
from tests.support.celery_worker import (
    BROKERS,
    delete_broker_state,
    new_prefix,
    start_worker,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "rabbitmq"])
def idle_app(request: pytest.FixtureRequest) -> Iterator[tuple[Celery, str]]:
    """An app whose queues no worker consumes, so messages stay where they were published."""
    prefix = new_prefix()
    app = make_app(BROKERS[request.param], prefix, instrument=False)
    yield app, prefix
    delete_broker_state(request.param, prefix)


def test_queue_length_counts_waiting_messages_including_priority_lists(
    idle_app: tuple[Celery, str],
) -> None:
    app, prefix = idle_app
    high, default, low = queue_names(prefix)
    for _ in range(4):
        app.tasks["swtest.low_work"].delay(0)
    for _ in range(3):  # on Redis these land in the priority-suffixed lists
        app.tasks["swtest.low_work"].apply_async(args=(0,), priority=9)
    app.tasks["swtest.urgent"].delay()

    reader = BrokerQueueLengths(app, [high, default, low])
    assert reader() == {high: 1, default: 0, low: 7}

    registry = CollectorRegistry()
    registry.register(CeleryQueueLengthCollector(reader))
    text = generate_latest(registry).decode()
    assert f'celery_queue_length{{queue="{low}"}} 7.0' in text
    assert f'celery_queue_length{{queue="{high}"}} 1.0' in text


def test_queue_length_of_a_dead_broker_is_absent_quickly_and_logged_once() -> None:
    app = Celery("dead", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    reader = BrokerQueueLengths(app, ["default"], timeout_s=0.5)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        assert reader() == {}
        assert reader() == {}
        elapsed = time.monotonic() - started
    assert elapsed < 5
    warnings = [
        line for line in logs if line["event"] == "cannot read queue lengths from the broker"
    ]
    assert len(warnings) == 1, "one warning per outage, not one per scrape"


def test_high_queue_task_is_served_while_a_thousand_low_tasks_wait(tmp_path: object) -> None:
    prefix = new_prefix()
    high, default, low = queue_names(prefix)
    app = make_app(BROKERS["redis"], prefix)
    log_dir = tmp_path  # type: ignore[assignment]
    low_worker = high_worker = None
    try:
        low_worker = start_worker(
            broker="redis", prefix=prefix, log_dir=log_dir, queues=[low, default], concurrency=1
        )
        high_worker = start_worker(
            broker="redis", prefix=prefix, log_dir=log_dir, queues=[high], concurrency=1
        )
        low_work = app.tasks["swtest.low_work"]
        with app.producer_or_acquire() as producer:
            for _ in range(1000):
                low_work.apply_async(args=(0.05,), producer=producer)

        started = time.monotonic()
        served_at = app.tasks["swtest.urgent"].delay().get(timeout=15)
        waited = time.monotonic() - started
        assert waited < 10
        assert served_at > 0
        waiting = low_worker.sample("celery_queue_length", queue=low)
        assert waiting >= 900, "the low queue is still backed up when the high task is done"
        assert (
            high_worker.sample("celery_tasks_total", task="swtest.urgent", state="succeeded") == 1
        )
        assert low_worker.sample("celery_tasks_total", task="swtest.urgent", state="succeeded") == 0
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(low)
        for worker in (low_worker, high_worker):
            if worker is not None:
                worker.stop()
        uninstrument_celery(app)
        delete_broker_state("redis", prefix)
