"""A FastAPI app that never mentions stackwatch: ``opentelemetry-instrument`` must do it all."""

from __future__ import annotations

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/hello/{name}")
def hello(name: str) -> dict[str, str]:
    return {"name": name}


@app.get("/echo-headers")
def echo_headers(request: Request) -> dict[str, str]:
    return dict(request.headers)
