"""Storage of the offline AIP registry (`BOT_PROFILES_BACKEND=local`, the demo).

It is a stand-in for Bedrock, not bot data, so it is no part of the production schema:
its table has its own metadata (not `bot.models.Base`), no Alembic migration creates it,
and the drift check does not see it. `LocalProfiles` creates it on first use in the bot's
own database, so the demo and offline installs need no extra file or setting.
(Migration 0004 took it out of the production schema; the shape is unchanged.)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, MetaData, String, Text, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from bot.models import NAMING, UTCDateTime

TABLE = "local_inference_profiles"


class RegistryBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class LocalInferenceProfile(RegistryBase):
    """One AIP of the local registry: same ids and ARN shapes as Bedrock's."""

    __tablename__ = TABLE
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    model_source: Mapped[str] = mapped_column(String(2048))
    models: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"arns": [...]}
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    client_request_token: Mapped[str | None] = mapped_column(String(256), unique=True)
    created_at: Mapped[datetime]


def ensure_table(session: Session) -> None:
    """Create the registry's table if missing, inside the session's transaction.

    Checked on every call rather than remembered: a creation inside a caller's transaction
    that later rolls back would leave a remembered answer wrong. Two processes creating it
    at once (PostgreSQL): the loser's savepoint rolls back and it finds the winner's table.
    """
    if inspect(session.connection()).has_table(TABLE):
        return
    try:
        with session.begin_nested():
            RegistryBase.metadata.create_all(session.connection(), checkfirst=False)
    except DBAPIError:
        if not inspect(session.connection()).has_table(TABLE):
            raise
