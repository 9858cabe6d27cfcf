"""setup(): spans reach a real OTLP/HTTP receiver with the right resource; logs carry trace ids."""

from __future__ import annotations

import json

from tests.support.otlp_receiver import OtlpReceiver
from tests.support.process import clean_env, run_python

EMIT_ONE_SPAN = """
import stackwatch, structlog
from opentelemetry import trace
stackwatch.setup({service!r})
with trace.get_tracer("test").start_as_current_span("unit-of-work") as span:
    span.set_attribute("answer", 42)
    structlog.get_logger("test").info("inside span")
structlog.get_logger("test").info("outside span")
stackwatch.shutdown()
"""


def test_spans_reach_otlp_http_receiver_with_resource_attributes() -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_RESOURCE_ATTRIBUTES="team=signals,service.name=overridden",
            STACKWATCH_SERVICE_VERSION="1.2.3",
            STACKWATCH_ENVIRONMENT="staging",
        )
        result = run_python(EMIT_ONE_SPAN.format(service="krx-api"), env)
        assert result.returncode == 0, result.stderr
    (span,) = [s for s in receiver.spans if s.name == "unit-of-work"]
    assert span.attributes["answer"] == 42
    assert span.resource["service.name"] == "krx-api"
    assert span.resource["service.version"] == "1.2.3"
    assert span.resource["deployment.environment"] == "staging"
    assert span.resource["team"] == "signals"
    assert span.resource["host.name"]


def test_otel_service_name_beats_resource_attributes() -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="from-env",
            OTEL_RESOURCE_ATTRIBUTES="service.name=from-attributes",
        )
        result = run_python(EMIT_ONE_SPAN.format(service=None), env)
        assert result.returncode == 0, result.stderr
    assert {s.resource["service.name"] for s in receiver.spans} == {"from-env"}


def test_signal_specific_endpoint_is_used_as_is() -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # would fail if used
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.endpoint}/custom/path",
        )
        result = run_python(EMIT_ONE_SPAN.format(service="svc"), env)
        assert result.returncode == 0, result.stderr
    assert [s.name for s in receiver.spans] == ["unit-of-work"]


def test_json_log_lines_carry_trace_and_span_ids_of_the_active_span() -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        result = run_python(EMIT_ONE_SPAN.format(service="svc"), env)
        assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    inside = next(line for line in lines if line["event"] == "inside span")
    outside = next(line for line in lines if line["event"] == "outside span")
    (span,) = receiver.spans
    assert inside["trace_id"] == span.trace_id
    assert inside["span_id"] == span.span_id
    assert inside["level"] == "info"
    assert "trace_id" not in outside


def test_stdlib_loggers_are_rendered_as_json_with_trace_ids() -> None:
    code = """
    import logging, stackwatch
    from opentelemetry import trace
    stackwatch.setup("svc", traces_exporter="none")
    with trace.get_tracer("t").start_as_current_span("s"):
        logging.getLogger("uvicorn.error").warning("server said %s", "hi")
        logging.getLogger("sqlalchemy.engine").warning("engine said")
    """
    result = run_python(code, clean_env())
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["server said hi", "engine said"]
    assert lines[0]["logger"] == "uvicorn.error"
    # traces_exporter=none still samples, so ids are there for log correlation
    assert all(len(line["trace_id"]) == 32 for line in lines)


