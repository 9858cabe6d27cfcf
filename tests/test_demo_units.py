"""The demo's pure parts: deterministic data, the VCP detector, the load mix (no network)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import stackwatch
from stackwatch.demo.analysis import (
    PATH_BLOCK,
    ROUNDS,
    analyse,
    analyse_blocked,
    score,
    simulate,
    simulate_blocked,
    work_multiplier,
)
from stackwatch.demo.data import generate, trading_days
from stackwatch.demo.measure import PhaseResult
from stackwatch.demo.report import build_gates, failed, short_of_margin, write_json
from stackwatch.demo.runner import DemoOptions, Target, service_environment
from stackwatch.demo.service import AnalysisPool
from stackwatch.demo.vcp import VcpRule, contraction_path, detect
from stackwatch.demo.warmup import WARM_ANALYSES, WARM_TICKERS, warm_sizes
from stackwatch.demo.workload import ANALYSIS, DETAIL, ENDPOINTS, VirtualUser, zipf_weights


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


def _closes(seed: int) -> list[float]:
    steps = np.random.default_rng(seed).normal(0.0005, 0.02, 250)
    return [float(v) for v in 100 * np.exp(np.cumsum(steps))]


# 1.01x the base paths, 2.99x (not a whole number of blocks), and one in between.
@pytest.mark.parametrize("ticker", ["000010", "001990", "005930"])
def test_blocked_analysis_gives_the_models_numbers_to_the_last_bit(ticker: str) -> None:
    assert round(16_000 * work_multiplier("001990")) % PATH_BLOCK
    closes = _closes(int(ticker))
    assert simulate_blocked(ticker, closes, range(ROUNDS)) == simulate(
        ticker, closes, range(ROUNDS)
    )
    assert analyse_blocked(ticker, closes) == analyse(ticker, closes)


@pytest.mark.parametrize(
    "closes",
    [[100.0], [100.0, 100.0], [50.0] * 250, [1.0, 2.0, 4.0, 2.0]],
    ids=["one price", "two equal prices", "flat year", "four prices"],
)
def test_blocked_analysis_matches_on_degenerate_histories(closes: list[float]) -> None:
    assert analyse_blocked("000660", closes) == analyse("000660", closes)


def test_blocked_analysis_matches_on_generated_data_and_any_slice_of_rounds() -> None:
    data = generate(0.01)
    for index in (0, 7):
        ticker, closes = data.tickers[index], [float(v) for v in data.close[index]]
        assert simulate_blocked(ticker, closes, range(3, 6)) == simulate(
            ticker, closes, range(3, 6)
        )


def test_pool_processes_end_when_the_app_that_started_them_is_killed() -> None:
    # A web process killed by SIGKILL (a stop that timed out) used to leave the pool,
    # its forkserver and resource tracker running, computing for nobody.
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, time\n"
            "from stackwatch.demo.service import analysis_pool\n"
            "analysis_pool.start(2)\n"
            "asyncio.run(analysis_pool.run('005930', [100.0 + i for i in range(250)]))\n"
            "print('ready', flush=True)\n"
            "time.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert app.stdout is not None
    try:
        assert app.stdout.readline().strip() == "ready"
        helpers = psutil.Process(app.pid).children(recursive=True)
        assert len(helpers) >= 2
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait(10)
    deadline = time.monotonic() + 10.0
    alive = helpers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for process in alive:
        process.kill()
    assert not alive, [p.cmdline()[-1][:60] for p in alive]


def _phase(mode: str, p95: float, p99: float, slow: float, scan_s: float) -> PhaseResult:
    endpoints = {e: {"p95_ms": p95, "p99_ms": p99} for e in (DETAIL, ANALYSIS)}
    return PhaseResult(
        mode=mode,
        endpoints=endpoints,
        requests=1000,
        load_seconds=30.0,
        slow_queries=slow,
        cache={"ai": {"hit": 96.0, "miss": 4.0}},
        scan_seconds=scan_s,
        scan_tickers=2000,
        tasks_succeeded=21.0,
        tasks_failed=0.0,
    )


def test_margin_targets_sit_beside_the_plans_gates_and_do_not_decide_the_verdict(
    tmp_path: Path,
) -> None:
    baseline = _phase("baseline", 2000.0, 3000.0, slow=1000.0, scan_s=60.0)
    # Inside the plan's gates (P95 < 500, P99 < 1000) but not the margin (100 / 250).
    optimized = _phase("optimized", 150.0, 400.0, slow=1.0, scan_s=5.0)
    rows = {row.name: row for row in build_gates(baseline, optimized)}
    margins = {name: row.margin for name, row in rows.items()}
    assert margins[f"P95 {ANALYSIS}"] == "<= 100 ms"
    assert margins[f"P99 {ANALYSIS}"] == "<= 250 ms"
    assert margins["Slow queries (>= 100 ms) under load"] == "-99 %"
    assert margins["Cache hit ratio (all namespaces)"] == ">= 95 %"
    assert margins["DB reads per request"] == "-80 %"
    assert margins["VCP scan time"] == "-90 %"
    assert margins["Celery throughput (tickers/s)"] == "x5"
    assert margins["Celery task failure rate"] == "0 %"
    analysis_p95 = rows[f"P95 {ANALYSIS}"]
    assert analysis_p95.passed is True
    assert analysis_p95.margin_passed is False
    assert not failed(list(rows.values()))
    assert {row.name for row in short_of_margin(list(rows.values()))} == {
        f"P95 {endpoint}" for endpoint in (DETAIL, ANALYSIS)
    } | {f"P99 {endpoint}" for endpoint in (DETAIL, ANALYSIS)}
    path = tmp_path / "report.json"
    write_json(path, list(rows.values()), [baseline, optimized], {})
    document = json.loads(path.read_text())
    assert document["passed"] is True
    assert document["margin_passed"] is False
    assert all("margin" in gate and "margin_passed" in gate for gate in document["gates"])


def test_warm_up_sizes_are_one_constant_for_app_task_and_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STACKWATCH_DEMO_WARM_TICKERS", raising=False)
    monkeypatch.delenv("STACKWATCH_DEMO_WARM_ANALYSES", raising=False)
    assert warm_sizes() == (WARM_TICKERS, WARM_ANALYSES)
    assert DemoOptions().warm_up() == (WARM_TICKERS, WARM_ANALYSES)
    monkeypatch.setenv("STACKWATCH_DEMO_WARM_ANALYSES", "12")
    assert warm_sizes() == (WARM_TICKERS, 12)
    monkeypatch.setenv("STACKWATCH_DEMO_WARM_TICKERS", "lots")
    with pytest.raises(stackwatch.SettingsError, match="STACKWATCH_DEMO_WARM_TICKERS"):
        warm_sizes()


def test_service_environment_keeps_the_warm_up_sizes_a_user_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The runner sets the services' variables in its own process too (as a Celery
    producer): the defaults must not overwrite sizes the user asked for."""
    target = Target("postgresql://a/b", "postgresql://a/c", "redis://r", "p", False, tmp_path)
    monkeypatch.setenv("STACKWATCH_DEMO_WARM_ANALYSES", "1000")
    monkeypatch.delenv("STACKWATCH_DEMO_WARM_TICKERS", raising=False)
    environment = service_environment(target, "optimized")
    assert environment["STACKWATCH_DEMO_WARM_ANALYSES"] == "1000"
    assert environment["STACKWATCH_DEMO_WARM_TICKERS"] == str(WARM_TICKERS)
    assert service_environment(target, "optimized", (7, 8))["STACKWATCH_DEMO_WARM_ANALYSES"] == "8"
