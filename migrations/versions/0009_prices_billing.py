"""prices from the AWS Price List API, billed costs from Cost Explorer, unpriced usage

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00

(Built as 0006 on issue-17; renumbered 0009 at integration and chained after the usage-stream
migration 0008.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bot.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage", schema=None) as batch_op:
        # server_default: rows already in the ledger were priced or silently $0; 0 is what was known.
        batch_op.add_column(sa.Column("unpriced_tokens", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("unpriced_requests", sa.BigInteger(), nullable=False,
                                      server_default="0"))
    op.create_table(
        "model_prices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=256), nullable=False),
        sa.Column("input", sa.String(length=40), nullable=False),
        sa.Column("output", sa.String(length=40), nullable=False),
        sa.Column("cache_read", sa.String(length=40), nullable=False),
        sa.Column("cache_write", sa.String(length=40), nullable=False),
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("fetched_at", bot.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_prices")),
        sa.UniqueConstraint("region", "model_id", name=op.f("uq_model_prices_region_model_id")),
    )
    op.create_table(
        "billed_costs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=True),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("basis", sa.String(length=80), nullable=False),
        sa.Column("billed_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("estimate_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_tokens", sa.BigInteger(), nullable=False),
        sa.Column("fetched_at", bot.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"],
                                name=op.f("fk_billed_costs_subject_id_subjects"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billed_costs")),
        sa.UniqueConstraint("subject_id", "day", "basis",
                            name=op.f("uq_billed_costs_subject_id_day_basis")),
    )
    with op.batch_alter_table("billed_costs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billed_costs_subject_id"), ["subject_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("billed_costs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billed_costs_subject_id"))
    op.drop_table("billed_costs")
    op.drop_table("model_prices")
    with op.batch_alter_table("usage", schema=None) as batch_op:
        batch_op.drop_column("unpriced_requests")
        batch_op.drop_column("unpriced_tokens")
