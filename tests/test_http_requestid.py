"""Request-id validation and the pure-ASGI middleware, in process (no network)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from stackwatch.requestid import (
    RequestIdMiddleware,
    accept_request_id,
    is_valid_request_id,
    new_request_id,
    request_id,
)
from stackwatch.scope import current_scope

VALID_IDS = [
    "0f8fad5b-d9cb-469f-a165-70867728950e",  # UUID
    "0f8fad5bd9cb469fa16570867728950e",  # UUID without dashes, nginx $request_id
    "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # ULID
    "req_2024.11:abc-DEF",
    "a" * 128,
]
HOSTILE_IDS = {
    "crlf": "abc\r\nSet-Cookie: session=stolen",
    "ten_kilobytes": "a" * 10_240,
    "non_ascii": "요청-ñ",
    "sql_comment_end": "abc*/ DROP TABLE users; /*",
    "empty": "",
    "one_too_long": "a" * 129,
    "space": "abc def",
    "quote": 'abc"def',
}


def rejected_total() -> float:
    return REGISTRY.get_sample_value("request_id_rejected_total", {"source": "http"}) or 0.0


@pytest.mark.parametrize("value", VALID_IDS)
def test_valid_request_ids_are_kept(value: str) -> None:
    assert accept_request_id(value) == value


@pytest.mark.parametrize("value", HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_hostile_request_ids_are_replaced_and_counted(value: str) -> None:
    before = rejected_total()
    replaced = accept_request_id(value)
    assert replaced != value
    assert is_valid_request_id(replaced)
    assert rejected_total() == before + 1


def test_new_request_ids_are_random_version_4_uuids_in_hex() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == value


def test_missing_request_id_gets_a_new_one_without_counting_a_rejection() -> None:
    before = rejected_total()
    first, second = accept_request_id(None), accept_request_id(None)
    assert first != second
    assert len(first) == 32
    assert rejected_total() == before


def test_rejected_request_id_is_logged_escaped_and_truncated() -> None:
    hostile = "x\r\nforged log line " + "y" * 500
    with capture_logs() as logs:
        replacement = accept_request_id(hostile)
    (entry,) = logs
    assert entry["event"] == "request id rejected"
    assert "\r" not in entry["rejected"]
    assert "\n" not in entry["rejected"]
    assert "\\r\\n" in entry["rejected"]
    assert len(entry["rejected"]) <= 64 + len("...")
    assert entry["rejected_length"] == len(hostile)
    assert entry["replaced_by"] == replacement


async def call(
    app: Any, headers: list[tuple[bytes, bytes]], header_name: str = "X-Request-ID"
) -> tuple[list[tuple[bytes, bytes]], list[str | None]]:
    """One GET through RequestIdMiddleware(app): the response headers and the ids the app saw."""
    seen: list[str | None] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(request_id())
        await app(scope, receive, send)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await RequestIdMiddleware(inner, header_name=header_name)(scope, receive, send)
    return sent[0]["headers"], seen


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"app-set")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def test_crlf_request_id_never_reaches_the_response_headers() -> None:
    headers, seen = await call(ok, [(b"x-request-id", b"abc\r\nSet-Cookie: stolen=1")])
    values = [value for name, value in headers if name == b"x-request-id"]
    assert len(values) == 1  # the app's own value is replaced, not duplicated
    assert seen[0] is not None
    assert values[0] == seen[0].encode()
    assert b"\r" not in values[0]
    assert b"stolen" not in values[0]


async def test_request_id_header_name_is_configurable() -> None:
    headers, seen = await call(
        ok, [(b"x-correlation-id", b"corr-1")], header_name="X-Correlation-ID"
    )
    assert seen == ["corr-1"]
    assert (b"x-correlation-id", b"corr-1") in headers


async def test_request_id_and_work_scope_are_unbound_after_the_request() -> None:
    await call(ok, [(b"x-request-id", b"done-1")])
    assert request_id() is None
    assert current_scope() is None


async def test_work_scope_is_open_during_the_request_and_closed_on_errors() -> None:
    kinds: list[str] = []

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        work = current_scope()
        assert work is not None
        kinds.append(work.kind)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await call(failing, [])
    assert kinds == ["http"]
    assert current_scope() is None
