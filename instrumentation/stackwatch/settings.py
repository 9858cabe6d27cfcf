"""One Settings object: the ``STACKWATCH_*`` variables plus the standard ``OTEL_*`` ones.

Every knob of stackwatch lives here so that a wrong value fails at start-up, once,
with a single line naming the variable and what it accepts, instead of surfacing
later as a traceback from deep inside an exporter.

Precedence follows OpenTelemetry's: an argument passed to ``setup()`` beats an
environment variable, a signal-specific variable (``OTEL_EXPORTER_OTLP_TRACES_*``)
beats the generic one, and ``OTEL_SERVICE_NAME`` beats ``service.name`` in
``OTEL_RESOURCE_ATTRIBUTES``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TracesExporter = Literal["otlp", "console", "none"]
OtlpProtocol = Literal["http/protobuf", "grpc"]
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
LogFormat = Literal["json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
NPlusOneMode = Literal["warn", "raise", "off"]
# What the sqlcommenter comment carries (see sqlalchemy.py): the route always; the
# request id and traceparent on statements of a sampled trace ("sampled") or on all
# statements ("full"). Per-request values make each request's statements new texts
# for the driver and the server, so they cost prepared statements and their plans.
SqlCommenterMode = Literal["sampled", "full", "route", "off"]
# The boolean spellings of earlier releases: true meant the full comment.
_SQL_COMMENTER_BOOLEANS = {"true": "full", "1": "full", "false": "off", "0": "off"}

DEFAULT_TTL_POLICIES: dict[str, int] = {"price": 30, "signal": 600, "stock_info": 3600}


class SettingsError(SystemExit):
    """A setting a user got wrong; printed as one line, without a traceback.

    It subclasses SystemExit on purpose: raised during start-up (``setup()``, the CLI,
    ``opentelemetry-instrument``), Python prints the message and exits with status 1
    instead of dumping a stack that hides the one line the user needs to read.
    """

    def __init__(self, message: str) -> None:
        super().__init__(f"stackwatch: {message}")
        self.message = message

    def __str__(self) -> str:
        return f"stackwatch: {self.message}"


def _env(*names: str) -> Any:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every setting stackwatch reads, validated once.

    Field names are what ``setup(**overrides)`` accepts; each field documents the
    environment variable(s) it is read from, first match wins.
    """

    model_config = SettingsConfigDict(
        env_prefix="STACKWATCH_",
        case_sensitive=False,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    # --- identity (resource) ---
    service_name: str | None = Field(
        default=None, validation_alias=_env("OTEL_SERVICE_NAME", "STACKWATCH_SERVICE_NAME")
    )
    service_version: str | None = Field(
        default=None, validation_alias=_env("STACKWATCH_SERVICE_VERSION")
    )
    environment: str | None = Field(
        default=None, validation_alias=_env("STACKWATCH_ENVIRONMENT", "DEPLOYMENT_ENVIRONMENT")
    )
    resource_attributes: str = Field(default="", validation_alias=_env("OTEL_RESOURCE_ATTRIBUTES"))
    sdk_disabled: bool = Field(default=False, validation_alias=_env("OTEL_SDK_DISABLED"))

    # --- traces ---
    traces_exporter: TracesExporter = Field(
        default="otlp", validation_alias=_env("OTEL_TRACES_EXPORTER")
    )
    otlp_endpoint: str | None = Field(
        default=None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    otlp_protocol: OtlpProtocol = Field(
        default="http/protobuf",
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    )
    otlp_headers: str = Field(
        default="",
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    )
    otlp_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        validation_alias=_env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
    )
    traces_sampler: SamplerName = Field(
        default="parentbased_traceidratio", validation_alias=_env("OTEL_TRACES_SAMPLER")
    )
    traces_sampler_arg: float = Field(
        default=1.0, ge=0.0, le=1.0, validation_alias=_env("OTEL_TRACES_SAMPLER_ARG")
    )
    bsp_max_queue_size: int = Field(
        default=2048, ge=1, le=1_000_000, validation_alias=_env("OTEL_BSP_MAX_QUEUE_SIZE")
    )
    bsp_max_export_batch_size: int = Field(
        default=512, ge=1, le=1_000_000, validation_alias=_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
    )
    bsp_schedule_delay_ms: int = Field(
        default=5000, ge=1, le=600_000, validation_alias=_env("OTEL_BSP_SCHEDULE_DELAY")
    )

    # --- logs ---
    log_format: LogFormat = "json"
    log_level: LogLevel = "info"

    # --- request ids and HTTP ---
    request_id_header: str = "X-Request-ID"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_token: SecretStr | None = None
    metrics_path: str = "/metrics"
    # gc.freeze() the heap once the ASGI app has started (see fastapi.py's _freeze_heap)
    gc_freeze: bool = True

    # --- database ---
    database_url: str | None = Field(
        default=None, validation_alias=_env("STACKWATCH_DATABASE_URL", "DATABASE_URL")
    )
    slow_query_ms: float = Field(default=100.0, ge=0)
    log_sql_parameters: bool = False
    nplusone: NPlusOneMode = "warn"
    nplusone_threshold: int = Field(default=5, ge=2)
    sql_commenter: SqlCommenterMode = "sampled"

    # --- cache ---
    redis_url: str | None = Field(
        default=None, validation_alias=_env("STACKWATCH_REDIS_URL", "REDIS_URL")
    )
    cache_prefix: str = "sw"
    cache_ttl_policies: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(DEFAULT_TTL_POLICIES)
    )
    cache_ttl_jitter: float = Field(default=0.1, ge=0.0, le=1.0)
    cache_socket_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    cache_max_value_bytes: int = Field(default=1_048_576, ge=1)
    cache_breaker_failures: int = Field(default=5, ge=1)
    cache_breaker_open_s: float = Field(default=30.0, gt=0)
    cache_hit_ratio_warn: float = Field(default=0.8, ge=0.0, le=1.0)
    cache_min_lookups: int = Field(default=100, ge=1)

    # --- celery ---
    celery_broker_url: str | None = Field(
        default=None, validation_alias=_env("STACKWATCH_CELERY_BROKER_URL", "CELERY_BROKER_URL")
    )
    autoscale_cpu_high: float = Field(default=80.0, gt=0, le=100)
    autoscale_memory_high: float = Field(default=85.0, gt=0, le=100)

    @field_validator("otlp_endpoint", "otlp_traces_endpoint")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        _require_url(value, schemes=("http", "https"))
        return value

    @field_validator("database_url", "redis_url", "celery_broker_url")
    @classmethod
    def _service_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        _require_url(value, schemes=None)
        return value

    @field_validator("request_id_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not value or any(not (ch.isalnum() or ch in "-_") for ch in value):
            raise ValueError("a header name of letters, digits, '-' or '_'")
        return value

    @field_validator("metrics_path")
    @classmethod
    def _metrics_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a path starting with '/'")
        return value

    @field_validator("sql_commenter", mode="before")
    @classmethod
    def _sql_commenter(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "full" if value else "off"
        if isinstance(value, str):
            lowered = value.strip().lower()
            return _SQL_COMMENTER_BOOLEANS.get(lowered, lowered)
        return value

    @field_validator("cache_ttl_policies", mode="before")
    @classmethod
    def _ttl_policies(cls, value: Any) -> Any:
        merged = dict(DEFAULT_TTL_POLICIES)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError('a JSON object such as {"price": 30}') from None
        if not isinstance(value, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()
        ):
            raise ValueError('a JSON object of positive whole seconds such as {"price": 30}')
        merged.update(value)
        return merged

    # --- derived values ---

    def resource_attribute_map(self) -> dict[str, str]:
        """Parse ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded values)."""
        attributes: dict[str, str] = {}
        for pair in self.resource_attributes.split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise SettingsError(
                    f"invalid OTEL_RESOURCE_ATTRIBUTES entry {pair[:40]!r}: "
                    "expected comma-separated key=value pairs"
                )
            attributes[key.strip()] = unquote(value.strip())
        return attributes

    def effective_service_name(self) -> str:
        """OTEL_SERVICE_NAME, else service.name from the resource attributes, else a default."""
        return (
            self.service_name
            or self.resource_attribute_map().get("service.name")
            or "unknown_service"
        )

    def effective_environment(self) -> str:
        """The deployment environment, from settings or the resource attributes."""
        attributes = self.resource_attribute_map()
        return (
            self.environment
            or attributes.get("deployment.environment.name")
            or attributes.get("deployment.environment")
            or "development"
        )

    def traces_endpoint(self) -> str:
        """The URL the OTLP exporter posts to, following the OTLP exporter spec.

        For http/protobuf a generic endpoint gets ``/v1/traces`` appended, a
        signal-specific one is used as it is.
        """
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_protocol == "grpc":
            return self.otlp_endpoint or "http://localhost:4317"
        if self.otlp_endpoint is None:
            return "http://localhost:4318/v1/traces"
        return self.otlp_endpoint.rstrip("/") + "/v1/traces"

    def otlp_header_map(self) -> dict[str, str]:
        """Parse ``OTEL_EXPORTER_OTLP_HEADERS`` (``k=v,k2=v2``)."""
        headers: dict[str, str] = {}
        for pair in self.otlp_headers.split(","):
            key, sep, value = pair.partition("=")
            if sep and key.strip():
                headers[key.strip().lower()] = unquote(value.strip())
        return headers


def _require_url(value: str, schemes: tuple[str, ...] | None) -> None:
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a non-numeric port
    except ValueError:
        raise ValueError("a URL such as scheme://host:port") from None
    if not parts.scheme or not (parts.hostname or parts.path):
        raise ValueError("a URL such as scheme://host:port")
    if schemes is not None and parts.scheme not in schemes:
        raise ValueError(f"a URL starting with {' or '.join(s + '://' for s in schemes)}")


def _field_name(location: str) -> str:
    """Map an error location (a field name or one of its environment aliases) to the field."""
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and location in alias.choices:
            return name
    return location


def _describe_field(name: str) -> str:
    """The environment variable a field was read from (the one that is set), for messages."""
    field = Settings.model_fields.get(name)
    if field is None:
        return name
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        choices = [str(choice) for choice in alias.choices]
        return next((choice for choice in choices if choice in os.environ), choices[0])
    return f"STACKWATCH_{name.upper()}"


def _allowed_values(name: str) -> str | None:
    field = Settings.model_fields.get(name)
    annotation = getattr(field, "annotation", None)
    choices = getattr(annotation, "__args__", None)
    if choices and all(isinstance(choice, str) for choice in choices):
        return ", ".join(choices)
    return None


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    location = first.get("loc") or ("settings",)
    field_name = _field_name(str(location[0]))
    variable = _describe_field(field_name)
    raw = first.get("input")
    shown = repr(raw)[:60] if isinstance(raw, str | int | float) else "the given value"
    allowed = _allowed_values(field_name)
    if first.get("type") == "extra_forbidden":
        return f"unknown setting {field_name!r}: see stackwatch.settings.Settings for the names"
    if allowed:
        return f"invalid {variable}={shown}: allowed values are {allowed}"
    message = str(first.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if message and not message.startswith(("Input should", "a ")):
        message = message[0].lower() + message[1:]
    return f"invalid {variable}={shown}: expected {message.removeprefix('Input should be ')}"


def load_settings(**overrides: Any) -> Settings:
    """Build the Settings from the environment plus ``overrides``, or fail in one line.

    Raises:
        SettingsError: naming the variable and the accepted values.
    """
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings = Settings(**overrides)
        settings.resource_attribute_map()
    except ValidationError as error:
        raise SettingsError(_one_line(error)) from None
    return settings


@functools.cache
def host_name() -> str:
    """The host name for the ``host.name`` resource attribute."""
    return socket.gethostname()


_active: Settings | None = None


def get_settings() -> Settings:
    """The settings in force: what ``stackwatch.setup()`` installed, else the environment.

    Instrumentations call this instead of ``load_settings()`` so that overrides passed
    to ``setup()`` reach them, and so that the environment is parsed once.
    """
    global _active
    if _active is None:
        _active = load_settings()
    return _active


def install_settings(settings: Settings | None) -> None:
    """Make ``settings`` the ones ``get_settings()`` returns (None: re-read the environment)."""
    global _active
    _active = settings
