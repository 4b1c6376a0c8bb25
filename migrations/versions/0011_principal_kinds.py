"""principal kinds and what a revocation put in place

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 10:00:00.000000

`principals.kind` (user | apikey | role | session | sso) decides how a principal is blocked;
existing rows are classified from their ARN (only IAM users and roles could be linked
before, so: a role, an API-key user `BedrockAPIKey_*`, or a user). `revocations.enforcement`
records per principal the method used, whether it blocked, and the API keys deactivated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=8), nullable=False, server_default="user"))
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE principals SET kind = 'role' WHERE arn LIKE :p"), {"p": "%:role/%"})
    bind.execute(sa.text("UPDATE principals SET kind = 'apikey' WHERE arn LIKE :p ESCAPE '!'"),
                 {"p": "%:user/%BedrockAPIKey!_%"})
    with op.batch_alter_table("revocations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enforcement", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("revocations", schema=None) as batch_op:
        batch_op.drop_column("enforcement")
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_column("kind")
