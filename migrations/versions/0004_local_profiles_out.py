"""local AIP registry out of the production schema

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00.000000

The offline AIP registry (`BOT_PROFILES_BACKEND=local`) now creates its own table on first
use (bot/aws/local_registry.py), with the same name and shape. An empty table is dropped;
one that holds profiles is left where it is for that registry to keep using, because
dropping it would lose AIPs that `profiles` rows still point at.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import bot.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLE = "local_inference_profiles"


def _exists() -> bool:
    return sa.inspect(op.get_bind()).has_table(TABLE)


def upgrade() -> None:
    if not _exists():
        return
    rows = op.get_bind().execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar_one()
    if rows == 0:
        op.drop_table(TABLE)


def downgrade() -> None:
    if _exists():  # kept by upgrade, or made by the local registry: the same shape as 0001's
        return
    op.create_table(
        TABLE,
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("arn", sa.String(length=2048), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("model_source", sa.String(length=2048), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("client_request_token", sa.String(length=256), nullable=True),
        sa.Column("created_at", bot.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_local_inference_profiles")),
        sa.UniqueConstraint("arn", name=op.f("uq_local_inference_profiles_arn")),
        sa.UniqueConstraint(
            "client_request_token", name=op.f("uq_local_inference_profiles_client_request_token")
        ),
        sa.UniqueConstraint("name", name=op.f("uq_local_inference_profiles_name")),
    )
