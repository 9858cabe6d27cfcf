"""The demo service: the KRX stock-signal API in ``baseline`` or ``optimized`` mode.

Run it as ``uvicorn --factory stackwatch.demo.app:create_app`` with
``STACKWATCH_DEMO_MODE`` and ``DATABASE_URL`` set (``stackwatch demo`` does). Both
modes serve the same routes and JSON; only the way the work is done differs (see
service.py). stackwatch is wired the way a user would wire it: ``setup()``, then
``instrument_fastapi`` and ``instrument_sqlalchemy``, ``@cached`` and the cache
stats router.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import structlog
from fastapi import FastAPI, HTTPException, Path, Query

import stackwatch
from stackwatch.demo import service

Mode = Literal["baseline", "optimized"]
MODES: tuple[Mode, ...] = ("baseline", "optimized")
ANALYSIS_PROCESSES = 2
TICKER = Path(pattern=r"^[0-9]{6}$", description="6-digit KRX ticker")

_log = structlog.get_logger("stackwatch.demo")


def _warm_up_size(variable: str, default: int) -> int:
    value = os.environ.get(variable, str(default))
    if not value.isdigit():
        raise stackwatch.SettingsError(
            f"invalid {variable}={value[:20]!r}: expected a whole number"
        )
    return int(value)


def demo_mode() -> Mode:
    """The mode from ``STACKWATCH_DEMO_MODE`` (default optimized); a bad value fails at start."""
    value = os.environ.get("STACKWATCH_DEMO_MODE", "optimized")
    if value not in MODES:
        raise stackwatch.SettingsError(
            f"invalid STACKWATCH_DEMO_MODE={value!r}: allowed values are baseline, optimized"
        )
    return value


async def _guard(call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await call
    except service.NotFound:
        raise HTTPException(status_code=404, detail="no such ticker") from None
    except ValueError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None


def create_app(mode: Mode | None = None, database_url: str | None = None) -> FastAPI:
    """Build the service for ``mode``; the database comes from ``database_url`` or settings."""
    settings = stackwatch.setup(service_name="stackwatch-demo")
    chosen: Mode = mode or demo_mode()
    url = database_url or settings.database_url
    if not url:
        raise stackwatch.SettingsError("set DATABASE_URL to the demo database")
    optimized = chosen == "optimized"
    warm_tickers = _warm_up_size("STACKWATCH_DEMO_WARM_TICKERS", 300)
    warm_analyses = _warm_up_size("STACKWATCH_DEMO_WARM_ANALYSES", 300)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.database.configure(url)
        if optimized:
            service.analysis_pool.start(ANALYSIS_PROCESSES)
            started = time.perf_counter()
            ranked = await service.popular_tickers()
            await service.warm_analyses(ranked[:warm_analyses], ANALYSIS_PROCESSES)
            analysed = time.perf_counter()
            await service.warm_long_lived(ranked)
            await service.warm_up(ranked[:warm_tickers])
            _log.info(
                "cache warmed",
                tickers=warm_tickers,
                analyses=warm_analyses,
                long_lived=len(ranked),
                analyses_s=round(analysed - started, 1),
                rest_s=round(time.perf_counter() - analysed, 1),
            )
        _log.info("demo service ready", mode=chosen)
        yield
        service.analysis_pool.stop()
        await service.database.dispose()

    app = FastAPI(title=f"stackwatch demo ({chosen})", lifespan=lifespan)
    detail: Callable[[str], Awaitable[dict[str, Any]]]
    chart: Callable[[str, int], Awaitable[dict[str, Any]]]
    signals: Callable[[str, int, str | None], Awaitable[dict[str, Any]]]
    analysis: Callable[[str], Awaitable[dict[str, Any]]]
    if optimized:
        detail, chart = service.optimized_stock_detail, service.optimized_chart
        signals, analysis = service.optimized_signals, service.optimized_ai_analysis
    else:
        detail, chart = service.baseline_stock_detail, service.baseline_chart
        signals, analysis = service.baseline_signals, service.baseline_ai_analysis

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "mode": chosen}

    @app.get("/api/kr/stocks/{ticker}")
    async def stock_detail(ticker: str = TICKER) -> dict[str, Any]:
        return await _guard(detail(ticker))

    @app.get("/api/kr/stocks/{ticker}/chart")
    async def stock_chart(
        ticker: str = TICKER, days: int = Query(60, ge=1, le=250)
    ) -> dict[str, Any]:
        return await _guard(chart(ticker, days))

    @app.get("/api/kr/signals")
    async def signal_list(
        status: Literal["active", "closed", "pending"] = "active",
        limit: int = Query(service.DEFAULT_PAGE, ge=1, le=service.MAX_PAGE),
        cursor: str | None = Query(None, max_length=200),
    ) -> dict[str, Any]:
        return await _guard(signals(status, limit, cursor))

    @app.get("/api/kr/ai-analysis/{ticker}")
    async def ai_analysis(ticker: str = TICKER) -> dict[str, Any]:
        result = await _guard(analysis(ticker))
        if not result:
            raise HTTPException(status_code=404, detail="no such ticker")
        return result

    app.include_router(stackwatch.cache_stats_router)
    stackwatch.instrument_fastapi(app)
    return app
