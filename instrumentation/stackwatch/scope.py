"""The unit of work (one HTTP request or one Celery task) that per-request metrics add up over.

The FastAPI middleware and the Celery signal handlers open a scope; the SQLAlchemy
listeners count statements into the current one; when the scope closes, the
registered closers (``db_queries_per_request``, the N+1 detector) read the totals.
Keeping this in its own module lets each instrumentation stay ignorant of the others.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Literal

_log = logging.getLogger("stackwatch.scope")

ScopeKind = Literal["http", "celery"]


@dataclass
class WorkScope:
    """What one request or task did; mutable, shared by every coroutine of that unit."""

    kind: ScopeKind
    name: str  # route template (set once routing has matched) or Celery task name
    queries: int = 0
    # statement -> runs; defaultdict(int) reads like a Counter and is built several times faster
    statements: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: dict[str, str] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)


_current: ContextVar[WorkScope | None] = ContextVar("stackwatch_work_scope", default=None)
_closers: list[Callable[[WorkScope], None]] = []


def current_scope() -> WorkScope | None:
    """The request or task being handled, or None outside one."""
    return _current.get()


def register_scope_closer(closer: Callable[[WorkScope], None]) -> None:
    """Call ``closer(scope)`` whenever a scope ends; registering twice is harmless."""
    if closer not in _closers:
        _closers.append(closer)


def unregister_scope_closer(closer: Callable[[WorkScope], None]) -> None:
    """Undo ``register_scope_closer``."""
    if closer in _closers:
        _closers.remove(closer)


def open_scope(kind: ScopeKind, name: str) -> tuple[WorkScope, Token[WorkScope | None]]:
    """Start a unit of work; pass the token to ``close_scope`` when it ends."""
    scope = WorkScope(kind=kind, name=name)
    return scope, _current.set(scope)


def close_scope(token: Token[WorkScope | None]) -> None:
    """End the unit of work and run the closers; a failing closer is logged, never raised."""
    scope = _current.get()
    _current.reset(token)
    if scope is None:
        return
    for closer in list(_closers):
        try:
            closer(scope)
        except Exception:
            _log.exception("stackwatch scope closer %r failed", closer)


@contextmanager
def work_scope(kind: ScopeKind, name: str) -> Iterator[WorkScope]:
    """Context-manager form of ``open_scope`` / ``close_scope``."""
    scope, token = open_scope(kind, name)
    try:
        yield scope
    finally:
        close_scope(token)
