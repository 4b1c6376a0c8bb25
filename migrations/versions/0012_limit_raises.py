"""temporary limit raises, raise requests and a grace period on limits

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:00:00.000000

`raise_requests` (ask for more on one limit; decided once), `limit_raises` (a limit's
effective amount is its amount plus the raises active now) and `limits.grace_seconds`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bot.models import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("limits") as batch:
        batch.add_column(sa.Column("grace_seconds", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "raise_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("limit_id", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("decided_by", sa.String(length=32), nullable=True),
        sa.Column("decided_at", UTCDateTime(), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("ts", sa.String(length=32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["limit_id"], ["limits.id"], name="fk_raise_requests_limit_id_limits",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_raise_requests"),
    )
    op.create_index("ix_raise_requests_limit_id", "raise_requests", ["limit_id"])
    op.create_table(
        "limit_raises",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("limit_id", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("starts_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("granted_by", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["limit_id"], ["limits.id"], name="fk_limit_raises_limit_id_limits",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["request_id"], ["raise_requests.id"],
                                name="fk_limit_raises_request_id_raise_requests", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_limit_raises"),
    )
    op.create_index("ix_limit_raises_limit_id_expires_at", "limit_raises", ["limit_id", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_limit_raises_limit_id_expires_at", table_name="limit_raises")
    op.drop_table("limit_raises")
    op.drop_index("ix_raise_requests_limit_id", table_name="raise_requests")
    op.drop_table("raise_requests")
    with op.batch_alter_table("limits") as batch:
        batch.drop_column("grace_seconds")
