"""usage stream: per-shard checkpoints and seen log event ids

Revision ID: 0008
Revises: 0004 (to be re-chained onto main's 0005–0007 by the lead)
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bot.models

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_checkpoints",
        sa.Column("stream", sa.String(length=128), nullable=False),
        sa.Column("shard_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.String(length=128), nullable=True),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("updated_at", bot.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("stream", "shard_id", name=op.f("pk_stream_checkpoints")),
    )
    op.create_table(
        "stream_events",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("seen_at", bot.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_stream_events")),
    )
    with op.batch_alter_table("stream_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_events_seen_at"), ["seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_events_seen_at"))
    op.drop_table("stream_events")
    op.drop_table("stream_checkpoints")
