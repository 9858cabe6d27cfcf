"""structlog, JSON lines by default, with the stdlib loggers rendered through the same pipeline.

Every line gets ``request_id`` (from the request-id contextvar) and, when a span is
active, ``trace_id`` and ``span_id`` — one small processor each, so a log line,
its trace in Jaeger and its request's response header can be joined by either id.
uvicorn, Celery and SQLAlchemy log through the standard library; they are routed
to the same renderer so that stdout holds one format only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from stackwatch.requestid import request_id
from stackwatch.settings import Settings

_STRUCTLOG_CONFIG: Any
try:  # where structlog.configure() keeps the processors: is our pipeline still in force?
    from structlog._config import _CONFIG as _STRUCTLOG_CONFIG
except ImportError:  # pragma: no cover - a structlog without it: the short way is off
    _STRUCTLOG_CONFIG = None
# The context variables structlog.contextvars.bind_contextvars has created, by key.
_BOUND_VARS: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
_PREFIX_LEN = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)

# Loggers that frameworks configure with handlers of their own; we take those
# handlers away so their records reach the root handler, and our renderer, once.
FRAMEWORK_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
    "celery",
    "celery.task",
    "celery.worker",
    "celery.app.trace",
    "sqlalchemy",
    "sqlalchemy.engine",
)

_HANDLER_NAME = "stackwatch"


def add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add the current request id, if a request or task is being handled."""
    current = request_id()
    if current is not None:
        event_dict.setdefault("request_id", current)
    return event_dict


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Add trace_id and span_id (W3C hex) of the active span, if there is a valid one.

    A caller that already holds the span (the HTTP access line) passes both ids
    itself, which saves the context lookup.
    """
    if "span_id" in event_dict:
        return event_dict
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


_last_second: tuple[int, str] = (-1, "")


def add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """``timestamp``: the time in UTC, ISO 8601, as ``TimeStamper(fmt="iso", utc=True)`` writes it.

    The same text (``2026-11-29T22:10:35.745382Z``; no fraction when it is zero),
    but the date and time of day are formatted once per second instead of building
    a timezone-aware datetime for every line: a third of the cost.
    """
    global _last_second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached_second, prefix = _last_second
    if seconds != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, prefix)
    event_dict["timestamp"] = f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"
    return event_dict


def _orjson_text(event_dict: Any, **_: Any) -> str:
    # default=str: an exotic value (a UUID, a Decimal, an exception) still logs.
    return orjson.dumps(event_dict, default=str).decode()


def _orjson_bytes(event_dict: Any, **_: Any) -> bytes:
    return orjson.dumps(event_dict, default=str)


class _NamedPrintLoggerFactory:
    """PrintLoggerFactory that keeps the logger's name for ``add_logger_name``."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> structlog.PrintLogger:
        logger = structlog.PrintLogger(self._file)
        logger.name = args[0] if args else None  # type: ignore[attr-defined]
        return logger


