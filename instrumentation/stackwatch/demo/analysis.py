"""The "AI analysis" of a ticker: a deterministic, CPU-heavy score (100-300 ms here).

A bootstrap Monte-Carlo of the next 60 trading days from the ticker's own daily
returns: the share of paths that gain 10 % and the expected drawdown make the
score. It stands in for a model inference: the same input gives the same output,
and the cost varies by ticker (1x to 3x a base amount of work), as real models'
latency does. It is the work the plan caches and moves off the event loop.

Each round draws from a random stream of its own (seeded by ticker and round), so
rounds are independent: ``simulate`` any slice of them anywhere (in several
processes at once) and ``score`` the results in round order, and the answer is
the one ``analyse`` gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASE_PATHS = 16_000
HORIZON_DAYS = 60
ROUNDS = 8

Round = tuple[float, float]


def work_multiplier(ticker: str) -> float:
    """1.0 to 3.0: how much heavier this ticker's analysis is than the lightest one."""
    return 1.0 + (int(ticker) // 10 % 201) / 100.0


def _paths(ticker: str) -> int:
    return int(BASE_PATHS * work_multiplier(ticker))


def simulate(ticker: str, closes: list[float], rounds: range) -> list[Round]:
    """(share of paths up 10 %, mean maximum drawdown) of each round in ``rounds``."""
    prices = np.asarray(closes, dtype=np.float64)
    returns = np.diff(np.log(prices)) if prices.size > 1 else np.zeros(1)
    paths = _paths(ticker)
    results: list[Round] = []
    for round_index in rounds:
        rng = np.random.default_rng([int(ticker), round_index])
        sample = rng.choice(returns, size=(paths, HORIZON_DAYS))
        walk = np.cumsum(sample, axis=1)
        gain = float(np.mean(walk[:, -1] >= np.log(1.10)))
        peak = np.maximum.accumulate(walk, axis=1)
        results.append((gain, float(np.mean(np.max(peak - walk, axis=1)))))
    return results


def score(ticker: str, rounds: list[Round]) -> dict[str, Any]:
    """The analysis from every round's result, in round order."""
    gains = np.asarray([gain for gain, _ in rounds])
    drawdowns = np.asarray([drawdown for _, drawdown in rounds])
    probability_up = float(gains.mean())
    expected_drawdown = float(1.0 - np.exp(-drawdowns.mean()))
    value = round(100.0 * probability_up * (1.0 - expected_drawdown), 2)
    return {
        "ticker": ticker,
        "score": value,
        "probability_up_10pct": round(probability_up, 4),
        "expected_drawdown": round(expected_drawdown, 4),
        "paths": _paths(ticker) * len(rounds),
        "horizon_days": HORIZON_DAYS,
        "rating": "buy" if value >= 20 else "hold" if value >= 8 else "avoid",
    }


def analyse(ticker: str, closes: list[float]) -> dict[str, Any]:
    """Score ``ticker`` from its closing prices; pure and deterministic."""
    return score(ticker, simulate(ticker, closes, range(ROUNDS)))
