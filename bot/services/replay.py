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

from sqlalchemy import Connection, String, bindparam, delete, text
from sqlalchemy.orm import Session

from bot.models import SlackSignature, UTCDateTime


def digest(signature: str) -> str:
    """The key stored for a signature header (fixed length whatever the header holds)."""
    return hashlib.sha256(signature.encode("utf-8", "surrogateescape")).hexdigest()


# Text compiled once: the ORM's INSERT … ON CONFLICT … RETURNING was compiled anew for every
# claim (about 1 ms of the ack's CPU). SQLite (3.35+) and PostgreSQL take the same SQL.
_CLAIM = text("INSERT INTO slack_signatures (digest, expires_at) VALUES (:digest, :expires_at) "
              "ON CONFLICT DO NOTHING RETURNING digest").bindparams(
    bindparam("digest", type_=String()), bindparam("expires_at", type_=UTCDateTime()))


def claim(conn: Connection | Session, signature: str, expires_at: datetime) -> bool:
    """Record `signature` until `expires_at`; False when it was already recorded (a replay)."""
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT.
    found = conn.execute(_CLAIM, {"digest": digest(signature), "expires_at": expires_at})
    return found.first() is not None


def purge(conn: Connection | Session, now: datetime) -> int:
    """Delete the signatures that can no longer verify; how many went."""
    result = conn.execute(delete(SlackSignature).where(SlackSignature.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