def shared_processors() -> list[Processor]:
    """Enrichment that applies to structlog and stdlib records alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_timestamp,
        add_request_id,
        add_trace_context,
    ]


def _text_renderer(settings: Settings) -> Processor:
    if settings.log_format == "console":
        return structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    return structlog.processors.JSONRenderer(serializer=_orjson_text)


def _native_output(settings: Settings) -> tuple[Processor, Any]:
    """Renderer and logger factory for structlog's own events.

    structlog writes its events itself (orjson bytes straight to stdout's buffer):
    going through the stdlib logging machinery costs about 30 us more per line, which
    is most of stackwatch's per-request overhead when the app logs one line per request.
    """
    buffer = getattr(sys.stdout, "buffer", None)
    if settings.log_format == "json" and buffer is not None:
        return (
            structlog.processors.JSONRenderer(serializer=_orjson_bytes),
            structlog.BytesLoggerFactory(buffer),
        )
    return _text_renderer(settings), _NamedPrintLoggerFactory(sys.stdout)


class _JsonLines:
    """The short way for stackwatch's own per-request lines (the HTTP access line).

    It writes the line our structlog pipeline would write (same keys, same order,
    same bytes but for the timestamp), without the wrapper, the processor loop
    and the lock around the write: a third of the line's cost, and the access
    line is most of what stackwatch adds to a request. Taken only while our
    configuration is the one in force; once an application calls
    ``structlog.configure`` itself, its processors see every line again.
    """

    __slots__ = ("_flush", "_processors", "_write", "enabled")

    def __init__(self, processors: list[Processor], buffer: Any, level: int) -> None:
        self._processors = processors
        self._write = buffer.write
        self._flush = buffer.flush
        self.enabled = level <= logging.INFO

    def info(self, logger_name: str, event: str, fields: dict[str, Any]) -> bool:
        """Write ``fields`` as an info line; False when the caller must log it through structlog."""
        if getattr(_STRUCTLOG_CONFIG, "default_processors", None) is not self._processors:
            return False
        if not self.enabled:
            return True
        fields["event"] = event
        if _BOUND_VARS is None:  # pragma: no cover - another structlog layout
            structlog.contextvars.merge_contextvars(None, "info", fields)
        elif _BOUND_VARS:
            # What merge_contextvars does, without copying the whole context to walk it.
            for var in tuple(_BOUND_VARS.values()):
                value = var.get()
                if value is not Ellipsis:
                    fields.setdefault(var.name[_PREFIX_LEN:], value)
        fields["level"] = "info"
        fields["logger"] = logger_name
        add_timestamp(None, "info", fields)
        current = request_id()
        if current is not None:
            fields.setdefault("request_id", current)
        # A single write of the whole line: BufferedWriter keeps concurrent lines whole.
        self._write(orjson.dumps(fields, default=str, option=orjson.OPT_APPEND_NEWLINE))
        self._flush()
        return True


_json_lines: _JsonLines | None = None


def log_info_line(logger_name: str, event: str, fields: dict[str, Any]) -> None:
    """Log an info line on ``logger_name``, the short way when that writes the same line.

    See ``_JsonLines``; ``fields`` is consumed.
    """
    lines = _json_lines
    if lines is not None and lines.info(logger_name, event, fields):
        return
    structlog.get_logger(logger_name).info(event, **fields)


class StdlibRecordFormatter(logging.Formatter):
    """Renders stdlib records (uvicorn, Celery, SQLAlchemy) through our processors.

    structlog's ProcessorFormatter does the same, but first copies every record so it
    can also serve records structlog itself wrapped. Here every record is foreign
    (structlog writes its own lines), so the copy is skipped: about 40 % of the cost
    of a line, which Celery pays twice per task.
    """

    def __init__(self, processors: list[Processor]) -> None:
        super().__init__()
        self._processors = processors

    def format(self, record: logging.LogRecord) -> str:
        event_dict: Any = {"event": record.getMessage(), "_record": record}
        event_dict["_from_structlog"] = False
        if record.exc_info:
            event_dict["exc_info"] = record.exc_info
        if record.stack_info:
            event_dict["stack_info"] = record.stack_info
        method_name = record.levelname.lower()
        for processor in self._processors:
            event_dict = processor(None, method_name, event_dict)
        return str(event_dict)


def configure_logging(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (it replaces ours)."""
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    native_renderer, logger_factory = _native_output(settings)
    exceptions: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        # Tracebacks as data, without local variables: locals hold passwords and tokens.
        structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        )
        if settings.log_format == "json"
        else structlog.dev.set_exc_info,
    ]

    global _json_lines
    processors = [*shared_processors(), *exceptions, native_renderer]
    _json_lines = (
        _JsonLines(processors, sys.stdout.buffer, level)
        if settings.log_format == "json"
        and isinstance(logger_factory, structlog.BytesLoggerFactory)
        else None
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )

    formatter = StdlibRecordFormatter(
        [
            *shared_processors(),
            structlog.stdlib.ExtraAdder(),
            *exceptions,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _text_renderer(settings),
        ]
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME or type(existing) is logging.StreamHandler:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    adopt_framework_loggers()


def adopt_framework_loggers() -> None:
    """Route uvicorn's, gunicorn's, Celery's and SQLAlchemy's loggers to our root handler.

    Servers configure their loggers when they start, which can be after ``setup()``
    (under ``opentelemetry-instrument``, ``setup()`` runs before uvicorn has parsed
    its options); the FastAPI instrumentation calls this again at application start-up.
    """
    if not any(handler.get_name() == _HANDLER_NAME for handler in logging.getLogger().handlers):
        return
    for name in FRAMEWORK_LOGGERS:
        framework_logger = logging.getLogger(name)
        if not framework_logger.handlers and not framework_logger.propagate:
            # Switched off on purpose (uvicorn --no-access-log does exactly this).
            continue
        framework_logger.handlers.clear()
        framework_logger.propagate = True
