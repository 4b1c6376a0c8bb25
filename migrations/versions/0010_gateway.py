"""gateway quota API: counters, reservations, request ids

Revision ID: 0010
Revises: 0009

(Built as 0007 on issue-18; renumbered 0010 at integration, after issue-17's 0009.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bot.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _subject_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"], ondelete="CASCADE",
                                   name=op.f(f"fk_{table}_subject_id_subjects"))


def upgrade() -> None:
    op.create_table(
        "gateway_counters",
        sa.Column("subject_id", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in (
            "reserved_tokens", "reserved_requests", "reserved_cost", "settled_input",
            "settled_output", "settled_requests", "settled_cost")),
        _subject_fk("gateway_counters"),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_gateway_counters")),
    )
    op.create_table(
        "gateway_reservations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("owners", sa.JSON(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=8), nullable=False),
        sa.Column("created_at", bot.models.UTCDateTime(), nullable=False),
        sa.Column("expires_at", bot.models.UTCDateTime(), nullable=False),
        _subject_fk("gateway_reservations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gateway_reservations")),
    )
    op.create_index("ix_gateway_reservations_state_expires_at", "gateway_reservations",
                    ["state", "expires_at"], unique=False)
    op.create_table(
        "gateway_requests",
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("reservation_id", sa.String(length=32), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "cost_micro_usd")),
        sa.Column("counted_by", sa.String(length=8), nullable=False),
        sa.Column("received_at", bot.models.UTCDateTime(), nullable=False),
        _subject_fk("gateway_requests"),
        sa.PrimaryKeyConstraint("request_id", name=op.f("pk_gateway_requests")),
    )
    op.create_index(op.f("ix_gateway_requests_received_at"), "gateway_requests", ["received_at"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_gateway_requests_received_at"), table_name="gateway_requests")
    op.drop_table("gateway_requests")
    op.drop_index("ix_gateway_reservations_state_expires_at", table_name="gateway_reservations")
    op.drop_table("gateway_reservations")
    op.drop_table("gateway_counters")