def test_access_line_short_way_writes_what_structlog_writes_and_yields_to_user_config() -> None:
    """logs.log_info_line skips structlog's call path only while it writes the same line."""
    code = """
    import structlog, stackwatch
    from stackwatch.logs import log_info_line
    from stackwatch.requestid import bind_request_id
    stackwatch.setup("svc", traces_exporter="none")
    bind_request_id("req-1")
    structlog.contextvars.bind_contextvars(user="u1")
    fields = {"status": 200, "duration_ms": 1.5, "odd": {1, 2}}
    log_info_line("stackwatch.http", "request", dict(fields))
    structlog.get_logger("stackwatch.http").info("request", **fields)
    structlog.contextvars.unbind_contextvars("user")
    structlog.configure(processors=[lambda _, __, event: {**event, "mine": True},
                                    structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory())
    log_info_line("stackwatch.http", "request", {"status": 201})
    """
    result = run_python(code, clean_env())
    assert result.returncode == 0, result.stderr
    short, through_structlog, user_configured = (
        json.loads(line) for line in result.stdout.splitlines()
    )
    short.pop("timestamp")
    through_structlog.pop("timestamp")
    assert short == through_structlog
    assert list(short) == list(through_structlog)  # same key order too
    assert (short["user"], short["request_id"]) == ("u1", "req-1")
    assert (short["logger"], short["level"]) == ("stackwatch.http", "info")
    assert user_configured == {"status": 201, "event": "request", "mine": True}


def test_access_line_short_way_respects_the_log_level() -> None:
    code = """
    import stackwatch
    from stackwatch.logs import log_info_line
    stackwatch.setup("svc", traces_exporter="none", log_level="warning")
    log_info_line("stackwatch.http", "request", {"status": 200})
    print("done")
    """
    result = run_python(code, clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["done"]


def test_console_log_format_is_not_json() -> None:
    code = """
    import stackwatch, structlog
    stackwatch.setup("svc", traces_exporter="none", log_format="console")
    structlog.get_logger("t").info("human readable", n=1)
    """
    result = run_python(code, clean_env())
    assert result.returncode == 0, result.stderr
    assert "human readable" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_exception_logs_have_no_local_variables() -> None:
    code = """
    import stackwatch, structlog
    stackwatch.setup("svc", traces_exporter="none")
    password = "hunter2-secret"
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("t").exception("failed")
    """
    result = run_python(code, clean_env())
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout.splitlines()[-1])
    assert line["exception"][0]["exc_type"] == "ValueError"
    assert "hunter2-secret" not in result.stdout


def test_setup_twice_returns_the_first_settings_and_keeps_one_exporter() -> None:
    with OtlpReceiver() as receiver:
        code = """
        import stackwatch
        from opentelemetry import trace
        first = stackwatch.setup("first")
        second = stackwatch.setup("second")
        assert first is second, (first, second)
        with trace.get_tracer("t").start_as_current_span("once"):
            pass
        stackwatch.shutdown()
        """
        result = run_python(code, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
        assert result.returncode == 0, result.stderr
    assert [s.name for s in receiver.spans] == ["once"]
    assert receiver.spans[0].resource["service.name"] == "first"


def test_ratio_sampler_zero_exports_nothing() -> None:
    with OtlpReceiver() as receiver:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0",
        )
        result = run_python(EMIT_ONE_SPAN.format(service="svc"), env)
        assert result.returncode == 0, result.stderr
    assert receiver.spans == []


def test_spans_from_a_forked_child_are_flushed_before_it_exits() -> None:
    with OtlpReceiver() as receiver:
        code = """
        import multiprocessing, stackwatch
        from opentelemetry import trace
        stackwatch.setup("forky", bsp_schedule_delay_ms=60000)

        def work(n):
            with trace.get_tracer("t").start_as_current_span(f"child-{n}"):
                pass

        ctx = multiprocessing.get_context("fork")
        children = [ctx.Process(target=work, args=(n,)) for n in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(30)
            assert child.exitcode == 0
        """
        result = run_python(code, clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint))
        assert result.returncode == 0, result.stderr
    # The schedule delay (60 s) is longer than the test: only the exit flush sends them.
    assert sorted(s.name for s in receiver.spans) == ["child-0", "child-1"]


def test_grpc_protocol_exports_to_a_grpc_receiver() -> None:
    from tests.support.otlp_receiver import GrpcOtlpReceiver

    with GrpcOtlpReceiver() as receiver:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"
        )
        result = run_python(EMIT_ONE_SPAN.format(service="grpc-svc"), env)
        assert result.returncode == 0, result.stderr
    assert [(s.name, s.resource["service.name"]) for s in receiver.spans] == [
        ("unit-of-work", "grpc-svc")
    ]
