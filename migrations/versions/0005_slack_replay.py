"""slack replay cache

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:00:00.000000

`slack_signatures` remembers each verified Slack request signature until it could no longer
verify (its timestamp + 5 minutes), so a captured request sent again is refused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bot.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slack_signatures",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires_at", bot.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_slack_signatures")),
    )
    op.create_index(op.f("ix_slack_signatures_expires_at"), "slack_signatures", ["expires_at"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_slack_signatures_expires_at"), table_name="slack_signatures")
    op.drop_table("slack_signatures")
