"""Latency faults for alert drills: ``PUT /api/system/faults/latency`` slows one route.

A drill proves that a slowdown reaches the people on call: the P95 alert fires,
Alertmanager routes it, ``stackwatch gate`` fails, and all of it clears once the
slowdown is gone. The fault is applied inside the request, by a dependency of
every route, so the service's own telemetry measures it as it would a real
slowdown, under the route's template: ``app`` waits on the event loop (slow code,
a slow remote call); ``database`` waits in PostgreSQL (``SELECT pg_sleep``), so the
statement is also timed, logged as slow and counted with the route, and shows as a
database span in the trace.

Off unless the app runs with ``STACKWATCH_DEMO_FAULTS=1`` (``stackwatch demo
--serve --fault-injection`` sets it); off, the routes do not exist. Delays are
bounded (``MAX_DELAY_S``) and only a route template of the app can be slowed, so a
drill cannot hang the service or invent label values. Faults live in the app
process's memory and end with it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal

import structlog
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

import stackwatch
from stackwatch.demo import service

ENABLE_VARIABLE = "STACKWATCH_DEMO_FAULTS"
FAULTS_PATH = "/api/system/faults/latency"
MAX_DELAY_S = 5.0

Layer = Literal["app", "database"]

_log = structlog.get_logger("stackwatch.demo")


class LatencyFault(BaseModel):
    """One route's injected delay: where it waits and for how long."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1,
        max_length=200,
        description="route template, as in the metrics' path label: /api/kr/stocks/{ticker}",
    )
    seconds: float = Field(gt=0, le=MAX_DELAY_S, description=f"delay, at most {MAX_DELAY_S} s")
    layer: Layer = Field("app", description="app: on the event loop; database: pg_sleep")


def faults_enabled() -> bool:
    """Whether ``STACKWATCH_DEMO_FAULTS`` asks for the fault routes (1) or not (0, unset)."""
    value = os.environ.get(ENABLE_VARIABLE, "0")
    if value not in ("0", "1"):
        raise stackwatch.SettingsError(
            f"invalid {ENABLE_VARIABLE}={value[:20]!r}: allowed values are 0 and 1"
        )
    return value == "1"


async def sleep_in_database(seconds: float) -> None:
    """Hold the request in PostgreSQL for ``seconds``: one timed, slow-logged statement."""
    async with service.database.session() as session:
        await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})


class LatencyFaults:
    """The faults in force, by route template, and the route dependency that applies them."""

    def __init__(self) -> None:
        self._faults: dict[str, LatencyFault] = {}

    async def apply(self, request: Request) -> None:
        """Wait as the fault on this request's route says, if there is one."""
        if not self._faults:
            return
        route = request.scope.get("route")
        fault = self._faults.get(getattr(route, "path_format", ""))
        if fault is None:
            return
        if fault.layer == "database":
            await sleep_in_database(fault.seconds)
        else:
            await asyncio.sleep(fault.seconds)

    def set(self, fault: LatencyFault) -> None:
        """Put ``fault`` in force on its route (replacing the route's previous one)."""
        self._faults[fault.path] = fault

    def remove(self, path: str | None) -> list[str]:
        """Remove the fault of ``path``, or every fault; return the routes that had one."""
        removed = sorted(self._faults) if path is None else [path] if path in self._faults else []
        for route in removed:
            del self._faults[route]
        return removed

    def listed(self) -> list[dict[str, Any]]:
        """The faults in force, by route."""
        return [self._faults[path].model_dump() for path in sorted(self._faults)]


def _targets(app: FastAPI) -> list[str]:
    """The route templates a fault may slow: the app's own routes (included routers' are not)."""
    return sorted(
        {
            route.path_format
            for route in app.routes
            if isinstance(route, APIRoute) and route.path_format != FAULTS_PATH
        }
    )


def fault_router(app: FastAPI, faults: LatencyFaults) -> APIRouter:
    """``PUT`` / ``GET`` / ``DELETE`` on ``FAULTS_PATH`` for ``app``'s routes."""
    router = APIRouter(tags=["faults"])

    @router.put(FAULTS_PATH, summary="Slow every request of one route (a drill)")
    async def set_fault(fault: LatencyFault) -> dict[str, Any]:
        targets = _targets(app)
        if fault.path not in targets:
            raise HTTPException(
                status_code=422,
                detail=f"no route {fault.path[:80]!r}: use a route template, one of "
                + ", ".join(targets),
            )
        faults.set(fault)
        _log.warning("latency fault set", **fault.model_dump())
        return fault.model_dump()

    @router.get(FAULTS_PATH, summary="The latency faults in force")
    async def list_faults() -> dict[str, Any]:
        return {"faults": faults.listed(), "max_seconds": MAX_DELAY_S, "routes": _targets(app)}

    @router.delete(FAULTS_PATH, summary="Remove one route's fault, or all of them")
    async def remove_fault(
        path: str | None = Query(None, max_length=200, description="route template; all if unset"),
    ) -> dict[str, list[str]]:
        removed = faults.remove(path)
        if removed:
            _log.warning("latency fault removed", paths=removed)
        return {"removed": removed}

    return router
