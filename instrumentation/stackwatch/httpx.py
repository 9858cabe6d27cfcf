"""Outgoing httpx requests carry the current request id, so the next service logs the same id.

``httpx.Client.send`` and ``httpx.AsyncClient.send`` are the one door every httpx
request goes through, whatever transport the client uses; we wrap both (as
contrib's httpx instrumentation wraps the transports) and add the header only when
a request id is bound and the caller did not set the header themselves. Trace
context (``traceparent``) is contrib's job and is not touched here.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx

from stackwatch.requestid import request_id
from stackwatch.settings import get_settings

_lock = threading.Lock()
_original_send: Any = None
_original_async_send: Any = None


def _with_request_id(request: httpx.Request, header: str) -> None:
    current = request_id()
    if current is not None and header not in request.headers:
        request.headers[header] = current


def instrument_httpx() -> None:
    """Forward the request id on every outgoing httpx request; calling it twice is harmless."""
    global _original_send, _original_async_send
    with _lock:
        if _original_send is not None:
            return
        header = get_settings().request_id_header
        original_send = httpx.Client.send
        original_async_send = httpx.AsyncClient.send

        def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            _with_request_id(request, header)
            return original_send(self, request, **kwargs)

        async def async_send(
            self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
        ) -> httpx.Response:
            _with_request_id(request, header)
            return await original_async_send(self, request, **kwargs)

        _original_send, _original_async_send = original_send, original_async_send
        httpx.Client.send = send  # type: ignore[method-assign]
        httpx.AsyncClient.send = async_send  # type: ignore[method-assign]


def uninstrument_httpx() -> None:
    """Stop forwarding the request id."""
    global _original_send, _original_async_send
    with _lock:
        if _original_send is None:
            return
        httpx.Client.send = _original_send  # type: ignore[method-assign]
        httpx.AsyncClient.send = _original_async_send  # type: ignore[method-assign]
        _original_send = _original_async_send = None
