"""The plan's indexes (phase 1.2), built CONCURRENTLY so a live service keeps writing.

The plan names DailyPrice (ticker, date), Signal (status) and InstitutionalFlow
(date). Signal's index continues with (created_at, id) so that the keyset-paginated
signal list is one index range scan, and EXPLAIN ANALYZE of the stock detail
endpoint (the plan's gate "check every query") asked for two more: flows and
signals by ticker. CREATE / DROP INDEX CONCURRENTLY cannot run inside a
transaction, hence the autocommit blocks; the downgrade is the plan's rollback.

Revision ID: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PLAN_INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("ix_daily_price_ticker_date", "daily_price", ("ticker", "date")),
    ("ix_signal_status", "signal", ("status", "created_at", "id")),
    ("ix_institutional_flow_date", "institutional_flow", ("date",)),
    ("ix_institutional_flow_ticker_date", "institutional_flow", ("ticker", "date")),
    ("ix_signal_ticker", "signal", ("ticker",)),
)


def upgrade() -> None:
    """Create each index concurrently, outside any transaction."""
    with op.get_context().autocommit_block():
        for name, table, columns in PLAN_INDEXES:
            op.create_index(
                name,
                table,
                list(columns),
                postgresql_concurrently=True,
                if_not_exists=True,
            )


def downgrade() -> None:
    """Drop each index concurrently (the plan's rollback)."""
    with op.get_context().autocommit_block():
        for name, table, _columns in reversed(PLAN_INDEXES):
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
