"""A deterministic KRX-like data set, and loading it into PostgreSQL with COPY.

Same seed and scale, same rows, on every machine: 6-digit tickers, KOSPI / KOSDAQ,
sectors, a random-walk OHLCV per ticker over business days, daily net buying by
foreign investors, institutions and individuals, and a history of signals. A few
tickers get a planted VCP in their last 60 days (and a few a planted
*expanding* base, the non-pattern), so the scan has known answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat

import asyncpg
import numpy as np
from numpy.typing import NDArray

from stackwatch.demo.vcp import VcpRule, contraction_path

DEFAULT_TICKERS = 2000
TRADING_DAYS = 250
LAST_TRADING_DAY = dt.date(2026, 1, 28)
SIGNALS_PER_TICKER = 25
PLANTED_SHARE = 0.02
SIGNAL_KINDS = ("vcp", "breakout", "golden_cross", "volume_spike", "rsi_rebound")
SIGNAL_STATUSES = ("active", "closed", "pending")
SIGNAL_STATUS_WEIGHTS = (0.2, 0.7, 0.1)
SECTORS = (
    "반도체",
    "전자",
    "바이오",
    "제약",
    "화학",
    "자동차",
    "건설",
    "금융",
    "에너지",
    "소프트웨어",
    "게임",
    "유통",
)
NAME_STEMS = ("한빛", "대성", "삼진", "동아", "세원", "미래", "우리", "신성", "태광", "에이스")

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Dataset:
    """Every generated row, column-wise; ``tickers[i]`` owns row ``i`` of each price array."""

    tickers: list[str]
    names: list[str]
    markets: list[str]
    sectors: list[str]
    market_caps: NDArray[np.int64]
    dates: list[dt.date]
    open: NDArray[np.float64]
    high: NDArray[np.float64]
    low: NDArray[np.float64]
    close: NDArray[np.float64]
    volume: NDArray[np.int64]
    flows: NDArray[np.int64]  # (tickers, days, 3): foreign, institution, individual
    signal_rows: list[tuple[str, str, str, float, dt.datetime]]
    planted_vcp: list[str]
    planted_non_vcp: list[str]

    def by_popularity(self) -> list[str]:
        """Tickers from the largest market capitalisation down: the order users ask for them."""
        order = np.argsort(-self.market_caps, kind="stable")
        return [self.tickers[i] for i in order]


def trading_days(count: int, last: dt.date = LAST_TRADING_DAY) -> list[dt.date]:
    """The ``count`` business days (Monday to Friday) ending at ``last``."""
    days: list[dt.date] = []
    day = last
    while len(days) < count:
        if day.weekday() < 5:
            days.append(day)
        day -= dt.timedelta(days=1)
    return days[::-1]


def generate(scale: float = 1.0, seed: int = 20260128) -> Dataset:
    """Build the data set for ``scale`` x 2,000 tickers (at least 20), deterministically."""
    count = max(20, round(DEFAULT_TICKERS * scale))
    rng = np.random.default_rng(seed)
    codes = (rng.choice(99_999, size=count, replace=False) + 1) * 10
    tickers = [f"{code:06d}" for code in codes]
    sector_index = rng.integers(0, len(SECTORS), size=count)
    sectors = [SECTORS[i] for i in sector_index]
    stems = rng.integers(0, len(NAME_STEMS), size=count)
    names = [f"{NAME_STEMS[s]}{sectors[i]} {i:04d}" for i, s in enumerate(stems)]
    markets = ["KOSPI" if flag else "KOSDAQ" for flag in rng.random(count) < 0.4]
    market_caps = np.round(rng.lognormal(mean=26.0, sigma=1.5, size=count)).astype(np.int64)

    dates = trading_days(TRADING_DAYS)
    days = len(dates)
    volatility = rng.uniform(0.01, 0.03, size=(count, 1))
    returns = rng.normal(0.0004, 1.0, size=(count, days)) * volatility
    start = rng.lognormal(mean=np.log(20_000), sigma=0.8, size=(count, 1)) + 2_000
    close = start * np.exp(np.cumsum(returns, axis=1))
    base_volume = rng.lognormal(mean=12.0, sigma=1.0, size=(count, 1))
    volume_noise = rng.lognormal(mean=0.0, sigma=0.35, size=(count, days))
    volume = base_volume * volume_noise

    planted = max(1, round(count * PLANTED_SHARE))
    order = rng.permutation(count)
    vcp_rows, non_rows = order[:planted], order[planted : 2 * planted]
    rule = VcpRule()
    segment = rule.window // rule.contractions
    for rows, depths, volume_steps in (
        (vcp_rows, (0.25, 0.14, 0.06), (1.0, 0.7, 0.45)),
        (non_rows, (0.06, 0.14, 0.25), (0.6, 0.9, 1.3)),
    ):
        for row in rows:
            pivot = close[row, -rule.window - 1] * 1.15
            path = contraction_path(pivot, depths, segment)
            jitter = 1.0 + rng.normal(0.0, 0.002, size=path.size)
            close[row, -path.size :] = path * jitter
            steps = np.repeat(np.asarray(volume_steps), segment)
            volume[row, -path.size :] = (
                base_volume[row, 0] * steps * rng.uniform(0.9, 1.1, path.size)
            )

    close = np.round(close)
    spread = rng.uniform(0.002, 0.02, size=(count, days))
    high = np.round(close * (1.0 + spread))
    low = np.round(close * (1.0 - spread))
    open_ = np.round(np.clip(close * (1.0 + rng.normal(0.0, 0.005, (count, days))), low, high))
    for rows in (vcp_rows, non_rows):
        high[rows, -rule.window :] = np.round(close[rows, -rule.window :] * 1.003)
        low[rows, -rule.window :] = np.round(close[rows, -rule.window :] * 0.997)
        open_[rows, -rule.window :] = close[rows, -rule.window :]

    flows = np.round(rng.normal(0.0, 1.0, size=(count, days, 3)) * base_volume[:, :, None] * 50)
    flows[:, :, 2] = -(flows[:, :, 0] + flows[:, :, 1])

    signal_rows = _signals(rng, tickers, dates)
    return Dataset(
        tickers=tickers,
        names=names,
        markets=markets,
        sectors=sectors,
        market_caps=market_caps,
        dates=dates,
        open=np.asarray(open_, dtype=np.float64),
        high=high,
        low=low,
        close=close,
        volume=np.round(volume).astype(np.int64),
        flows=flows.astype(np.int64),
        signal_rows=signal_rows,
        planted_vcp=sorted(tickers[i] for i in vcp_rows),
        planted_non_vcp=sorted(tickers[i] for i in non_rows),
    )


def _signals(
    rng: np.random.Generator, tickers: list[str], dates: list[dt.date]
) -> list[tuple[str, str, str, float, dt.datetime]]:
    total = len(tickers) * SIGNALS_PER_TICKER
    owner = rng.integers(0, len(tickers), size=total)
    kind = rng.integers(0, len(SIGNAL_KINDS), size=total)
    status = rng.choice(len(SIGNAL_STATUSES), size=total, p=SIGNAL_STATUS_WEIGHTS)
    day = rng.integers(0, len(dates), size=total)
    second = rng.integers(9 * 3600, 15 * 3600 + 1800, size=total)
    score = np.round(rng.uniform(40.0, 99.0, size=total), 1)
    kst = dt.timezone(dt.timedelta(hours=9))
    midnight = [dt.datetime.combine(d, dt.time(), tzinfo=kst) for d in dates]
    return [
        (
            tickers[o],
            SIGNAL_KINDS[k],
            SIGNAL_STATUSES[s],
            float(sc),
            midnight[d] + dt.timedelta(seconds=int(sec)),
        )
        for o, k, s, sc, d, sec in zip(
            owner.tolist(),
            kind.tolist(),
            status.tolist(),
            score.tolist(),
            day.tolist(),
            second.tolist(),
            strict=True,
        )
    ]


def _price_records(data: Dataset, row: int) -> Iterable[tuple[object, ...]]:
    return zip(
        repeat(data.tickers[row]),
        data.dates,
        data.open[row].tolist(),
        data.high[row].tolist(),
        data.low[row].tolist(),
        data.close[row].tolist(),
        data.volume[row].tolist(),
        strict=False,
    )


def _flow_records(data: Dataset, row: int) -> Iterable[tuple[object, ...]]:
    flows = data.flows[row].tolist()
    return ((data.tickers[row], day, *flow) for day, flow in zip(data.dates, flows, strict=True))


async def load(dsn: str, data: Dataset, progress: Progress | None = None, batch: int = 200) -> None:
    """COPY the data set into the demo schema at ``dsn`` (a libpq ``postgresql://`` URL).

    ``progress(table, rows)`` is called after each batch so the CLI can draw a bar.
    """
    report = progress or (lambda _table, _rows: None)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(
            "stock",
            records=list(
                zip(
                    data.tickers,
                    data.names,
                    data.markets,
                    data.sectors,
                    data.market_caps.tolist(),
                    strict=True,
                )
            ),
            columns=["ticker", "name", "market", "sector", "market_cap"],
        )
        report("stock", len(data.tickers))
        price_columns = ["ticker", "date", "open", "high", "low", "close", "volume"]
        flow_columns = ["ticker", "date", "foreign_net", "institution_net", "individual_net"]
        for first in range(0, len(data.tickers), batch):
            rows = range(first, min(first + batch, len(data.tickers)))
            prices = [record for row in rows for record in _price_records(data, row)]
            await connection.copy_records_to_table(
                "daily_price", records=prices, columns=price_columns
            )
            report("daily_price", len(prices))
            flows = [record for row in rows for record in _flow_records(data, row)]
            await connection.copy_records_to_table(
                "institutional_flow", records=flows, columns=flow_columns
            )
            report("institutional_flow", len(flows))
        await connection.copy_records_to_table(
            "signal",
            records=data.signal_rows,
            columns=["ticker", "kind", "status", "score", "created_at"],
        )
        report("signal", len(data.signal_rows))
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def row_counts(data: Dataset) -> dict[str, int]:
    """How many rows ``load`` writes per table (for the progress bar's totals)."""
    days = len(data.dates)
    return {
        "stock": len(data.tickers),
        "daily_price": len(data.tickers) * days,
        "institutional_flow": len(data.tickers) * days,
        "signal": len(data.signal_rows),
    }
