"""The statement texts an engine hands its driver, comments included.

stackwatch appends its comment inside the dialect's ``do_execute`` hooks, after every
engine event has run, so engine listeners see the text without it. What the driver
receives is what the dialect's ``do_execute*`` methods are given: these helpers watch
it there, on the engine's own dialect, and pass every call through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine


def watch_sent(engine: Engine | AsyncEngine, watcher: Callable[[str, Any], None]) -> None:
    """Call ``watcher(statement, execution_context)`` as each statement goes to the driver."""
    dialect = engine.sync_engine.dialect if isinstance(engine, AsyncEngine) else engine.dialect
    for name in ("do_execute", "do_execute_no_params", "do_executemany"):
        original = getattr(dialect, name)

        def watching(cursor: Any, statement: str, *rest: Any, _original: Any = original) -> Any:
            watcher(statement, rest[-1])  # the ExecutionContext comes last
            return _original(cursor, statement, *rest)

        setattr(dialect, name, watching)


def record_sent(engine: Engine | AsyncEngine) -> list[str]:
    """A list that fills with each statement text the driver is given, in order."""
    sent: list[str] = []
    watch_sent(engine, lambda statement, context: sent.append(statement))
    return sent
