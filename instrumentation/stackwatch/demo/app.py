"""The demo service: the KRX stock-signal API in ``baseline`` or ``optimized`` mode.

Run it as ``uvicorn --factory stackwatch.demo.app:create_app`` with
``STACKWATCH_DEMO_MODE`` and ``DATABASE_URL`` set (``stackwatch demo`` does). Both
modes serve the same routes and JSON; only the way the work is done differs (see
service.py). stackwatch is wired the way a user would wire it: ``setup()``, then
``instrument_fastapi`` and ``instrument_sqlalchemy``, ``@cached`` and the cache
stats router. ``POST /api/kr/scans`` publishes the mode's VCP scan to the Celery
worker (the request id travels with it); with ``STACKWATCH_DEMO_FAULTS=1`` the
latency-fault routes of faults.py exist too, for alert drills.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Query

import stackwatch
from stackwatch.demo import service
from stackwatch.demo.faults import LatencyFaults, fault_router, faults_enabled
from stackwatch.demo.warmup import warm_sizes

Mode = Literal["baseline", "optimized"]
MODES: tuple[Mode, ...] = ("baseline", "optimized")
ANALYSIS_PROCESSES = 2
TICKER = Path(pattern=r"^[0-9]{6}$", description="6-digit KRX ticker")
SCAN_ID = Path(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ScanMethod = Literal["serial", "chunked"]

_log = structlog.get_logger("stackwatch.demo")


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
    warm_tickers = warm_sizes()[0]
    faults = LatencyFaults() if faults_enabled() else None
    # The Celery app, as a producer: imported after setup() so the web process keeps its name.
    from stackwatch.demo import tasks

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.database.configure(url)
        if optimized:
            service.analysis_pool.start(ANALYSIS_PROCESSES)
            ranked = await service.popular_tickers()
            seconds = await service.warm_start(ranked, warm_tickers)
            _log.info("cache warmed", tickers=warm_tickers, long_lived=len(ranked), **seconds)
        _log.info("demo service ready", mode=chosen)
        yield
        service.analysis_pool.stop()
        await service.database.dispose()

    app = FastAPI(
        title=f"stackwatch demo ({chosen})",
        lifespan=lifespan,
        # Every route waits as a drill's fault says, inside the request, so it is measured.
        dependencies=None if faults is None else [Depends(faults.apply)],
    )
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

    @app.post("/api/kr/scans", status_code=202)
    async def start_scan(method: ScanMethod | None = None) -> dict[str, str]:
        """Publish a VCP scan (default: the mode's own) and answer with its id."""
        chosen_method = method or ("chunked" if optimized else "serial")
        if chosen_method == "chunked" and not optimized:
            raise HTTPException(
                status_code=422,
                detail="the baseline worker serves only the default queue: use method=serial",
            )
        if chosen_method == "serial":
            result = await asyncio.to_thread(tasks.scan_serial.apply_async)
        else:
            tickers = sorted(await service.popular_tickers())
            result = await asyncio.to_thread(tasks.start_chunked_scan, tickers)
        return {"id": str(result.id), "method": chosen_method}

    @app.get("/api/kr/scans/{scan_id}")
    async def scan_status(scan_id: str = SCAN_ID) -> dict[str, Any]:
        """A scan's state (PENDING until a worker reports), and its result once it succeeded."""
        return await asyncio.to_thread(tasks.scan_state, scan_id)

    app.include_router(stackwatch.cache_stats_router)
    if faults is not None:
        app.include_router(fault_router(app, faults))
    stackwatch.instrument_fastapi(app)
    return app
