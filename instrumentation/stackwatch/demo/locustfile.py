"""The demo's workload for teams that use Locust: ``locust -f .../demo/locustfile.py --host URL``.

Same endpoint mix, Zipf ticker popularity and think time as ``stackwatch demo``'s
own virtual users (workload.py). Locust is not a dependency of stackwatch: without
it this module imports cleanly and defines nothing to run.
"""

from __future__ import annotations

import os
from typing import Any

from stackwatch.demo.workload import SIGNALS, THINK_TIME_S, VirtualUser

try:
    from locust import HttpUser, between, task
except ImportError:  # Locust is optional; importing this file must stay safe without it
    HttpUser = None

TICKERS = [t for t in os.environ.get("STACKWATCH_DEMO_TICKERS", "").split(",") if t]

if HttpUser is not None:

    class DemoUser(HttpUser):
        """One virtual user of the demo; tickers from STACKWATCH_DEMO_TICKERS (by popularity)."""

        wait_time = between(0, 2 * THINK_TIME_S)

        def on_start(self) -> None:
            tickers = TICKERS
            if not tickers:
                signals = self.client.get(f"{SIGNALS}?status=active&limit=200").json()
                tickers = list(dict.fromkeys(item["ticker"] for item in signals["items"]))
            self.user = VirtualUser(id(self) % 10_000, tickers, seed=7)

        @task
        def request(self) -> None:
            endpoint, path, params = self.user.next_request()
            response: Any = self.client.get(path, params=params, name=endpoint)
            cursor = response.json().get("next_cursor") if response.status_code == 200 else None
            if endpoint == SIGNALS and cursor and self.user.random.random() < 0.3:
                self.client.get(path, params={**params, "cursor": cursor}, name=endpoint)
