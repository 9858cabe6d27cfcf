"""The Celery app the Celery tests run: built by ``make_app`` in the test process, and by
the worker subprocess (``-A tests.support.celery_app``) from ``SWTEST_CELERY_*`` variables.

Each test module passes its own prefix: queue names, exchanges, Redis keys (through
kombu's ``global_keyprefix``) and result keys are all under it, so tests of several
engineers share the brokers without seeing each other's messages.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
import structlog
from celery import Celery, Task
from opentelemetry import trace

from stackwatch.celery import (
    ResourceAwareAutoscaler,
    ResourceLoad,
    configure_celery,
    instrument_celery,
    retry_policy,
)
from stackwatch.requestid import request_id

REDIS_URL = os.environ.get("STACKWATCH_TEST_REDIS", "redis://127.0.0.1:6379/0")

_log = structlog.get_logger("swtest.tasks")


def queue_names(prefix: str) -> tuple[str, str, str]:
    """The high, default and low queues of a prefix (hyphenated, like celery-exporter #324's)."""
    return (f"{prefix}-high", f"{prefix}-default", f"{prefix}-low")


def make_app(broker_url: str, prefix: str, *, instrument: bool = True) -> Celery:
    """The test app on ``broker_url``, isolated under ``prefix``."""
    high, default, low = queue_names(prefix)
    # The current app (Celery's default): OpenTelemetry's instrumentation finds the task
    # of a published message in the current app's registry.
    app = Celery("swtest", broker=broker_url, backend=REDIS_URL)
    configure_celery(
        app,
        queues=(high, default, low),
        default_queue=default,
        routes={"swtest.urgent": high, "swtest.low_work": low},
    )
    app.conf.update(
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        result_backend_transport_options={"global_keyprefix": f"{prefix}:"},
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        broker_heartbeat=0,
    )
    store = redis.Redis.from_url(REDIS_URL)

    @app.task(shared=False, name="swtest.whoami")
    def whoami() -> dict[str, Any]:
        context = trace.get_current_span().get_span_context()
        _log.info("whoami ran")
        return {
            "request_id": request_id(),
            "trace_id": format(context.trace_id, "032x"),
            "pid": os.getpid(),
        }

    @app.task(shared=False, name="swtest.ok")
    def ok(seconds: float = 0.0) -> int:
        time.sleep(seconds)
        return os.getpid()

    @app.task(shared=False, name="swtest.boom")
    def boom() -> None:
        raise ValueError("boom")

    @app.task(
        shared=False, name="swtest.flaky", bind=True, **retry_policy(max_retries=3, backoff_max_s=1)
    )
    def flaky(self: Task, failures: int) -> int:
        if self.request.retries < failures:
            raise ConnectionError("broker hiccup")
        return int(self.request.retries)

    @app.task(shared=False, name="swtest.hopeless", **retry_policy(max_retries=1, backoff_max_s=1))
    def hopeless() -> None:
        raise ConnectionError("never comes back")

    @app.task(shared=False, name="swtest.slow")
    def slow(seconds: float, key: str) -> int:
        store.incr(f"{key}:attempts")
        store.set(f"{key}:pid", os.getpid())
        time.sleep(seconds)
        return os.getpid()

    @app.task(shared=False, name="swtest.urgent")
    def urgent() -> float:
        return time.time()

    @app.task(shared=False, name="swtest.low_work")
    def low_work(seconds: float) -> None:
        time.sleep(seconds)

    if instrument:
        instrument_celery(app)
    return app


class SimulatedLoadAutoscaler(ResourceAwareAutoscaler):
    """The real autoscaler, reading "cpu,memory" percentages the test writes to Redis."""

    cooldown_s = 0.3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        store = redis.Redis.from_url(REDIS_URL)
        key = f"{os.environ['SWTEST_CELERY_PREFIX']}:load"

        def reading() -> ResourceLoad:
            raw = store.get(key)
            cpu, memory = (float(part) for part in raw.split(b",")) if raw else (0.0, 0.0)
            return ResourceLoad(cpu, memory)

        super().__init__(*args, load_reader=reading, **kwargs)


if "SWTEST_CELERY_BROKER" in os.environ:  # in the worker subprocess
    import stackwatch

    stackwatch.setup()
    app = make_app(os.environ["SWTEST_CELERY_BROKER"], os.environ["SWTEST_CELERY_PREFIX"])
    autoscaler = os.environ.get("SWTEST_CELERY_AUTOSCALER")
    if autoscaler:
        app.conf.worker_autoscaler = autoscaler
