"""The Slack replay cache: a verified request signature is accepted once.

A Slack signature covers the body and the request timestamp, and verifies for 5 minutes
either side of that timestamp; inside that window a captured request can be sent again
unchanged. `claim` records the signature with `INSERT … ON CONFLICT DO NOTHING` (the
primary key decides, so two replicas racing with the same request cannot both win) and says
whether this was its first use. A row is useless once its signature can no longer verify
(`expires_at`), and `purge` deletes those.

Only signatures that already verified are claimed: unsigned junk never writes a row. Both run
on a plain Connection (the quick engine in `handlers/slack_gate.py`: one autocommit statement on
PostgreSQL), since the ack waits for the claim.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from sqlalchemy import Connection, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.models import SlackSignature


def digest(signature: str) -> str:
    """The key stored for a signature header (fixed length whatever the header holds)."""
    return hashlib.sha256(signature.encode("utf-8", "surrogateescape")).hexdigest()


def claim(conn: Connection | Session, signature: str, expires_at: datetime) -> bool:
    """Record `signature` until `expires_at`; False when it was already recorded (a replay)."""
    dialect = conn.dialect if isinstance(conn, Connection) else conn.get_bind().dialect
    insert = pg_insert if dialect.name == "postgresql" else sqlite_insert
    stmt = insert(SlackSignature).values(digest=digest(signature), expires_at=expires_at)
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT.
    returning = stmt.on_conflict_do_nothing().returning(SlackSignature.digest)
    return conn.execute(returning).first() is not None


def purge(conn: Connection | Session, now: datetime) -> int:
    """Delete the signatures that can no longer verify; how many went."""
    result = conn.execute(delete(SlackSignature).where(SlackSignature.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
