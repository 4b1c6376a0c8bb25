"""one active revocation per cause

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:45:00.000000

A subject holds at most one active manual revocation, and a limit at most one active
revocation (whether enforce, its alarm or its budget made it): two partial unique indexes.
Duplicates left by the old check-then-insert race are closed first (the oldest stays).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MANUAL = "state = 'active' AND reason = 'manual'"
LIMIT = "state = 'active' AND limit_id IS NOT NULL"


def upgrade() -> None:
    # restored_at = revoked_at: a value of the column's own stored form on both databases
    op.execute(f"""
        UPDATE revocations SET state = 'restored', restored_by = 'system:migration-0006',
               restored_at = revoked_at
        WHERE {MANUAL} AND id NOT IN (
            SELECT keep FROM (SELECT MIN(id) AS keep FROM revocations WHERE {MANUAL}
                              GROUP BY subject_id) AS k)""")
    op.execute(f"""
        UPDATE revocations SET state = 'restored', restored_by = 'system:migration-0006',
               restored_at = revoked_at
        WHERE {LIMIT} AND id NOT IN (
            SELECT keep FROM (SELECT MIN(id) AS keep FROM revocations WHERE {LIMIT}
                              GROUP BY limit_id) AS k)""")
    op.create_index("uq_revocations_active_manual", "revocations", ["subject_id"], unique=True,
                    sqlite_where=sa.text(MANUAL), postgresql_where=sa.text(MANUAL))
    op.create_index("uq_revocations_active_limit", "revocations", ["limit_id"], unique=True,
                    sqlite_where=sa.text(LIMIT), postgresql_where=sa.text(LIMIT))


def downgrade() -> None:
    op.drop_index("uq_revocations_active_limit", table_name="revocations")
    op.drop_index("uq_revocations_active_manual", table_name="revocations")
