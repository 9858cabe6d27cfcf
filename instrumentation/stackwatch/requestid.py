"""The request id: one contextvar, its validation, and (issue #3) the pure-ASGI middleware.

Every other part of stackwatch (log lines, spans, SQL comments, Celery task
headers) reads the id from here and nowhere else.
"""

from __future__ import annotations

import os
import re
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

# The version (4) and variant (RFC 4122) bits of a random UUID, as uuid.UUID sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)

_current: ContextVar[str | None] = ContextVar("stackwatch_request_id", default=None)
_log = structlog.get_logger("stackwatch.requestid")


def request_id() -> str | None:
    """The id of the request (or Celery task) being handled, or None outside one."""
    return _current.get()


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex characters, a random (version 4) UUID.

    What ``uuid.uuid4().hex`` returns, built without the UUID object: this runs for
    most requests, and the object costs more than the random bytes.
    """
    value = int.from_bytes(os.urandom(16), "big")
    value = (value & _UUID4_CLEAR) | _UUID4_SET
    return f"{value:032x}"


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
        incoming = next((value for name, value in scope["headers"] if name == self._header), None)
        current = accept_request_id(incoming)
        header = (self._header, current.encode("ascii"))
        id_token = _current.set(current)
        # A WebSocket lives for minutes: per-request totals would mean nothing for it.
        scope_token = open_scope("http", UNMATCHED_PATH)[1] if scope["type"] == "http" else None

        async def send_with_request_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                headers = [h for h in message.get("headers", ()) if h[0].lower() != self._header]
                headers.append(header)
                message["headers"] = headers
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
