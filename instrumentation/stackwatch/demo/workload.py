"""The load: async virtual users asking for Zipf-distributed tickers over every endpoint.

Users ask for big companies far more often than small ones; a Zipf law over the
tickers ranked by market capitalisation is the usual model of that skew, and it is
what makes a cache worth having. Each user is a closed loop (request, think,
request) with its own seeded random stream, so a run is repeatable for a given
seed, user count and duration, up to the server's own timing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

DETAIL = "/api/kr/stocks/{ticker}"
CHART = "/api/kr/stocks/{ticker}/chart"
SIGNALS = "/api/kr/signals"
ANALYSIS = "/api/kr/ai-analysis/{ticker}"
ENDPOINTS = (DETAIL, CHART, SIGNALS, ANALYSIS)
ENDPOINT_WEIGHTS = (0.40, 0.25, 0.25, 0.10)
SIGNAL_STATUSES = ("active", "closed", "pending")
SIGNAL_STATUS_WEIGHTS = (0.6, 0.2, 0.2)
CHART_DAYS = (20, 60, 120)  # the periods the chart offers; the service warms these
NEXT_PAGE_PROBABILITY = 0.3
ZIPF_EXPONENT = 1.2
THINK_TIME_S = 0.1
REQUEST_TIMEOUT_S = 30.0


@dataclass
class WorkloadResult:
    """Latencies (seconds) and status counts per endpoint template, and the wall time."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        """Requests that got an answer."""
        return sum(len(values) for values in self.latencies.values())

    def percentile(self, endpoint: str, q: float) -> float | None:
        """The ``q``-th percentile latency of ``endpoint`` in seconds, None without samples."""
        values = self.latencies.get(endpoint)
        if not values:
            return None
        return float(np.percentile(np.asarray(values), q))

    def summary(self) -> dict[str, Any]:
        """Per endpoint: count, P50 / P95 / P99 (ms), non-2xx and transport errors."""
        rows: dict[str, Any] = {}
        for endpoint in ENDPOINTS:
            values = self.latencies.get(endpoint, [])
            statuses = self.statuses.get(endpoint, {})
            rows[endpoint] = {
                "requests": len(values),
                "p50_ms": _ms(self.percentile(endpoint, 50)),
                "p95_ms": _ms(self.percentile(endpoint, 95)),
                "p99_ms": _ms(self.percentile(endpoint, 99)),
                "non_2xx": sum(n for code, n in statuses.items() if not 200 <= code < 300),
                "errors": self.errors.get(endpoint, 0),
            }
        return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)


def zipf_weights(
    count: int, exponent: float = ZIPF_EXPONENT
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Probability of each rank 1..count under a Zipf law (bounded, normalised)."""
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** exponent
    normalised: np.ndarray[Any, np.dtype[np.float64]] = weights / weights.sum()
    return normalised


class VirtualUser:
    """One closed-loop user: picks an endpoint and a ticker, asks, thinks, repeats."""

    def __init__(self, index: int, tickers: list[str], seed: int) -> None:
        self.random = random.Random(seed * 1_000 + index)
        self.tickers = tickers
        self.cumulative = np.cumsum(zipf_weights(len(tickers))).tolist()

    def ticker(self) -> str:
        """A ticker drawn by popularity rank."""
        position = self.random.random()
        low, high = 0, len(self.cumulative) - 1
        while low < high:
            middle = (low + high) // 2
            if self.cumulative[middle] < position:
                low = middle + 1
            else:
                high = middle
        return self.tickers[low]

    def next_request(self) -> tuple[str, str, dict[str, Any]]:
        """(endpoint template, URL path, query parameters) of the next request."""
        endpoint = self.random.choices(ENDPOINTS, weights=ENDPOINT_WEIGHTS)[0]
        if endpoint == SIGNALS:
            status = self.random.choices(SIGNAL_STATUSES, weights=SIGNAL_STATUS_WEIGHTS)[0]
            return endpoint, SIGNALS, {"status": status, "limit": 50}
        ticker = self.ticker()
        if endpoint == CHART:
            return (
                endpoint,
                f"/api/kr/stocks/{ticker}/chart",
                {"days": self.random.choice(CHART_DAYS)},
            )
        return endpoint, endpoint.replace("{ticker}", ticker), {}


async def _user(
    client: httpx.AsyncClient, user: VirtualUser, deadline: float, result: WorkloadResult
) -> None:
    while time.monotonic() < deadline:
        endpoint, path, params = user.next_request()
        follow = endpoint == SIGNALS and user.random.random() < NEXT_PAGE_PROBABILITY
        for _page in range(2 if follow else 1):
            started = time.perf_counter()
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError:
                result.errors[endpoint] += 1
                break
            result.latencies[endpoint].append(time.perf_counter() - started)
            result.statuses[endpoint][response.status_code] += 1
            if endpoint != SIGNALS or response.status_code != 200:
                break
            cursor = response.json().get("next_cursor")
            if not cursor:
                break
            params = {**params, "cursor": cursor}
        await asyncio.sleep(user.random.expovariate(1.0 / THINK_TIME_S))


async def run_load(
    base_url: str, tickers: list[str], users: int, duration_s: float, seed: int = 7
) -> WorkloadResult:
    """Drive ``users`` virtual users against ``base_url`` for ``duration_s`` seconds.

    ``tickers`` are ordered by popularity (rank 1 first). Each user has a client
    (one keep-alive connection) of its own, as each browser does. One pool shared
    by every user cost twice the CPU per request: httpcore looks at each of the
    pool's connections on every request, and the load generator shares the
    server's 2 cores.
    """
    result = WorkloadResult()
    started = time.monotonic()
    deadline = started + duration_s

    async def one(index: int) -> None:
        async with httpx.AsyncClient(
            base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=1)
        ) as client:
            await _user(client, VirtualUser(index, tickers, seed), deadline, result)

    await asyncio.gather(*(one(index) for index in range(users)))
    result.seconds = time.monotonic() - started
    return result


def scrape(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Prometheus text as {sample name: {sorted label pairs: value}}."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def read_metrics(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Scrape ``url`` (a /metrics endpoint); empty when it cannot be read."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError:
        return {}
    return scrape(response.text)
