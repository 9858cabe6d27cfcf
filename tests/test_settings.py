"""Bad settings fail at start-up with one line naming the variable and the allowed values."""

from __future__ import annotations

import pytest

from stackwatch.settings import Settings, SettingsError, load_settings
from tests.support.process import clean_env, run_python


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("OTEL_TRACES_EXPORTER", "jaeger", "allowed values are otlp, console, none"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "allowed values are http/protobuf, grpc"),
        ("OTEL_TRACES_SAMPLER", "sometimes", "allowed values are always_on"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5", "less than or equal to 1"),
        ("OTEL_TRACES_SAMPLER_ARG", "-0.1", "greater than or equal to 0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://collector", "http:// or https://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://host:port", "a URL such as"),
        ("REDIS_URL", "redis://x:notaport", "a URL such as"),
        ("STACKWATCH_LOG_FORMAT", "xml", "allowed values are json, console"),
        ("STACKWATCH_SQL_COMMENTER", "yes", "allowed values are sampled, full, route, off"),
        ("STACKWATCH_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("STACKWATCH_CACHE_TTL_POLICIES", "{not json", "a JSON object"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue", "key=value"),
    ],
)
def test_bad_value_names_variable_and_allowed_values(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith("stackwatch: ")
    assert variable in message
    assert expected in message
    assert "\n" not in message


def test_setup_with_bad_setting_exits_with_one_line_and_no_traceback() -> None:
    result = run_python(
        "import stackwatch; stackwatch.setup()", clean_env(OTEL_TRACES_EXPORTER="zipkin")
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "stackwatch: invalid OTEL_TRACES_EXPORTER='zipkin': allowed values are otlp, console, none"
    ]


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'sample_rate'"):
        load_settings(sample_rate=0.5)


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    assert load_settings(traces_sampler_arg=0.1).traces_sampler_arg == 0.1


def test_signal_specific_otlp_variables_beat_generic_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    settings = load_settings()
    assert settings.otlp_protocol == "http/protobuf"
    assert settings.traces_endpoint() == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://other:4318/x")
    assert load_settings().traces_endpoint() == "http://other:4318/x"


def test_grpc_default_endpoint_has_no_path() -> None:
    assert Settings(otlp_protocol="grpc").traces_endpoint() == "http://localhost:4317"


def test_ttl_policies_merge_over_the_plan_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKWATCH_CACHE_TTL_POLICIES", '{"price": 15, "news": 120}')
    policies = load_settings().cache_ttl_policies
    assert policies == {"price": 15, "signal": 600, "stock_info": 3600, "news": 120}


@pytest.mark.parametrize(
    ("value", "mode"),
    [("route", "route"), ("FULL", "full"), ("true", "full"), ("1", "full"), ("False", "off")],
)
def test_sql_commenter_takes_a_mode_or_the_booleans_of_earlier_releases(
    monkeypatch: pytest.MonkeyPatch, value: str, mode: str
) -> None:
    assert load_settings().sql_commenter == "sampled"
    monkeypatch.setenv("STACKWATCH_SQL_COMMENTER", value)
    assert load_settings().sql_commenter == mode
