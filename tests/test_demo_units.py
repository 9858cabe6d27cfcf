"""The demo's pure parts: deterministic data, the VCP detector, the load mix (no network)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from stackwatch.demo.analysis import ROUNDS, analyse, score, simulate
from stackwatch.demo.data import generate, trading_days
from stackwatch.demo.measure import PhaseResult
from stackwatch.demo.report import build_gates, failed
from stackwatch.demo.service import AnalysisPool
from stackwatch.demo.vcp import VcpRule, contraction_path, detect
from stackwatch.demo.workload import ENDPOINTS, VirtualUser, zipf_weights


def test_generator_is_deterministic_for_a_seed() -> None:
    first, second = generate(0.02, seed=11), generate(0.02, seed=11)
    assert first.tickers == second.tickers
    assert np.array_equal(first.close, second.close)
    assert np.array_equal(first.flows, second.flows)
    assert first.signal_rows == second.signal_rows
    assert generate(0.02, seed=12).tickers != first.tickers


def test_generator_has_krx_shapes() -> None:
    data = generate(0.05)
    assert len(data.tickers) == 100
    assert len(set(data.tickers)) == 100
    assert all(len(t) == 6 and t.isdigit() for t in data.tickers)
    assert set(data.markets) == {"KOSPI", "KOSDAQ"}
    assert len(data.dates) == 250
    assert all(d.weekday() < 5 for d in data.dates)
    assert np.all(data.low <= data.close)
    assert np.all(data.close <= data.high)
    assert np.all(data.volume > 0)
    # individuals take the other side of foreigners and institutions
    assert np.array_equal(data.flows[..., 2], -(data.flows[..., 0] + data.flows[..., 1]))


def test_trading_days_skip_weekends() -> None:
    days = trading_days(10)
    assert len(days) == 10
    assert all(day.weekday() < 5 for day in days)
    assert days == sorted(days)


def _series(depths: tuple[float, ...], volume_steps: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    rule = VcpRule()
    segment = rule.window // rule.contractions
    lead = np.linspace(8_000.0, 10_000.0, 40)
    close = np.concatenate([lead, contraction_path(10_000.0, depths, segment)])
    volume = np.concatenate([np.full(40, 1e6), np.repeat(np.asarray(volume_steps) * 1e6, segment)])
    return close * 1.003, close * 0.997, close, volume


def test_vcp_detector_finds_a_planted_pattern() -> None:
    high, low, close, volume = _series((0.25, 0.14, 0.06), (1.0, 0.7, 0.45))
    result = detect(high, low, close, volume)
    assert result.matches.tolist() == [True]
    assert result.depths[0, 0] > result.depths[0, 1] > result.depths[0, 2]
    assert result.score()[0] > 0


@pytest.mark.parametrize(
    ("depths", "volume_steps", "why"),
    [
        ((0.06, 0.14, 0.25), (0.6, 0.9, 1.3), "pullbacks widen"),
        ((0.25, 0.14, 0.06), (1.0, 1.0, 1.1), "volume does not dry up"),
        ((0.25, 0.24, 0.23), (1.0, 0.7, 0.45), "pullbacks do not narrow enough"),
    ],
)
def test_vcp_detector_rejects_a_planted_non_pattern(
    depths: tuple[float, ...], volume_steps: tuple[float, ...], why: str
) -> None:
    high, low, close, volume = _series(depths, volume_steps)
    assert detect(high, low, close, volume).matches.tolist() == [False], why


def test_vcp_detector_rejects_price_far_below_the_pivot() -> None:
    high, low, close, volume = _series((0.25, 0.14, 0.06), (1.0, 0.7, 0.45))
    close = close.copy()
    close[-1] *= 0.85
    assert detect(high, low, close, volume).matches.tolist() == [False]


def test_vcp_scan_over_the_data_set_finds_every_planted_pattern_and_no_non_pattern() -> None:
    data = generate(0.5)
    result = detect(data.high, data.low, data.close, data.volume.astype(float))
    found = {data.tickers[i] for i in np.flatnonzero(result.matches)}
    assert set(data.planted_vcp) <= found
    assert not found & set(data.planted_non_vcp)


def test_vcp_detector_refuses_too_short_a_history() -> None:
    with pytest.raises(ValueError, match="at least 60 days"):
        detect(np.ones(30), np.ones(30), np.ones(30), np.ones(30))


def test_zipf_load_prefers_popular_tickers_and_covers_every_endpoint() -> None:
    weights = zipf_weights(100)
    assert weights[0] > weights[1] > weights[99]
    assert weights.sum() == pytest.approx(1.0)
    user = VirtualUser(0, [f"{i:06d}" for i in range(100)], seed=1)
    picks = [user.ticker() for _ in range(2000)]
    assert picks.count("000000") > picks.count("000050") * 5
    endpoints = {user.next_request()[0] for _ in range(200)}
    assert endpoints == set(ENDPOINTS)


def test_gates_fail_when_optimized_is_not_better() -> None:
    slow = PhaseResult(
        mode="baseline", requests=100, load_seconds=10, scan_seconds=10.0, scan_tickers=100
    )
    same = PhaseResult(
        mode="optimized", requests=100, load_seconds=10, scan_seconds=10.0, scan_tickers=100
    )
    names = {row.name for row in failed(build_gates(slow, same))}
    assert {"VCP scan time", "Celery throughput (tickers/s)"} <= names
    faster = PhaseResult(
        mode="optimized", requests=100, load_seconds=10, scan_seconds=1.0, scan_tickers=100
    )
    assert "VCP scan time" not in {row.name for row in failed(build_gates(slow, faster))}


def test_analysis_split_over_the_pool_gives_the_inline_result() -> None:
    closes = [float(v) for v in 100 * np.exp(np.cumsum(np.full(250, 0.001)))]
    closes[::7] = [c * 0.97 for c in closes[::7]]
    halves = simulate("005930", closes, range(ROUNDS // 2)) + simulate(
        "005930", closes, range(ROUNDS // 2, ROUNDS)
    )
    inline = analyse("005930", closes)
    assert score("005930", halves) == inline
    pool = AnalysisPool()
    pool.start(2)
    try:
        assert asyncio.run(pool.run("005930", closes)) == inline
    finally:
        pool.stop()
    assert analyse("000660", closes) != inline
