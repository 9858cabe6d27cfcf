"""Shared fixtures: real PostgreSQL, Redis and RabbitMQ, isolated per test; in-memory spans.

Integration tests talk to the services running on this machine (see README); each
test gets its own database, key prefix or queue names and removes them afterwards.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

POSTGRES_ADMIN_URL = os.environ.get(
    "STACKWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("STACKWATCH_TEST_REDIS", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("STACKWATCH_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")

_memory_exporter = InMemorySpanExporter()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free ports (free_port alone may hand out one port twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="session")
def _global_tracer_provider() -> TracerProvider:
    # The global provider can be set once per process, so the test session owns it.
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_memory_exporter))
    return provider


@pytest.fixture
def spans(_global_tracer_provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test, from the session's in-memory exporter."""
    _memory_exporter.clear()
    yield _memory_exporter
    _memory_exporter.clear()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (psycopg URL form), dropped after the test."""
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"swtest:{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.unlink(key)
    finally:
        client.close()


REQUIRED_TOOLS = ("promtool", "amtool", "prometheus", "prometheus-alertmanager", "wrk")


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI, a missing tool is a failure, not a reason to skip the tests that need it."""
    import shutil

    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if os.environ.get("CI") and missing:
        pytest.exit(
            f"missing {', '.join(missing)}: run .ci/services.sh (make test does)", returncode=1
        )
