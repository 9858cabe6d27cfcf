"""The demo schema as the plan found it: primary and foreign keys, no secondary indexes.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the four tables."""
    op.create_table(
        "stock",
        sa.Column("ticker", sa.String(6), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("market", sa.String(6), nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("market_cap", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "daily_price",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("ticker", sa.String(6), sa.ForeignKey("stock.ticker"), nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("open", sa.Double, nullable=False),
        sa.Column("high", sa.Double, nullable=False),
        sa.Column("low", sa.Double, nullable=False),
        sa.Column("close", sa.Double, nullable=False),
        sa.Column("volume", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "signal",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("ticker", sa.String(6), sa.ForeignKey("stock.ticker"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("score", sa.Double, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "institutional_flow",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("ticker", sa.String(6), sa.ForeignKey("stock.ticker"), nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("foreign_net", sa.BigInteger, nullable=False),
        sa.Column("institution_net", sa.BigInteger, nullable=False),
        sa.Column("individual_net", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    """Drop the four tables."""
    for table in ("institutional_flow", "signal", "daily_price", "stock"):
        op.drop_table(table)
