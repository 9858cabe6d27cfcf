"""Start a real Celery worker (``stackwatch celery ... worker``) as a subprocess, and clean up.

The worker runs in its own session so that stopping it kills its prefork children
too, whatever state the test left it in. Its stdout (JSON log lines) goes to a file
the test can read; its /metrics is served on a free port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.support.celery_app import REDIS_URL, queue_names
from tests.support.process import REPO, clean_env

RABBITMQ_URL = os.environ.get("STACKWATCH_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}


def new_prefix() -> str:
    """A prefix for queue names and keys that no other test uses."""
    return f"swcelery-{uuid.uuid4().hex[:10]}"


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Worker:
    """A running worker: its process, log file and metrics port."""

    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    stopped: bool = field(default=False)

    def log_lines(self) -> list[dict[str, Any]]:
        """The worker's JSON log lines so far (other lines are skipped)."""
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            if raw.startswith("{"):
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue
        return lines

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        """The value of one series on /metrics (0.0 when absent)."""
        for family in text_string_to_metric_families(self.scrape()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def stop(self, graceful_timeout: float = 15.0) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL for the whole session if it lingers."""
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(graceful_timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        return self.process.returncode


def start_worker(
    *,
    broker: str,
    prefix: str,
    log_dir: Path,
    queues: list[str] | None = None,
    concurrency: int = 2,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    otlp_endpoint: str | None = None,
    multiprocess_dir: Path | None = None,
    ready_timeout: float = 45.0,
) -> Worker:
    """Start ``stackwatch celery -A tests.support.celery_app worker`` and wait for /metrics."""
    metrics_port = free_port()
    log_path = log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
    environment = clean_env(
        SWTEST_CELERY_BROKER=BROKERS[broker],
        SWTEST_CELERY_PREFIX=prefix,
        STACKWATCH_METRICS_PORT=str(metrics_port),
        STACKWATCH_LOG_LEVEL="info",
        OTEL_SERVICE_NAME="swtest-worker",
        OTEL_TRACES_EXPORTER="otlp" if otlp_endpoint else "none",
        OTEL_BSP_SCHEDULE_DELAY="200",
        PYTHONUNBUFFERED="1",
    )
    if otlp_endpoint:
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    if multiprocess_dir is not None:
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(multiprocess_dir)
    environment.update(env or {})
    command = [
        sys.executable,
        "-m",
        "stackwatch.cli",
        "celery",
        "-A",
        "tests.support.celery_app",
        "worker",
        "-P",
        "prefork",
        "-Q",
        ",".join(queues or queue_names(prefix)),
        "-n",
        f"{prefix}-{uuid.uuid4().hex[:4]}@%h",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
        *(() if any(a.startswith("--autoscale") for a in extra_args) else ("-c", str(concurrency))),
        *extra_args,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = Worker(process, log_path, metrics_port)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited early:\n{worker.log_text()[-4000:]}")
        try:
            worker.scrape()
        except OSError:
            return False
        return True

    try:
        wait_for(ready, ready_timeout, "the worker's /metrics")
    except BaseException:
        worker.stop(graceful_timeout=2)
        raise
    return worker


def publish_without_stackwatch(
    app: Celery, task_name: str, queue: str, headers: dict[str, Any] | None = None
) -> AsyncResult:
    """Publish a task message as a producer without stackwatch would: no Celery publish
    signals run in this process, whatever is instrumented here, so nothing validates or
    adds the request id header on the way out.
    """
    task_id = str(uuid.uuid4())
    message = app.amqp.as_task_v2(task_id, task_name, args=(), kwargs={})
    destination = app.amqp.queues[queue]
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange=destination.exchange,
            routing_key=destination.routing_key,
            headers={**message.headers, **(headers or {})},
            serializer="json",
            declare=[destination],
            **message.properties,
        )
    return app.AsyncResult(task_id)


def delete_broker_state(broker: str, prefix: str) -> None:
    """Remove everything the prefix left on the broker (queues, exchanges, Redis keys)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.unlink(key)
        # kombu's bindings registry is one set per exchange, under the global prefix too.
        for key in client.scan_iter(match=f"*{prefix}*", count=500):
            client.unlink(key)
    finally:
        client.close()
    if broker == "rabbitmq":
        with Connection(RABBITMQ_URL, connect_timeout=5) as connection:
            for name in queue_names(prefix):
                channel = connection.channel()
                try:
                    channel.queue_delete(name)
                    channel.exchange_delete(name)
                except connection.channel_errors:
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()


def worker_scope(**kwargs: Any) -> Iterator[Worker]:
    """Generator for fixtures: start a worker, always stop it."""
    worker = start_worker(**kwargs)
    try:
        yield worker
    finally:
        worker.stop()
