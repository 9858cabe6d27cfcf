"""stackwatch: one call gives a FastAPI + SQLAlchemy + Redis + Celery app traces, metrics and logs.

The public API, and nothing else. Names are imported lazily so that
``import stackwatch`` stays cheap and does not import FastAPI, SQLAlchemy, Redis or
Celery before the application (or ``opentelemetry-instrument``) is ready for it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("stackwatch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_EXPORTS: dict[str, str] = {
    "setup": "stackwatch.core",
    "shutdown": "stackwatch.core",
    "SettingsError": "stackwatch.settings",
    "request_id": "stackwatch.requestid",
    "instrument_fastapi": "stackwatch.fastapi",
    "uninstrument_fastapi": "stackwatch.fastapi",
    "instrument_sqlalchemy": "stackwatch.sqlalchemy",
    "uninstrument_sqlalchemy": "stackwatch.sqlalchemy",
    "NPlusOneError": "stackwatch.sqlalchemy",
    "cached": "stackwatch.cache",
    "cache_stats": "stackwatch.cache",
    "cache_stats_router": "stackwatch.cache",
    "invalidate_namespace": "stackwatch.cache",
    "instrument_redis": "stackwatch.cache",
    "instrument_celery": "stackwatch.celery",
    "configure_celery": "stackwatch.celery",
    "uninstrument_celery": "stackwatch.celery",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from stackwatch.cache import cache_stats as cache_stats
    from stackwatch.cache import cache_stats_router as cache_stats_router
    from stackwatch.cache import cached as cached
    from stackwatch.cache import instrument_redis as instrument_redis
    from stackwatch.cache import invalidate_namespace as invalidate_namespace
    from stackwatch.celery import configure_celery as configure_celery
    from stackwatch.celery import instrument_celery as instrument_celery
    from stackwatch.celery import uninstrument_celery as uninstrument_celery
    from stackwatch.core import setup as setup
    from stackwatch.core import shutdown as shutdown
    from stackwatch.fastapi import instrument_fastapi as instrument_fastapi
    from stackwatch.fastapi import uninstrument_fastapi as uninstrument_fastapi
    from stackwatch.requestid import request_id as request_id
    from stackwatch.settings import SettingsError as SettingsError
    from stackwatch.sqlalchemy import NPlusOneError as NPlusOneError
    from stackwatch.sqlalchemy import instrument_sqlalchemy as instrument_sqlalchemy
    from stackwatch.sqlalchemy import uninstrument_sqlalchemy as uninstrument_sqlalchemy


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'stackwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
