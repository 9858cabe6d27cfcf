"""Request ids, spans, route labels and /metrics through a real uvicorn server (subprocess)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from stackwatch.requestid import printable
from tests.support.uvicorn_server import Server, run_uvicorn

pytestmark = pytest.mark.integration

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_uvicorn(tmp_path_factory.mktemp("uvicorn")) as running:
        yield running


def lines_with_request_id(
    server: Server, value: str, last_event: str = "request"
) -> list[dict[str, Any]]:
    """Our log lines for one request (uvicorn's access line aside: it varies by server).

    Waits until ``last_event`` was logged: the server may write after the response.
    """
    deadline = time.monotonic() + 5
    while True:
        lines = [
            line
            for line in server.log_lines()
            if line.get("request_id") == value and line.get("logger") != "uvicorn.access"
        ]
        if any(line["event"] == last_event for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def spans(server: Server) -> list[dict[str, Any]]:
    return list(httpx.get(f"{server.url}/_spans").json())


def metric_samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/kr/stocks/005930", 200),
        ("/no/such/route", 404),
        ("/items/not-a-number", 422),
        ("/forbidden", 403),
        ("/boom", 500),
    ],
)
def test_request_id_is_on_every_response(server: Server, path: str, status: int) -> None:
    kept = f"kept-{uuid.uuid4().hex}"
    response = httpx.get(server.url + path, headers={"X-Request-ID": kept})
    assert response.status_code == status
    assert response.headers["x-request-id"] == kept

    fresh = httpx.get(server.url + path)
    assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])


def test_same_request_id_on_every_log_line_and_on_the_span(server: Server) -> None:
    value = f"flow-{uuid.uuid4().hex}"
    response = httpx.get(f"{server.url}/api/kr/stocks/005930", headers={"X-Request-ID": value})
    assert response.json()["request_id"] == value

    lines = lines_with_request_id(server, value)
    assert [line["event"] for line in lines] == ["looking up stock", "stock found", "request"]
    (span,) = [s for s in spans(server) if s["attributes"].get("request.id") == value]
    assert span["kind"] == "SERVER"
    assert span["name"] == "GET /api/kr/stocks/{ticker}"
    assert {line["trace_id"] for line in lines} == {span["trace_id"]}
    access = lines[-1]
    assert access["path"] == "/api/kr/stocks/{ticker}"
    assert access["status"] == 200


def test_unhandled_error_log_lines_carry_the_request_id(server: Server) -> None:
    value = f"boom-{uuid.uuid4().hex}"
    response = httpx.get(f"{server.url}/boom", headers={"X-Request-ID": value})
    assert response.status_code == 500
    lines = lines_with_request_id(server, value, last_event="Exception in ASGI application\n")
    events = [line["event"] for line in lines]
    assert "about to fail" in events
    assert "Exception in ASGI application\n" in events  # uvicorn's own traceback line
    (span,) = [s for s in spans(server) if s["attributes"].get("request.id") == value]
    assert span["attributes"]["error.type"] == "RuntimeError"
    assert span["attributes"]["http.response.status_code"] == 500


def test_exception_handler_reads_the_request_id(server: Server) -> None:
    response = httpx.get(f"{server.url}/teapot", headers={"X-Request-ID": "teapot-1"})
    assert response.status_code == 418
    assert response.json() == {"seen_request_id": "teapot-1"}
    assert response.headers["x-request-id"] == "teapot-1"


def raw_request(port: int, header_line: bytes) -> bytes:
    """Send a GET with a raw header line (bytes httpx would refuse to send) and read the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /echo-headers HTTP/1.1\r\nHost: x\r\n"
            + header_line
            + b"\r\nConnection: close\r\n\r\n"
        )
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "header_line",
    [
        b"X-Request-ID: " + "요청-ñ".encode(),
        b"X-Request-ID: " + b"a" * 10_240,
        b"X-Request-ID: abc*/ DROP TABLE users; /*",
        b"X-Request-ID: ",
    ],
    ids=["non_ascii", "ten_kilobytes", "sql_comment_end", "empty"],
)
def test_hostile_request_ids_are_replaced_and_never_echoed(
    server: Server, header_line: bytes
) -> None:
    # CR/LF cannot reach the app through HTTP/1.1 (the server splits header lines
    # first); test_http_requestid.py sends it straight through ASGI.
    reply = raw_request(server.port, header_line)
    head, _, _ = reply.partition(b"\r\n\r\n")
    echoed = re.search(rb"(?im)^x-request-id: ([^\r\n]*)", head)
    assert echoed is not None
    replacement = echoed.group(1).decode()
    assert re.fullmatch(r"[0-9a-f]{32}", replacement)

    hostile = header_line.removeprefix(b"X-Request-ID: ").decode("latin-1")
    lines_with_request_id(server, replacement)  # the request is over and logged
    (rejected,) = [line for line in server.log_lines() if line.get("replaced_by") == replacement]
    assert rejected["event"] == "request id rejected"
    assert rejected["rejected"] == printable(hostile)
    assert rejected["rejected_length"] == len(hostile)
    if printable(hostile) != hostile:  # escaped or truncated: the raw bytes are nowhere
        assert header_line.removeprefix(b"X-Request-ID: ") not in server.log_path.read_bytes()


