"""A real prefork worker (2 processes) on the real Redis broker and on RabbitMQ.

One worker per broker serves the whole module; each test measures deltas of the
worker's own /metrics, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import fastapi
import httpx
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import stackwatch
from stackwatch.celery import REQUEST_ID_HEADER, uninstrument_celery
from stackwatch.requestid import is_valid_request_id
from tests.support.celery_app import REDIS_URL, make_app, queue_names
from tests.support.celery_worker import (
    BROKERS,
    Worker,
    delete_broker_state,
    new_prefix,
    publish_without_stackwatch,
    start_worker,
    wait_for,
)
from tests.support.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration


class Setup:
    """The module's worker, its producer app and the receiver of the worker's spans."""

    def __init__(
        self, broker: str, prefix: str, worker: Worker, app: Celery, receiver: OtlpReceiver
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.worker = worker
        self.app = app
        self.receiver = receiver

    def call(self, name: str, *args: Any, **options: Any) -> AsyncResult:
        return self.app.tasks[name].apply_async(args=args, **options)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    broker = request.param
    prefix = new_prefix()
    directory = tmp_path_factory.mktemp(f"celery-{broker}")
    multiprocess_dir = directory / "prometheus"
    multiprocess_dir.mkdir()
    app = make_app(BROKERS[broker], prefix)
    with OtlpReceiver() as receiver:
        worker = start_worker(
            broker=broker,
            prefix=prefix,
            log_dir=directory,
            otlp_endpoint=receiver.endpoint,
            multiprocess_dir=multiprocess_dir,
        )
        try:
            yield Setup(broker, prefix, worker, app, receiver)
        finally:
            worker.stop()
            uninstrument_celery(app)
            delete_broker_state(broker, prefix)


def counts(worker: Worker, task: str) -> dict[str, float]:
    return {
        state: worker.sample("celery_tasks_total", task=task, state=state)
        for state in ("succeeded", "failed", "retried")
    }


async def test_task_span_and_log_lines_carry_the_http_requests_id_and_trace(
    setup: Setup, spans: InMemorySpanExporter
) -> None:
    whoami = setup.app.tasks["swtest.whoami"]
    api = fastapi.FastAPI()

    @api.post("/scan")
    async def scan() -> dict[str, str]:
        return {"task_id": whoami.delay().id}

    stackwatch.instrument_fastapi(api)
    try:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/scan", headers={"X-Request-ID": "nginx-req-7f3a"})
    finally:
        stackwatch.uninstrument_fastapi(api)
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "nginx-req-7f3a"
    result = AsyncResult(response.json()["task_id"], app=setup.app).get(timeout=30)

    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    trace_id = format(server.context.trace_id, "032x")
    (producer,) = [s for s in spans.get_finished_spans() if s.name == "apply_async/swtest.whoami"]
    assert format(producer.context.trace_id, "032x") == trace_id
    assert producer.attributes is not None
    assert producer.attributes["request.id"] == "nginx-req-7f3a"

    assert result["request_id"] == "nginx-req-7f3a"
    assert result["trace_id"] == trace_id

    run = wait_for(
        lambda: [s for s in setup.receiver.spans if s.name == "run/swtest.whoami"],
        15,
        "the worker's task span at the OTLP receiver",
    )[-1]
    assert run.trace_id == trace_id
    assert run.parent_span_id == format(producer.context.span_id, "016x")
    assert run.attributes["request.id"] == "nginx-req-7f3a"
    assert run.resource["service.name"] == "swtest-worker"

    (line,) = wait_for(
        lambda: [
            line
            for line in setup.worker.log_lines()
            if line.get("event") == "whoami ran" and line.get("trace_id") == trace_id
        ],
        10,
        "the task's log line",
    )
    assert line["request_id"] == "nginx-req-7f3a"
    assert line["span_id"] == run.span_id


def test_succeeded_failed_retried_counts_are_exact_across_worker_processes(setup: Setup) -> None:
    worker = setup.worker
    tasks = ("swtest.ok", "swtest.boom", "swtest.flaky", "swtest.hopeless")
    before = {task: counts(worker, task) for task in tasks}

    oks = [setup.call("swtest.ok", 0.1) for _ in range(8)]
    booms = [setup.call("swtest.boom") for _ in range(3)]
    flakies = [setup.call("swtest.flaky", 2) for _ in range(2)]
    hopeless = setup.call("swtest.hopeless")
    pids = {result.get(timeout=30) for result in oks}
    for result in [*booms, hopeless]:
        result.get(timeout=30, propagate=False)
        assert result.failed()
    assert [result.get(timeout=30) for result in flakies] == [2, 2]
    assert len(pids) == 2, "both prefork processes ran tasks"

    expected = {
        "swtest.ok": {"succeeded": 8, "failed": 0, "retried": 0},
        "swtest.boom": {"succeeded": 0, "failed": 3, "retried": 0},
        "swtest.flaky": {"succeeded": 2, "failed": 0, "retried": 4},
        "swtest.hopeless": {"succeeded": 0, "failed": 1, "retried": 1},
    }

    def delta() -> dict[str, dict[str, float]]:
        now = {task: counts(worker, task) for task in tasks}
        return {
            task: {state: now[task][state] - before[task][state] for state in now[task]}
            for task in tasks
        }

    # A result is stored before task_postrun runs: wait until the counters caught up.
    wait_for(lambda: delta() == expected, 10, f"counts {expected}")
    assert delta() == expected
    queue = queue_names(setup.prefix)[1]
    assert worker.sample("celery_task_duration_seconds_count", task="swtest.ok", queue=queue) >= 8
    assert "hostname" not in worker.scrape()


def test_hostile_request_id_in_a_task_message_is_replaced_and_counted(setup: Setup) -> None:
    hostile = 'evil\r\n{"event": "forged", "level": "critical"}' + "x" * 300
    rejected_before = setup.worker.sample("request_id_rejected_total", source="celery")
    # From a producer without stackwatch nothing validates the header on the way out:
    # the worker is the last line of defence.
    result = publish_without_stackwatch(
        setup.app, "swtest.whoami", queue_names(setup.prefix)[1], {REQUEST_ID_HEADER: hostile}
    )
    returned = result.get(timeout=30)

    assert returned["request_id"] != hostile
    assert is_valid_request_id(returned["request_id"])
    wait_for(
        lambda: (
            setup.worker.sample("request_id_rejected_total", source="celery") == rejected_before + 1
        ),
        10,
        "request_id_rejected_total{source=celery} to grow by one",
    )
    log = setup.worker.log_text()
    assert '"event":"request id rejected"' in log.replace(": ", ":")
    assert '\n{"event": "forged"' not in log
    assert not any(line.get("event") == "forged" for line in setup.worker.log_lines())


def test_tasks_without_a_parent_request_get_fresh_ids_that_do_not_leak(setup: Setup) -> None:
    default = queue_names(setup.prefix)[1]
    # No header at all: the worker makes one per task.
    bare = [publish_without_stackwatch(setup.app, "swtest.whoami", default) for _ in range(4)]
    published = [setup.call("swtest.whoami") for _ in range(4)]  # outside any request
    ids = [result.get(timeout=30)["request_id"] for result in [*bare, *published]]
    assert all(is_valid_request_id(value) for value in ids)
    assert len(set(ids)) == len(ids), "every task got its own id; none inherited another's"


def test_killed_worker_process_mid_task_is_redelivered_and_completes(setup: Setup) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    key = f"{new_prefix()}:kill"
    try:
        result = setup.call("swtest.slow", 2.0, key)
        victim = int(wait_for(lambda: store.get(f"{key}:pid"), 20, "the task to start"))
        os.kill(victim, signal.SIGKILL)
        survivor = result.get(timeout=45)
        assert survivor != victim
        assert int(store.get(f"{key}:attempts") or 0) == 2
    finally:
        store.delete(f"{key}:pid", f"{key}:attempts")
        store.close()


def test_worker_metrics_report_the_length_of_each_consumed_queue(setup: Setup) -> None:
    text = setup.worker.scrape()
    for queue in queue_names(setup.prefix):
        assert f'celery_queue_length{{queue="{queue}"}}' in text
