"""The request id: one contextvar, its validation, and (issue #3) the pure-ASGI middleware.

Every other part of stackwatch (log lines, spans, SQL comments, Celery task
headers) reads the id from here and nowhere else.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar, Token

# 1-128 characters of letters, digits and -_.:  — UUIDs with or without dashes,
# nginx's $request_id (32 hex), ULIDs and most tracing ids pass; CR/LF, quotes,
# spaces, '*/' and non-ASCII do not, so a valid id is safe in a header, a log line
# and a SQL comment.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9\-_.:]{1,128}")

_current: ContextVar[str | None] = ContextVar("stackwatch_request_id", default=None)


def request_id() -> str | None:
    """The id of the request (or Celery task) being handled, or None outside one."""
    return _current.get()


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex characters (uuid4)."""
    return uuid.uuid4().hex


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
    escaped = value.encode("unicode_escape").decode("ascii")
    return escaped[:limit] + ("..." if len(escaped) > limit else "")