def test_request_id_is_forwarded_on_outgoing_httpx_requests(server: Server) -> None:
    response = httpx.get(
        f"{server.url}/forward",
        params={"url": f"{server.url}/echo-headers"},
        headers={"X-Request-ID": "forwarded-1"},
    )
    assert response.json()["x-request-id"] == "forwarded-1"


def test_route_templates_label_prefixed_routers_mounts_and_errors(server: Server) -> None:
    paths = ["/api/kr/stocks/1", "/shop/orders/5", "/items/x", "/forbidden", "/nothing"]
    for path in paths:
        httpx.get(server.url + path)
    # a trailing-slash redirect keeps the route it redirects to (OTel contrib #921)
    assert httpx.get(f"{server.url}/items/5/").status_code == 307
    text = httpx.get(f"{server.url}/metrics").text
    counts = metric_samples(text, "api_request_duration_seconds_count")
    for labels in [
        'method="GET",path="/api/kr/stocks/{ticker}",status="200"',
        'method="GET",path="/shop/orders/{order_id}",status="200"',
        'method="GET",path="/items/{item_id}",status="422"',
        'method="GET",path="/forbidden",status="403"',
        'method="GET",path="<unmatched>",status="404"',
        'method="GET",path="/items/{item_id}",status="307"',
    ]:
        assert any(labels in sample for sample in counts), labels
    assert 'le="0.5"' in text
    assert 'le="1.0"' in text


def path_label_values(text: str) -> set[str]:
    names = ("api_request_duration_seconds_count", "api_requests_in_progress")
    return {
        match.group(1)
        for name in names
        for sample in metric_samples(text, name)
        if (match := re.search(r'path="([^"]*)"', sample))
    }


