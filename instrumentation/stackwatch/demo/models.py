"""The demo's tables: stocks, daily prices, signals and institutional flows.

Relationships load lazily by default on purpose: that is the N+1 the baseline mode
shows and the optimized mode replaces with explicit, batched queries. The schema
has no secondary indexes here; the plan's indexes arrive with migration 0002.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Date, DateTime, Double, ForeignKey, Identity, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """Declarative base of the demo schema."""


class Stock(Base):
    """A listed company: 6-digit KRX ticker, market (KOSPI / KOSDAQ), sector."""

    __tablename__ = "stock"

    ticker: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    market: Mapped[str] = mapped_column(String(6))
    sector: Mapped[str] = mapped_column(String(32))
    market_cap: Mapped[int] = mapped_column(BigInteger)

    prices: Mapped[list[DailyPrice]] = relationship(back_populates="stock", lazy="select")
    signals: Mapped[list[Signal]] = relationship(back_populates="stock", lazy="select")
    flows: Mapped[list[InstitutionalFlow]] = relationship(back_populates="stock", lazy="select")


class DailyPrice(Base):
    """One trading day of OHLCV for one ticker."""

    __tablename__ = "daily_price"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    ticker: Mapped[str] = mapped_column(ForeignKey("stock.ticker"))
    date: Mapped[dt.date] = mapped_column(Date)
    open: Mapped[float] = mapped_column(Double)
    high: Mapped[float] = mapped_column(Double)
    low: Mapped[float] = mapped_column(Double)
    close: Mapped[float] = mapped_column(Double)
    volume: Mapped[int] = mapped_column(BigInteger)

    stock: Mapped[Stock] = relationship(back_populates="prices", lazy="select")


class Signal(Base):
    """A trading signal (VCP, breakout...) with its lifecycle status."""

    __tablename__ = "signal"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    ticker: Mapped[str] = mapped_column(ForeignKey("stock.ticker"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8))
    score: Mapped[float] = mapped_column(Double)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))

    stock: Mapped[Stock] = relationship(back_populates="signals", lazy="select")


class InstitutionalFlow(Base):
    """Net buying by foreign investors, institutions and individuals for one day."""

    __tablename__ = "institutional_flow"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    ticker: Mapped[str] = mapped_column(ForeignKey("stock.ticker"))
    date: Mapped[dt.date] = mapped_column(Date)
    foreign_net: Mapped[int] = mapped_column(BigInteger)
    institution_net: Mapped[int] = mapped_column(BigInteger)
    individual_net: Mapped[int] = mapped_column(BigInteger)

    stock: Mapped[Stock] = relationship(back_populates="flows", lazy="select")
