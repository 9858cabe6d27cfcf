"""The VCP (volatility contraction pattern) detector, vectorised over tickers with numpy.

A VCP is a base in which each pullback is shallower than the one before, volume
dries up as the pullbacks tighten, and the price ends close to the pivot (the high
of the last, tightest contraction), ready to break out. The detector splits the
last ``window`` trading days into ``contractions`` equal segments and checks the
three conditions for every ticker at once: no Python loop per ticker or per day.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class VcpRule:
    """The thresholds of the pattern; the defaults follow Minervini's textbook shape."""

    window: int = 60
    contractions: int = 3
    min_first_depth: float = 0.10
    max_first_depth: float = 0.40
    max_last_depth: float = 0.10
    shrink: float = 0.8
    volume_dry_up: float = 0.75
    pivot_distance: float = 0.05


@dataclass(frozen=True)
class VcpResult:
    """Per ticker: whether it is a VCP, the depth of each contraction, volume ratio, pivot."""

    matches: NDArray[np.bool_]
    depths: FloatArray
    volume_ratio: FloatArray
    pivot: FloatArray

    def score(self) -> FloatArray:
        """A 0-100 strength: tighter last contraction and drier volume score higher."""
        tightness = 1.0 - np.clip(self.depths[:, -1] / 0.10, 0.0, 1.0)
        dryness = 1.0 - np.clip(self.volume_ratio, 0.0, 1.0)
        return np.round(100.0 * (0.6 * tightness + 0.4 * dryness), 1)


def detect(
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    volume: FloatArray,
    rule: VcpRule = VcpRule(),
) -> VcpResult:
    """Evaluate the pattern on ``(tickers, days)`` arrays (or one ticker's ``(days,)``).

    Raises:
        ValueError: fewer days than ``rule.window`` or arrays of different shapes.
    """
    arrays = [np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (high, low, close, volume)]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError("high, low, close and volume must have the same shape")
    segment = rule.window // rule.contractions
    used = segment * rule.contractions
    if shape[1] < used:
        raise ValueError(f"need at least {used} days of prices, got {shape[1]}")
    high2, low2, close2, volume2 = (a[:, -used:] for a in arrays)
    tickers = shape[0]
    high3 = high2.reshape(tickers, rule.contractions, segment)
    low3 = low2.reshape(tickers, rule.contractions, segment)
    volume3 = volume2.reshape(tickers, rule.contractions, segment)

    with np.errstate(divide="ignore", invalid="ignore"):
        depths = 1.0 - low3.min(axis=2) / high3.max(axis=2)
        mean_volume = volume3.mean(axis=2)
        volume_ratio = mean_volume[:, -1] / mean_volume[:, 0]
    pivot = high3[:, -1, :].max(axis=1)

    first = depths[:, 0]
    narrowing = np.all(depths[:, 1:] <= rule.shrink * depths[:, :-1], axis=1)
    matches = (
        (first >= rule.min_first_depth)
        & (first <= rule.max_first_depth)
        & (depths[:, -1] <= rule.max_last_depth)
        & narrowing
        & (volume_ratio <= rule.volume_dry_up)
        & (close2[:, -1] >= pivot * (1.0 - rule.pivot_distance))
    )
    return VcpResult(
        matches=np.nan_to_num(matches, nan=False).astype(bool),
        depths=depths,
        volume_ratio=volume_ratio,
        pivot=pivot,
    )


def contraction_path(
    start: float, depths: tuple[float, ...], days_per_contraction: int
) -> FloatArray:
    """Closing prices that pull back by each of ``depths`` in turn and recover to the pivot.

    Used to plant patterns (and non-patterns) in the generated data and in tests.
    """
    pieces = []
    half = days_per_contraction // 2
    for depth in depths:
        down = np.linspace(start, start * (1.0 - depth), half, endpoint=False)
        up = np.linspace(start * (1.0 - depth), start * 0.995, days_per_contraction - half)
        pieces.extend([down, up])
    return np.concatenate(pieces)
