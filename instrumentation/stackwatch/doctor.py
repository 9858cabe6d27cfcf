"""``stackwatch doctor``: checks what is configured and says how to fix what is not.

Each check is a small function returning one ``Check`` row (ok / warn / fail, a
detail and a fix hint); every network call has a short timeout so the doctor
itself never hangs on a black-holed host.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal
from urllib.parse import urlsplit

from stackwatch.settings import Settings

Status = Literal["ok", "warn", "fail"]
TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One row of the doctor's table."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_dict(self) -> dict[str, str]:
        """The row as plain data, for ``--json``."""
        return asdict(self)


def _redact(url: str) -> str:
    """The URL without its password, for display."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def check_otlp(settings: Settings) -> Check:
    """Can the trace exporter's endpoint be reached (a TCP connect, nothing is sent)?"""
    if settings.sdk_disabled or settings.traces_exporter != "otlp":
        return Check(
            "traces exporter",
            "ok",
            f"OTEL_TRACES_EXPORTER={settings.traces_exporter}"
            + (" (OTEL_SDK_DISABLED)" if settings.sdk_disabled else ""),
        )
    endpoint = settings.traces_endpoint()
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=TIMEOUT_S):
            pass
    except OSError as error:
        return Check(
            "OTLP endpoint",
            "fail",
            f"{endpoint} ({settings.otlp_protocol}): {error.strerror or error}",
            "start Jaeger or an OpenTelemetry Collector there, point "
            "OTEL_EXPORTER_OTLP_ENDPOINT at one, or set OTEL_TRACES_EXPORTER=none",
        )
    return Check(
        "OTLP endpoint", "ok", f"{endpoint} ({settings.otlp_protocol}) accepts connections"
    )


def _libpq_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+asyncpg://...) in the form libpq understands."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}"


def check_database(settings: Settings) -> list[Check]:
    """Does DATABASE_URL connect, and is PostgreSQL set up for the reports?"""
    if not settings.database_url:
        return [
            Check(
                "database",
                "warn",
                "DATABASE_URL is not set",
                "set DATABASE_URL=postgresql://user@host:5432/db to check it",
            )
        ]
    import psycopg

    shown = _redact(settings.database_url)
    try:
        with psycopg.connect(
            _libpq_url(settings.database_url), connect_timeout=int(TIMEOUT_S)
        ) as connection:
            version = connection.execute("SHOW server_version").fetchone()
            preload = connection.execute("SHOW shared_preload_libraries").fetchone()
            installed = connection.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
            ).fetchone()
            slow_log = connection.execute("SHOW log_min_duration_statement").fetchone()
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        return [
            Check(
                "database",
                "fail",
                f"{shown}: {first_line}",
                "check host, port, credentials and that the database exists",
            )
        ]
    rows = [Check("database", "ok", f"{shown} (PostgreSQL {version[0] if version else '?'})")]
    if "pg_stat_statements" not in str(preload[0] if preload else ""):
        rows.append(
            Check(
                "pg_stat_statements",
                "warn",
                "not in shared_preload_libraries",
                "run `stackwatch db setup`, then restart PostgreSQL",
            )
        )
    elif installed is None:
        rows.append(
            Check(
                "pg_stat_statements",
                "warn",
                "loaded, but the extension is not created in this database",
                "run `stackwatch db setup`",
            )
        )
    else:
        rows.append(Check("pg_stat_statements", "ok", "loaded and created"))
    threshold = str(slow_log[0] if slow_log else "-1")
    if threshold in ("-1", "0"):
        rows.append(
            Check(
                "slow-query log",
                "warn",
                f"log_min_duration_statement = {threshold}",
                "run `stackwatch db setup` (sets it to 100ms)",
            )
        )
    else:
        rows.append(Check("slow-query log", "ok", f"log_min_duration_statement = {threshold}"))
    return rows


def check_redis(settings: Settings) -> Check:
    """Does REDIS_URL answer PING?"""
    if not settings.redis_url:
        return Check(
            "redis", "warn", "REDIS_URL is not set", "set REDIS_URL=redis://host:6379/0 to check it"
        )
    import redis

    shown = _redact(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S
    )
    try:
        client.ping()
        info = client.info("server")
    except redis.RedisError as error:
        return Check("redis", "fail", f"{shown}: {error}", "check that Redis runs at that address")
    finally:
        client.close()
    return Check("redis", "ok", f"{shown} answers PING (server {info.get('redis_version', '?')})")


def check_broker(settings: Settings) -> Check:
    """Does the Celery broker (CELERY_BROKER_URL) accept a connection?"""
    if not settings.celery_broker_url:
        return Check(
            "celery broker",
            "warn",
            "CELERY_BROKER_URL is not set",
            "set CELERY_BROKER_URL=amqp://guest:guest@host:5672// or redis://... to check it",
        )
    from kombu import Connection  # type: ignore[attr-defined]

    shown = _redact(settings.celery_broker_url)
    try:
        with Connection(settings.celery_broker_url, connect_timeout=TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, timeout=TIMEOUT_S)
    except Exception as error:  # kombu raises transport-specific errors
        return Check(
            "celery broker", "fail", f"{shown}: {error}", "check that the broker runs there"
        )
    return Check("celery broker", "ok", f"{shown} accepts connections")


CHECKS: tuple[Callable[[Settings], Check | list[Check]], ...] = (
    check_otlp,
    check_database,
    check_redis,
    check_broker,
)


def run_checks(settings: Settings) -> list[Check]:
    """Run every check; one that crashes becomes a ``fail`` row instead of a traceback."""
    rows: list[Check] = []
    for check in CHECKS:
        try:
            result = check(settings)
        except Exception as error:
            result = Check(check.__name__.removeprefix("check_"), "fail", repr(error)[:200])
        rows.extend(result if isinstance(result, list) else [result])
    return rows
