"""usage_daily: the hourly ledger summed per UTC day, backfilled from `usage`

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 13:00:00.000000

From here on `bot.services.ledger` keeps it equal to the hourly rows in the same transaction
as every ledger write. The backfill is one INSERT … SELECT … GROUP BY in the database (the
hourly rows never leave it); the day is the UTC date of the hour, cast to a midnight timestamp
(`usage.hour` is stored as naive UTC on both databases). Rows go in day by day, as the
ledger writes them later, so reading one day touches few pages.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bot.models import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

VALUE_COLS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "requests", "cost_micro_usd", "unpriced_tokens", "unpriced_requests")


def day_of_hour_sql(dialect: str, column: str = "hour") -> str:
    """SQL for the UTC midnight starting the day of a naive-UTC timestamp column."""
    if dialect == "postgresql":
        return f"date_trunc('day', {column})"
    # SQLite stores "YYYY-MM-DD HH:MM:SS[.ffffff]"; the same text format at 00:00:00.
    return f"date({column}) || ' 00:00:00.000000'"


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("meter_id", sa.Integer(), nullable=False),
        sa.Column("day", UTCDateTime(), nullable=False),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in VALUE_COLS),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"], name="fk_usage_daily_meter_id_meters",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("meter_id", "day", name="pk_usage_daily"),
    )
    op.create_index("ix_usage_daily_day", "usage_daily", ["day"])
    day = day_of_hour_sql(op.get_bind().dialect.name)
    cols = ", ".join(VALUE_COLS)
    sums = ", ".join(f"sum({c})" for c in VALUE_COLS)
    op.execute(f"INSERT INTO usage_daily (meter_id, day, {cols}) "
               f"SELECT meter_id, {day}, {sums} FROM usage GROUP BY meter_id, {day} ORDER BY {day}, meter_id")


def downgrade() -> None:
    op.drop_index("ix_usage_daily_day", table_name="usage_daily")
    op.drop_table("usage_daily")
