"""instrument_fastapi in process: idempotent, reversible, one server span, the instrumentor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fastapi
import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from stackwatch.fastapi import (
    StackwatchFastAPIInstrumentor,
    instrument_fastapi,
    uninstrument_fastapi,
)
from stackwatch.requestid import request_id


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello/{name}")
    def hello(name: str) -> dict[str, str | None]:
        return {"name": name, "request_id": request_id()}

    return app


async def get(app: FastAPI, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers=headers)


def server_spans(spans: InMemorySpanExporter) -> list[str]:
    return [span.name for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    application = make_app()
    yield application
    uninstrument_fastapi(application)


async def test_native_fastapi_telemetry_alone_would_make_its_own_server_span(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    # The ground this module stands on: with a TracerProvider set, FastAPI traces by itself.
    await get(app, "/hello/a")
    assert server_spans(spans) == ["GET /hello/{name}"]
    assert {span.instrumentation_scope.name for span in spans.get_finished_spans()} == {"fastapi"}


async def test_instrumenting_twice_gives_one_server_span_and_one_header(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    instrument_fastapi(app)
    instrument_fastapi(app)
    response = await get(app, "/hello/a", **{"X-Request-ID": "twice-1"})
    assert response.headers.get_list("x-request-id") == ["twice-1"]
    (span,) = spans.get_finished_spans()  # FastAPI's native spans are switched off
    assert span.kind is SpanKind.SERVER
    assert span.instrumentation_scope.name == "stackwatch.fastapi"
    assert span.attributes["request.id"] == "twice-1"
    assert span.attributes["http.route"] == "/hello/{name}"


async def test_uninstrument_restores_the_app(app: FastAPI, spans: InMemorySpanExporter) -> None:
    instrument_fastapi(app)
    await get(app, "/hello/a")
    uninstrument_fastapi(app)
    uninstrument_fastapi(app)  # harmless
    spans.clear()
    response = await get(app, "/hello/a")
    assert "x-request-id" not in response.headers
    assert response.json()["request_id"] is None
    # FastAPI's own telemetry is back as it was before
    assert {span.instrumentation_scope.name for span in spans.get_finished_spans()} == {"fastapi"}
    assert (await get(app, "/metrics")).status_code == 404


@pytest.mark.parametrize("contrib_first", [True, False], ids=["contrib_first", "contrib_after"])
async def test_contrib_fastapi_instrumentation_as_well_still_gives_one_server_span(
    app: FastAPI, spans: InMemorySpanExporter, contrib_first: bool
) -> None:
    # contrib first: its middleware ends up inside ours and makes an INTERNAL span;
    # contrib after: it finds our layer where it expects Starlette's and stays out.
    if contrib_first:
        FastAPIInstrumentor.instrument_app(app)
        instrument_fastapi(app)
    else:
        instrument_fastapi(app)
        FastAPIInstrumentor.instrument_app(app)
    try:
        response = await get(app, "/hello/a", **{"X-Request-ID": "contrib-1"})
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    assert response.headers["x-request-id"] == "contrib-1"
    (server,) = [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert server.instrumentation_scope.name == "stackwatch.fastapi"
    assert server.attributes["request.id"] == "contrib-1"


async def test_a_server_span_already_current_is_annotated_not_duplicated(
    app: FastAPI, spans: InMemorySpanExporter
) -> None:
    instrument_fastapi(app)
    wrapped = OpenTelemetryMiddleware(app)  # contrib's ASGI middleware outside the app
    transport = httpx.ASGITransport(app=wrapped)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/hello/a", headers={"X-Request-ID": "outer-1"})
    assert response.headers["x-request-id"] == "outer-1"
    (server,) = [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert server.instrumentation_scope.name == "opentelemetry.instrumentation.asgi"
    assert server.attributes["request.id"] == "outer-1"
    assert server.attributes["http.route"] == "/hello/{name}"


async def test_opentelemetry_instrument_entry_point_instruments_every_new_app(
    spans: InMemorySpanExporter,
) -> None:
    instrumentor = StackwatchFastAPIInstrumentor()
    instrumentor.instrument()
    try:
        app = fastapi.FastAPI()

        @app.get("/auto")
        def auto() -> dict[str, str | None]:
            return {"request_id": request_id()}

        response = await get(app, "/auto", **{"X-Request-ID": "auto-1"})
        assert response.json() == {"request_id": "auto-1"}
        assert server_spans(spans) == ["GET /auto"]
    finally:
        instrumentor.uninstrument()
    assert fastapi.FastAPI is not type(app)
    plain = make_app()
    assert "x-request-id" not in (await get(plain, "/hello/a")).headers


def test_exemplars_are_taken_once_per_bucket_per_second() -> None:
    from stackwatch import fastapi as instrumentation

    instrumentation._exemplar_next.clear()
    first = instrumentation._exemplar_due("GET", "/x/{id}", 200, 0.003, "a" * 32)
    again = instrumentation._exemplar_due("GET", "/x/{id}", 200, 0.004, "b" * 32)
    slow = instrumentation._exemplar_due("GET", "/x/{id}", 200, 0.7, "c" * 32)
    other_status = instrumentation._exemplar_due("GET", "/x/{id}", 500, 0.003, "d" * 32)
    assert first == {"trace_id": "a" * 32}
    assert again is None  # same bucket (<= 5 ms), within the second
    assert slow == {"trace_id": "c" * 32}
    assert other_status == {"trace_id": "d" * 32}
    key = next(iter(instrumentation._exemplar_next))
    instrumentation._exemplar_next[key] = 0.0  # the second has passed
    assert instrumentation._exemplar_due("GET", "/x/{id}", 200, 0.004, "e" * 32) == {
        "trace_id": "e" * 32
    }
