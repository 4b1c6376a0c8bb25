"""per-meter read marks for adaptive CloudWatch polling (AIPs and bedrock-mantle projects)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 13:00:00.000000

`poll_marks`: (kind, key) → the hour the next read starts at and when it was last read
(docs/usage-sync.md). A meter without a mark is read from the sync cursor (AIPs) or backfilled
(mantle projects).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from bot.models import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "poll_marks",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("position", UTCDateTime(), nullable=False),
        sa.Column("read_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name="pk_poll_marks"),
    )


def downgrade() -> None:
    op.drop_table("poll_marks")
