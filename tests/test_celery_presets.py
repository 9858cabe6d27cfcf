"""configure_celery, the retry policy, instrument/uninstrument and the in-process task hooks.

No worker here: tasks run in-process (``task.apply()``), which fires the same
task_prerun / task_postrun signals a worker does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from prometheus_client import REGISTRY

from stackwatch.celery import (
    EAGER_QUEUE,
    REQUEST_ID_HEADER,
    TRANSIENT_ERRORS,
    RetryingTask,
    configure_celery,
    instrument_celery,
    retry_policy,
    uninstrument_celery,
    worker_environment,
)
from stackwatch.requestid import bind_request_id, is_valid_request_id, request_id, reset_request_id
from stackwatch.scope import WorkScope, current_scope


@pytest.fixture
def app() -> Iterator[Celery]:
    application = Celery("presets", broker="memory://", set_as_current=False)
    configure_celery(application, routes={"reports.*": "low"})
    instrument_celery(application)
    yield application
    uninstrument_celery(application)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_configure_celery_declares_high_default_low_and_at_least_once_delivery() -> None:
    app = configure_celery(Celery("c", set_as_current=False))
    assert [queue.name for queue in app.conf.task_queues] == ["high", "default", "low"]
    assert app.conf.task_default_queue == "default"
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.accept_content == ["json"], "no pickle"
    assert app.conf.worker_autoscaler == "stackwatch.celery:ResourceAwareAutoscaler"


def test_tasks_are_routed_by_name_pattern_and_by_decorator_option(app: Celery) -> None:
    @app.task(shared=False, name="reports.monthly")
    def monthly() -> None: ...

    @app.task(shared=False, name="signals.realtime", queue="high")
    def realtime() -> None: ...

    @app.task(shared=False, name="misc.other")
    def other() -> None: ...

    def queue_of(task: Any) -> str:
        options = {**task._get_exec_options()}
        return str(app.amqp.router.route(options, task.name, (), {})["queue"].name)

    assert queue_of(monthly) == "low"
    assert queue_of(realtime) == "high"
    assert queue_of(other) == "default"


def test_configure_celery_rejects_a_route_to_an_unknown_queue_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match=r"route 'x\.\*' -> 'urgent': no such queue"):
        configure_celery(Celery("c", set_as_current=False), routes={"x.*": "urgent"})
    with pytest.raises(ValueError, match="default_queue 'main' is not one of the queues"):
        configure_celery(Celery("c", set_as_current=False), default_queue="main")


def test_retry_policy_retries_transient_errors_with_jittered_exponential_backoff() -> None:
    options = retry_policy(max_retries=3)
    assert options["autoretry_for"] == TRANSIENT_ERRORS
    assert ConnectionError in TRANSIENT_ERRORS
    assert ValueError not in TRANSIENT_ERRORS
    assert options["max_retries"] == 3
    assert options["retry_backoff"] == 2
    assert options["retry_jitter"] is True
    assert RetryingTask.autoretry_for == TRANSIENT_ERRORS
    assert RetryingTask.retry_jitter is True


def test_retrying_task_base_retries_a_transient_error_and_fails_on_others(app: Celery) -> None:
    app.conf.task_always_eager = True
    attempts: list[int] = []

    @app.task(shared=False, base=RetryingTask, bind=True, name="t.flaky", retry_backoff=False)
    def flaky(self: Any) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise ConnectionError("down")
        return 7

    @app.task(shared=False, base=RetryingTask, name="t.bug")
    def bug() -> None:
        raise ValueError("a bug is not retried")

    assert flaky.apply().get() == 7
    assert attempts == [0, 1, 2]
    assert bug.apply().failed()


def test_instrument_celery_is_idempotent_and_reversible() -> None:
    # Other tests of the session may keep an app of theirs instrumented: count relative.
    receivers_before = len(signals.task_prerun.receivers)
    otel_before = CeleryInstrumentor().is_instrumented_by_opentelemetry
    app = Celery("i", set_as_current=False)
    instrument_celery(app)
    once = len(signals.task_prerun.receivers)
    instrument_celery(app)
    assert len(signals.task_prerun.receivers) == once
    assert once - receivers_before in (0, 2)  # CeleryInstrumentor's and ours, at most once
    assert CeleryInstrumentor().is_instrumented_by_opentelemetry
    uninstrument_celery(app)
    uninstrument_celery(app)
    assert len(signals.task_prerun.receivers) == receivers_before
    assert CeleryInstrumentor().is_instrumented_by_opentelemetry == otel_before


def test_task_runs_with_its_request_id_and_scope_then_both_are_reset(app: Celery) -> None:
    seen: dict[str, Any] = {}

    @app.task(shared=False, name="t.look")
    def look() -> None:
        scope = current_scope()
        assert isinstance(scope, WorkScope)
        seen.update(request_id=request_id(), kind=scope.kind, name=scope.name)

    before = sample("celery_tasks_total", task="t.look", queue=EAGER_QUEUE, state="succeeded")
    look.apply(headers={REQUEST_ID_HEADER: "from-the-web-1"})
    assert seen == {"request_id": "from-the-web-1", "kind": "celery", "name": "t.look"}
    assert request_id() is None, "the id does not leak past the task"
    assert current_scope() is None
    after = sample("celery_tasks_total", task="t.look", queue=EAGER_QUEUE, state="succeeded")
    assert after == before + 1


def test_task_without_request_id_gets_a_fresh_one(app: Celery) -> None:
    @app.task(shared=False, name="t.fresh")
    def fresh() -> str | None:
        return request_id()

    first, second = fresh.apply().get(), fresh.apply().get()
    assert is_valid_request_id(first)
    assert is_valid_request_id(second)
    assert first != second


def test_published_task_carries_the_current_request_id_and_hostile_ones_are_replaced(
    app: Celery,
) -> None:
    token = bind_request_id("web-req-42")
    try:
        headers: dict[str, Any] = {"id": "t1"}
        signals.before_task_publish.send(sender="t.any", headers=headers, body=((), {}, {}))
        assert headers[REQUEST_ID_HEADER] == "web-req-42"

        rejected = sample("request_id_rejected_total", source="celery")
        hostile: dict[str, Any] = {"id": "t2", REQUEST_ID_HEADER: "x\r\nSet-Cookie: a=b"}
        signals.before_task_publish.send(sender="t.any", headers=hostile, body=((), {}, {}))
        assert is_valid_request_id(hostile[REQUEST_ID_HEADER])
        assert sample("request_id_rejected_total", source="celery") == rejected + 1
    finally:
        reset_request_id(token)


def test_worker_environment_creates_a_multiprocess_dir_only_when_none_is_set(
    tmp_path: Any,
) -> None:
    given = worker_environment({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert given["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    assert "STACKWATCH_OWNED_MULTIPROC_DIR" not in given

    made = worker_environment({"PATH": "/usr/bin"})
    directory = made["PROMETHEUS_MULTIPROC_DIR"]
    try:
        assert made["STACKWATCH_OWNED_MULTIPROC_DIR"] == directory
        assert made["PATH"] == "/usr/bin"
    finally:
        import shutil

        shutil.rmtree(directory)


@pytest.mark.integration
def test_sql_of_a_task_is_counted_per_task_and_commented_with_its_request_id(
    app: Celery, pg_url: str
) -> None:
    import sqlalchemy

    from stackwatch.settings import load_settings
    from stackwatch.sqlalchemy import instrument_sqlalchemy, uninstrument_sqlalchemy
    from tests.support.sent_sql import record_sent

    engine = sqlalchemy.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    # No recorded trace here: the default comment would carry the route only.
    instrument_sqlalchemy(engine, settings=load_settings(sql_commenter="full"))
    sent = record_sent(engine)

    @app.task(shared=False, name="t.sql")
    def three_queries() -> None:
        with engine.connect() as connection:
            for number in range(3):
                connection.execute(sqlalchemy.text(f"SELECT {number}"))

    count_before = sample("db_queries_per_request_count", path="t.sql")
    sum_before = sample("db_queries_per_request_sum", path="t.sql")
    try:
        three_queries.apply(headers={REQUEST_ID_HEADER: "from-the-web-9"})
    finally:
        uninstrument_sqlalchemy(engine)
        engine.dispose()
    assert sample("db_queries_per_request_count", path="t.sql") == count_before + 1
    assert sample("db_queries_per_request_sum", path="t.sql") == sum_before + 3
    selects = [statement for statement in sent if statement.startswith("SELECT")]
    assert selects
    assert all("request_id='from-the-web-9'" in statement for statement in selects)
    assert all("route='t.sql'" in statement for statement in selects)


def test_stackwatch_celery_without_arguments_prints_usage_not_a_traceback() -> None:
    from typer.testing import CliRunner

    from stackwatch.cli import app as cli

    result = CliRunner().invoke(cli, ["celery"])
    assert result.exit_code == 2
    assert "Usage:" in result.output
    assert "stackwatch celery -A proj worker" in result.output
    assert "Traceback" not in result.output
