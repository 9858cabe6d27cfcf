"""The circuit breaker that keeps a sick Redis from slowing every cached call.

While Redis answers, every call goes through. After ``failures`` consecutive errors
or timeouts the breaker opens: for ``open_s`` seconds no call touches Redis at all
(the cached function is called directly), so a dead or hanging Redis costs nothing
instead of one socket timeout per call. Then one call probes; its success closes the
breaker, its failure opens it again. State changes are logged once each, not per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

import structlog

from stackwatch.metrics import cache_circuit_open

BreakerState = Literal["closed", "open", "half_open"]

_log = structlog.get_logger("stackwatch.cache")


class CircuitBreaker:
    """Consecutive-failure breaker: closed -> open (for ``open_s``) -> half-open probe -> closed."""

    def __init__(
        self,
        failures: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_deadline = 0.0
        cache_circuit_open.set(0)

    @property
    def state(self) -> BreakerState:
        """``closed`` (Redis used), ``open`` (bypassed) or ``half_open`` (one probe allowed)."""
        return self._state

    def allow(self) -> bool:
        """Whether this call may talk to Redis; in half-open state only one caller at a time may."""
        if self._state == "closed":
            return True
        with self._lock:
            now = self._clock()
            if self._state == "open":
                if now - self._opened_at < self._open_s:
                    return False
                self._state = "half_open"
                self._probe_deadline = 0.0
                _log.info("cache circuit half-open, probing redis")
            # A probe that never reported back (its caller died) frees the slot after open_s.
            if now < self._probe_deadline:
                return False
            self._probe_deadline = now + self._open_s
            return True

    def record_success(self) -> None:
        """Redis answered: reset the failure count and close the breaker if it was probing."""
        if self._consecutive_failures == 0 and self._state == "closed":
            return
        with self._lock:
            self._consecutive_failures = 0
            if self._state != "closed":
                self._state = "closed"
                cache_circuit_open.set(0)
                _log.info("cache circuit closed, redis is back")

    def record_failure(self, error: BaseException) -> None:
        """Redis failed or timed out: count it; open at the threshold or on a failed probe."""
        with self._lock:
            self._consecutive_failures += 1
            should_open = self._state == "half_open" or (
                self._state == "closed" and self._consecutive_failures >= self._threshold
            )
            if not should_open:
                return
            self._state = "open"
            self._opened_at = self._clock()
            cache_circuit_open.set(1)
            _log.warning(
                "cache circuit opened, calling functions directly",
                consecutive_failures=self._consecutive_failures,
                open_s=self._open_s,
                error=type(error).__name__,
            )
