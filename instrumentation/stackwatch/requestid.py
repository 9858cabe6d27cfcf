"""The request id: one contextvar, its validation, and (issue #3) the pure-ASGI middleware.

Every other part of stackwatch (log lines, spans, SQL comments, Celery task
headers) reads the id from here and nowhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import structlog

from stackwatch.metrics import UNMATCHED_PATH, request_id_rejected_total
from stackwatch.scope import close_scope, open_scope

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

# 1-128 characters of letters, digits and -_.:  — UUIDs with or without dashes,
# nginx's $request_id (32 hex), ULIDs and most tracing ids pass; CR/LF, quotes,
# spaces, '*/' and non-ASCII do not, so a valid id is safe in a header, a log line
# and a SQL comment.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.:]{1,128}")

_current: ContextVar[str | None] = ContextVar("stackwatch_request_id", default=None)
_log = structlog.get_logger("stackwatch.requestid")


def request_id() -> str | None:
    """The id of the request (or Celery task) being handled, or None outside one."""
    return _current.get()


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex characters, a random (version 4) UUID.

    What ``uuid.uuid4().hex`` returns, from the same source (``os.urandom``), but
    taken from a pool refilled 256 ids per system call: this runs for most requests,
    and a ``getrandom`` call per request costs more than everything else here.
    ``list.pop`` is atomic, so threads share the pool safely; a forked child empties
    its copy so that it never hands out its parent's ids.
    """
    try:
        return _id_pool.pop()
    except IndexError:
        _id_pool.extend(_random_ids())
        return _id_pool.pop()


_POOL_SIZE = 256
_id_pool: list[str] = []
os.register_at_fork(after_in_child=_id_pool.clear)

# uuid4 sets the version (byte 6: 0100xxxx) and the RFC 4122 variant (byte 8: 10xxxxxx)
# bits; these masks do it for a whole pool of 16-byte values in two integer operations.
_UUID4_CLEAR = int.from_bytes(bytes([*[0xFF] * 6, 0x0F, 0xFF, 0x3F, *[0xFF] * 7]) * _POOL_SIZE)
_UUID4_SET = int.from_bytes(bytes([*[0x00] * 6, 0x40, 0x00, 0x80, *[0x00] * 7]) * _POOL_SIZE)


def _random_ids() -> list[str]:
    """A pool's worth of uuid4 hex strings from one ``os.urandom`` call."""
    value = (int.from_bytes(os.urandom(16 * _POOL_SIZE)) & _UUID4_CLEAR) | _UUID4_SET
    digits = value.to_bytes(16 * _POOL_SIZE).hex()
    return [digits[i : i + 32] for i in range(0, 32 * _POOL_SIZE, 32)]


def is_valid_request_id(value: str | None) -> bool:
    """Whether ``value`` may be kept as a request id (see the pattern above)."""
    return value is not None and _VALID_REQUEST_ID.fullmatch(value) is not None


def bind_request_id(value: str) -> Token[str | None]:
    """Make ``value`` the current request id; pass the token to ``reset_request_id``."""
    return _current.set(value)


def reset_request_id(token: Token[str | None]) -> None:
    """Restore the request id that was current before ``bind_request_id``."""
    _current.reset(token)


def printable(value: str | bytes, limit: int = 64) -> str:
    """An untrusted value made safe to log: escaped, and truncated to ``limit`` characters."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if len(value) <= limit and value.isascii() and value.isprintable() and "\\" not in value:
        return value  # nothing to escape: the common case, kept cheap
    escaped = value.encode("unicode_escape").decode("ascii")
    return escaped[:limit] + ("..." if len(escaped) > limit else "")


RequestIdSource = Literal["http", "celery"]


def accept_request_id(value: str | bytes | None, source: RequestIdSource = "http") -> str:
    """The id to use for an incoming value: the value itself when valid, else a new id.

    A present but invalid value (CR/LF, too long, non-ASCII, ``*/``, empty...) is
    counted in ``request_id_rejected_total`` and logged escaped and truncated, never
    raw. Celery's task headers go through here too, so both doors apply one rule.
    """
    if value is None:
        return new_request_id()
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if is_valid_request_id(text):
        return text
    replacement = new_request_id()
    request_id_rejected_total.labels(source).inc()
    _log.warning(
        "request id rejected",
        source=source,
        rejected=printable(text),
        rejected_length=len(text),
        replaced_by=replacement,
    )
    return replacement


@dataclass
class RequestIdMiddleware:
    """Pure ASGI middleware, meant to be outermost: one request id per request, on every response.

    It keeps a valid incoming id (header ``header_name``) or makes a new one, binds it
    for the whole request (log lines, spans, SQL comments, exception handlers), opens
    the request's work scope and adds the header to the response start, whichever
    layer sends it: a handler, an exception handler, or Starlette's 500 page for an
    unhandled error (asgi-correlation-id misses that one, its issue #19).
    """

    app: ASGIApp
    header_name: str = "X-Request-ID"

    def __post_init__(self) -> None:
        self._header = self.header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == self._header:
                incoming = value
                break
        current = accept_request_id(incoming)
        header = (self._header, current.encode("ascii"))
        id_token = _current.set(current)
        # A WebSocket lives for minutes: per-request totals would mean nothing for it.
        scope_token = open_scope("http", UNMATCHED_PATH)[1] if scope["type"] == "http" else None

        async def send_with_request_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message["headers"] = with_request_id(message.get("headers", ()), header)
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            if scope_token is not None:
                close_scope(scope_token)
        # Reset only on success: when the app raised, the server logs the traceback
        # after we return, and that line should carry the id too. The server runs each
        # request in a task of its own, so nothing outlives that task.
        _current.reset(id_token)


def with_request_id(
    headers: Iterable[tuple[bytes, bytes]], header: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    """Response headers with ``header`` (lower-case name, value) replacing any the app set."""
    name = header[0]
    replaced = [pair for pair in headers if pair[0].lower() != name]
    replaced.append(header)
    return replaced
