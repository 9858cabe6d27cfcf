"""Prefork children recycled after every task (``--max-tasks-per-child=1``) lose nothing.

OpenTelemetry contrib #4916: a child that exits skips atexit hooks, so spans still in
the batch queue were lost. Here the batch delay is a minute: every span that arrives
while the worker is still running was flushed by the exiting child. Task counts of
the dead children stay on /metrics, and ``stackwatch celery``'s own multiprocess
directory is removed when the worker stops.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stackwatch.celery import uninstrument_celery
from tests.support.celery_app import make_app
from tests.support.celery_worker import (
    BROKERS,
    delete_broker_state,
    new_prefix,
    start_worker,
    wait_for,
)
from tests.support.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration


def test_recycled_worker_processes_flush_their_spans_and_keep_their_counts(
    tmp_path: Path,
) -> None:
    prefix = new_prefix()
    app = make_app(BROKERS["redis"], prefix)
    with OtlpReceiver() as receiver:
        worker = start_worker(
            broker="redis",
            prefix=prefix,
            log_dir=tmp_path,
            otlp_endpoint=receiver.endpoint,
            extra_args=("--max-tasks-per-child=1",),
            env={"OTEL_BSP_SCHEDULE_DELAY": "60000"},
        )
        try:
            results = [app.tasks["swtest.ok"].delay() for _ in range(4)]
            pids = {result.get(timeout=30) for result in results}
            assert len(pids) == 4, "every task ran in a fresh child"
            task_ids = {result.id for result in results}
            wait_for(
                lambda: (
                    task_ids
                    <= {
                        span.attributes.get("messaging.message.id")
                        for span in receiver.spans
                        if span.name == "run/swtest.ok"
                    }
                ),
                15,
                "the task spans of the recycled children",
            )
            assert worker.sample("celery_tasks_total", task="swtest.ok", state="succeeded") == 4

            (served,) = [
                line for line in worker.log_lines() if line.get("event") == "worker metrics served"
            ]
            multiprocess_dir = Path(served["multiprocess_dir"])
            assert multiprocess_dir.is_dir()
        finally:
            worker.stop()
            uninstrument_celery(app)
            delete_broker_state("redis", prefix)
    assert worker.process.returncode == 0
    assert not multiprocess_dir.exists(), "the directory stackwatch made is removed on shutdown"
