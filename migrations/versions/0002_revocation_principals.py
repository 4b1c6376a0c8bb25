"""revocation principals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 01:18:11.275040
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("revocations", schema=None) as batch_op:
        # existing rows get an empty list
        batch_op.add_column(sa.Column("principals", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("revocations", schema=None) as batch_op:
        batch_op.drop_column("principals")
