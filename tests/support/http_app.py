"""The FastAPI app that tests/test_http_*.py run under a real uvicorn, in a subprocess.

Spans go to an in-memory exporter that ``GET /_spans`` returns, so a test can check
the span of a request it sent; logs are stackwatch's JSON lines on stdout.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import structlog
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import stackwatch

stackwatch.setup(service_name="http-testapp", traces_exporter="none")
finished_spans = InMemorySpanExporter()
provider = trace.get_tracer_provider()
assert isinstance(provider, TracerProvider)
provider.add_span_processor(SimpleSpanProcessor(finished_spans))

log = structlog.get_logger("http_app")


class TeapotError(Exception):
    """Handled by an exception handler that reports the request id it sees."""


app = FastAPI()
stocks = APIRouter()


@stocks.get("/stocks/{ticker}")
def stock(ticker: str) -> dict[str, Any]:
    log.info("looking up stock", ticker=ticker)
    log.info("stock found", ticker=ticker)
    return {"ticker": ticker, "request_id": stackwatch.request_id(), "pid": os.getpid()}


app.include_router(stocks, prefix="/api/kr")


@app.get("/items/{item_id}")
def item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.get("/forbidden")
def forbidden() -> None:
    raise HTTPException(status_code=403, detail="no")


@app.get("/boom")
def boom() -> None:
    log.info("about to fail")
    raise RuntimeError("unhandled on purpose")


@app.get("/teapot")
def teapot() -> None:
    raise TeapotError


@app.exception_handler(TeapotError)
async def teapot_handler(request: Request, exc: TeapotError) -> JSONResponse:
    return JSONResponse({"seen_request_id": stackwatch.request_id()}, status_code=418)


@app.get("/gc-frozen")
def gc_frozen() -> dict[str, int]:
    """How many objects gc.freeze() has moved out of the collector's reach."""
    import gc

    return {"frozen": gc.get_freeze_count()}


@app.get("/echo-headers")
def echo_headers(request: Request) -> dict[str, str]:
    return dict(request.headers)


@app.get("/forward")
async def forward(url: str) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    return response.json()


@app.get("/_spans")
def spans() -> list[dict[str, Any]]:
    return [
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": format(span.context.trace_id, "032x") if span.context else None,
            "attributes": dict(span.attributes or {}),
        }
        for span in finished_spans.get_finished_spans()
    ]


sub = FastAPI()


@sub.get("/orders/{order_id}")
def order(order_id: int) -> dict[str, int]:
    return {"order_id": order_id}


app.mount("/shop", sub)
stackwatch.instrument_fastapi(app)
