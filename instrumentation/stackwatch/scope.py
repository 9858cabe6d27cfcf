"""The unit of work (one HTTP request or one Celery task) that per-request metrics add up over.

The FastAPI middleware and the Celery signal handlers open a scope; the SQLAlchemy
listeners count statements into the current one; when the scope closes, the
registered closers (``db_queries_per_request``, the N+1 detector) read the totals.
Keeping this in its own module lets each instrumentation stay ignorant of the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Literal

_log = logging.getLogger("stackwatch.scope")

ScopeKind = Literal["http", "celery"]


class WorkScope:
    """What one request or task did; mutable, shared by every coroutine of that unit.

    Every request opens one, most run a handful of statements or none: the statement
    tables are made on the first statement, not with the scope.
    """

    __slots__ = ("_examples", "_reported", "_statements", "kind", "name", "queries")

    def __init__(self, kind: ScopeKind, name: str) -> None:
        self.kind = kind
        self.name = name  # route template (set once routing has matched) or Celery task name
        self.queries = 0
        self._statements: dict[str, int] | None = None  # normalised statement -> runs
        self._examples: dict[str, str] | None = None
        self._reported: set[str] | None = None

    def __repr__(self) -> str:
        return f"WorkScope(kind={self.kind!r}, name={self.name!r}, queries={self.queries})"

    def count_statement(self, statement: str, example: str) -> int:
        """Count one run of ``statement`` (normalised); the runs so far in this unit.

        ``example`` (the statement as sent) is kept for the first run.
        """
        statements, examples = self._statements, self._examples
        if statements is None or examples is None:
            statements, examples = self._statements, self._examples = {}, {}
        count = statements.get(statement, 0) + 1
        statements[statement] = count
        if count == 1:
            examples[statement] = example
        return count

    def report(self, statement: str) -> None:
        """Mark ``statement`` as an N+1 pattern, to be reported when the unit ends."""
        if self._reported is None:
            self._reported = set()
        self._reported.add(statement)

    @property
    def statements(self) -> Mapping[str, int]:
        """Runs per normalised statement."""
        return self._statements if self._statements is not None else _NO_STATEMENTS

    @property
    def examples(self) -> Mapping[str, str]:
        """The first text sent of each normalised statement."""
        return self._examples if self._examples is not None else _NO_EXAMPLES

    @property
    def reported(self) -> AbstractSet[str]:
        """The statements marked as N+1 patterns."""
        return self._reported if self._reported is not None else frozenset()


_NO_STATEMENTS: Mapping[str, int] = MappingProxyType({})
_NO_EXAMPLES: Mapping[str, str] = MappingProxyType({})
_current: ContextVar[WorkScope | None] = ContextVar("stackwatch_work_scope", default=None)
# Replaced, never changed in place: close_scope walks it without copying.
_closers: tuple[Callable[[WorkScope], None], ...] = ()


def current_scope() -> WorkScope | None:
    """The request or task being handled, or None outside one."""
    return _current.get()


def register_scope_closer(closer: Callable[[WorkScope], None]) -> None:
    """Call ``closer(scope)`` whenever a scope ends; registering twice is harmless."""
    global _closers
    if closer not in _closers:
        _closers = (*_closers, closer)


def unregister_scope_closer(closer: Callable[[WorkScope], None]) -> None:
    """Undo ``register_scope_closer``."""
    global _closers
    _closers = tuple(registered for registered in _closers if registered != closer)


def open_scope(kind: ScopeKind, name: str) -> tuple[WorkScope, Token[WorkScope | None]]:
    """Start a unit of work; pass the token to ``close_scope`` when it ends."""
    scope = WorkScope(kind, name)
    return scope, _current.set(scope)


def close_scope(token: Token[WorkScope | None]) -> None:
    """End the unit of work and run the closers; a failing closer is logged, never raised."""
    scope = _current.get()
    _current.reset(token)
    if scope is None:
        return
    for closer in _closers:
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