async def pipelined_gets(port: int, paths: list[str]) -> list[int]:
    """Send every GET on one connection without waiting (HTTP/1.1 pipelining); the statuses.

    Keeps the client's cost negligible, so 10,000 requests take seconds, not a minute.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode() for path in paths))
    await writer.drain()
    received = b""
    while received.count(b"HTTP/1.1 ") < len(paths):
        chunk = await reader.read(65536)
        assert chunk, "server closed the connection early"
        received += chunk
    writer.close()
    await writer.wait_closed()
    return [int(status) for status in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]


def test_ten_thousand_unknown_paths_add_no_label_values(server: Server) -> None:
    httpx.get(f"{server.url}/no/such/route")
    before = path_label_values(httpx.get(f"{server.url}/metrics").text)
    paths = [f"/random/{uuid.uuid4().hex}/{index}" for index in range(10_000)]

    async def send_all() -> list[int]:
        batches = [paths[start : start + 1250] for start in range(0, len(paths), 1250)]
        results = await asyncio.gather(*(pipelined_gets(server.port, batch) for batch in batches))
        return [status for batch in results for status in batch]

    statuses = asyncio.run(send_all())
    assert statuses == [404] * len(paths)
    text = httpx.get(f"{server.url}/metrics").text
    after = path_label_values(text)
    assert after == before
    assert "<unmatched>" in after
    unmatched = 'api_request_duration_seconds_count{method="GET",path="<unmatched>",status="404"}'
    (count,) = [line for line in text.splitlines() if line.startswith(unmatched)]
    assert float(count.split()[-1]) >= 10_000


def test_openmetrics_scrape_has_trace_id_exemplars(server: Server) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{'1' * 16}-01"
    # a latency bucket no other test lands in is not guaranteed, so look for our trace id;
    # a bucket takes one exemplar a second: let any earlier test's slot expire first
    time.sleep(1.1)
    httpx.get(f"{server.url}/shop/orders/77", headers={"traceparent": traceparent})
    response = httpx.get(f"{server.url}/metrics", headers={"Accept": OPENMETRICS})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        line
        for line in response.text.splitlines()
        if line.startswith("api_request_duration_seconds_bucket") and "/shop/orders/" in line
    ]
    assert any(f'# {{trace_id="{trace_id}"}}' in line for line in exemplars), exemplars

    plain = httpx.get(f"{server.url}/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in plain.text


def test_metrics_scrapes_are_not_measured_as_requests(server: Server) -> None:
    for _ in range(3):
        httpx.get(f"{server.url}/metrics")
    text = httpx.get(f"{server.url}/metrics").text
    assert 'path="/metrics"' not in text


def test_heap_is_frozen_once_the_app_has_started(server: Server, tmp_path: Any) -> None:
    """Full collections skip the start-up heap (fastapi._freeze_heap_after_startup)."""
    assert httpx.get(f"{server.url}/gc-frozen").json()["frozen"] > 10_000
    with run_uvicorn(tmp_path, env={"STACKWATCH_GC_FREEZE": "false"}) as unfrozen:
        assert httpx.get(f"{unfrozen.url}/gc-frozen").json()["frozen"] == 0


def test_sampling_at_a_ratio_keeps_trace_ids_on_every_request_and_spans_of_the_sampled(
    tmp_path: Any,
) -> None:
    """Under a ratio, unsampled requests take stackwatch's root-span shortcut (traces.RootSpans).

    Every request still gets a trace id in its access line; exactly the requests whose
    trace id the ratio samples (low 64 bits under ratio x 2**64, as the SDK decides)
    have a server span, with its attributes, and no other request has one.
    """
    with run_uvicorn(tmp_path, env={"OTEL_TRACES_SAMPLER_ARG": "0.5"}) as ratio_server:
        ids = [f"ratio-{n}" for n in range(60)]
        with httpx.Client(base_url=ratio_server.url) as client:
            for value in ids:
                response = client.get("/items/7", headers={"X-Request-ID": value})
                assert response.status_code == 200
        access = {
            line["request_id"]: line
            for value in ids
            for line in lines_with_request_id(ratio_server, value)
            if line["event"] == "request"
        }
        exported = {
            span["attributes"]["request.id"]: span
            for span in spans(ratio_server)
            if span["kind"] == "SERVER" and span["attributes"]["request.id"] in ids
        }
    assert set(access) == set(ids)
    bound = TraceIdRatioBased.get_bound_for_rate(0.5)
    sampled = {
        value
        for value, line in access.items()
        if int(line["trace_id"], 16) & TraceIdRatioBased.TRACE_ID_LIMIT < bound
    }
    assert 0 < len(sampled) < len(ids)
    assert set(exported) == sampled
    for value in sampled:
        span = exported[value]
        assert span["trace_id"] == access[value]["trace_id"]
        assert span["name"] == "GET /items/{item_id}"
        assert span["attributes"]["url.path"] == "/items/7"
        assert span["attributes"]["http.route"] == "/items/{item_id}"
    assert len({line["trace_id"] for line in access.values()}) == len(ids)
