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

``simulate`` is the model as written (whole ``paths x days`` arrays, what the
baseline runs); ``simulate_blocked`` is the optimized service's implementation of
the same computation: the same draws, additions and maxima in the same order, so
every number is the one ``simulate`` gives, in a fraction of its time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASE_PATHS = 16_000
HORIZON_DAYS = 60
ROUNDS = 8
# Paths walked together by simulate_blocked: a day of a block (32 KiB) and the
# block's draws (2 MiB) stay in the CPU caches.
PATH_BLOCK = 4_096

Round = tuple[float, float]


def work_multiplier(ticker: str) -> float:
    """1.0 to 3.0: how much heavier this ticker's analysis is than the lightest one."""
    return 1.0 + (int(ticker) // 10 % 201) / 100.0


def _paths(ticker: str) -> int:
    return int(BASE_PATHS * work_multiplier(ticker))


def simulate(ticker: str, closes: list[float], rounds: range) -> list[Round]:
    """(share of paths up 10 %, mean maximum drawdown) of each round in ``rounds``."""
    returns = _returns(closes)
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


def _returns(closes: list[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    prices = np.asarray(closes, dtype=np.float64)
    returns: np.ndarray[Any, np.dtype[np.float64]] = (
        np.diff(np.log(prices)) if prices.size > 1 else np.zeros(1)
    )
    return returns


def simulate_blocked(ticker: str, closes: list[float], rounds: range) -> list[Round]:
    """``simulate(ticker, closes, rounds)``, equal to the last bit, three to four times faster.

    ``simulate`` materialises ``paths x 60`` arrays five times per round (up to 23 MB
    each: page faults and cache misses) and accumulates along their 60-day rows. Here
    a block of paths at a time takes the same draws from the same stream
    (``choice`` is ``integers(0, n)`` in row order, and consecutive blocks continue
    that stream), laid out day-major, and walks them a day at a time over vectors
    that stay in the cache. Sums are added in the same order, maxima are exact, and
    the per-path drawdowns are averaged as one array, as ``simulate`` does.
    """
    returns = _returns(closes)
    paths = _paths(ticker)
    target = np.log(1.10)
    gap = np.empty(min(paths, PATH_BLOCK))
    results: list[Round] = []
    for round_index in rounds:
        rng = np.random.default_rng([int(ticker), round_index])
        drawdowns = np.zeros(paths)
        gains = 0
        for start in range(0, paths, PATH_BLOCK):
            stop = min(paths, start + PATH_BLOCK)
            draws = rng.integers(0, returns.size, size=(stop - start, HORIZON_DAYS))
            steps = returns[draws.T]
            walk, peak = steps[0].copy(), steps[0].copy()
            drawdown, fall = drawdowns[start:stop], gap[: stop - start]
            for day in range(1, HORIZON_DAYS):
                np.add(walk, steps[day], out=walk)
                np.maximum(peak, walk, out=peak)
                np.subtract(peak, walk, out=fall)
                np.maximum(drawdown, fall, out=drawdown)
            gains += int(np.count_nonzero(walk >= target))
        results.append((gains / paths, float(np.mean(drawdowns))))
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


def analyse_blocked(ticker: str, closes: list[float]) -> dict[str, Any]:
    """``analyse(ticker, closes)`` computed by ``simulate_blocked``: the same result, faster."""
    return score(ticker, simulate_blocked(ticker, closes, range(ROUNDS)))
