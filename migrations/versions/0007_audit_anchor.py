"""audit anchor: the hash algorithm of each audit row

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00.000000

`audit_events.alg` says how a row's hash was made: `sha256` (every row written so far, and
every row written without BOT_AUDIT_KEY) or `hmac-sha256:<key id>` (signed with the key).
Existing rows keep their hashes; they become `sha256` through the server default.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alg", sa.String(length=32), nullable=False,
                                      server_default="sha256"))


def downgrade() -> None:
    # Keyed rows cannot be verified without `alg`: a downgrade keeps them, but `audit verify`
    # on the older code will report the first keyed row as not matching its hash.
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("alg")
