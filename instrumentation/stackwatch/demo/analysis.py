"""The "AI analysis" of a ticker: a deterministic, CPU-heavy score (100-300 ms here).

A bootstrap Monte-Carlo of the next 60 trading days from the ticker's own daily
returns: the share of paths that gain 10 % and the expected drawdown make the
score. It stands in for a model inference: the same input gives the same output,
and the cost varies by ticker (1x to 3x a base amount of work), as real models'
latency does. It is the work the plan caches and moves off the event loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASE_PATHS = 16_000
HORIZON_DAYS = 60
ROUNDS = 8


def work_multiplier(ticker: str) -> float:
    """1.0 to 3.0: how much heavier this ticker's analysis is than the lightest one."""
    return 1.0 + (int(ticker) // 10 % 201) / 100.0


def analyse(ticker: str, closes: list[float]) -> dict[str, Any]:
    """Score ``ticker`` from its closing prices; pure and deterministic."""
    prices = np.asarray(closes, dtype=np.float64)
    returns = np.diff(np.log(prices)) if prices.size > 1 else np.zeros(1)
    rng = np.random.default_rng(int(ticker))
    paths = int(BASE_PATHS * work_multiplier(ticker))
    gains = np.empty(ROUNDS)
    drawdowns = np.empty(ROUNDS)
    for round_index in range(ROUNDS):
        sample = rng.choice(returns, size=(paths, HORIZON_DAYS))
        walk = np.cumsum(sample, axis=1)
        gains[round_index] = float(np.mean(walk[:, -1] >= np.log(1.10)))
        peak = np.maximum.accumulate(walk, axis=1)
        drawdowns[round_index] = float(np.mean(np.max(peak - walk, axis=1)))
    probability_up = float(gains.mean())
    expected_drawdown = float(1.0 - np.exp(-drawdowns.mean()))
    score = round(100.0 * probability_up * (1.0 - expected_drawdown), 2)
    return {
        "ticker": ticker,
        "score": score,
        "probability_up_10pct": round(probability_up, 4),
        "expected_drawdown": round(expected_drawdown, 4),
        "paths": paths * ROUNDS,
        "horizon_days": HORIZON_DAYS,
        "rating": "buy" if score >= 20 else "hold" if score >= 8 else "avoid",
    }
