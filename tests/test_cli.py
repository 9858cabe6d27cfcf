"""The CLI: --version, doctor against the real services, usage errors print usage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES_ADMIN_URL, RABBITMQ_URL, REDIS_URL, free_port
from tests.support.process import clean_env

STACKWATCH = str(Path(sys.executable).parent / "stackwatch")


def _stackwatch(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STACKWATCH, *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_prints_the_package_version() -> None:
    import stackwatch

    result = _stackwatch("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"stackwatch {stackwatch.__version__}"


def test_doctor_reports_ok_for_the_running_services() -> None:
    result = _stackwatch(
        "doctor",
        "--json",
        OTEL_TRACES_EXPORTER="none",
        DATABASE_URL=POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://"),
        REDIS_URL=REDIS_URL,
        CELERY_BROKER_URL=RABBITMQ_URL,
    )
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["database"]["status"] == "ok"
    assert rows["redis"]["status"] == "ok"
    assert rows["celery broker"]["status"] == "ok"
    assert "guest:guest" not in result.stdout  # passwords are redacted
    assert result.returncode == 0, result.stdout


def test_doctor_fails_with_a_fix_hint_for_each_unreachable_service() -> None:
    closed = free_port()
    result = _stackwatch(
        "doctor",
        "--json",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/x",
        REDIS_URL=f"redis://127.0.0.1:{closed}/0",
        CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{closed}//",
    )
    assert result.returncode == 1
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in ("OTLP endpoint", "database", "redis", "celery broker"):
        assert rows[name]["status"] == "fail", rows[name]
        assert rows[name]["hint"], rows[name]


def test_doctor_table_is_printed_for_humans() -> None:
    result = _stackwatch("doctor", OTEL_TRACES_EXPORTER="none")
    assert "stackwatch doctor" in result.stdout
    assert "DATABASE_URL is not set" in result.stdout
    assert result.returncode == 0  # warnings alone do not fail


def test_usage_error_prints_usage_not_a_traceback() -> None:
    result = _stackwatch("doctor", "--no-such-option")
    assert result.returncode == 2
    assert "Usage:" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_in_cli_is_one_line() -> None:
    result = _stackwatch("doctor", OTEL_TRACES_SAMPLER_ARG="2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "stackwatch: invalid OTEL_TRACES_SAMPLER_ARG='2': expected less than or equal to 1"
    ]
