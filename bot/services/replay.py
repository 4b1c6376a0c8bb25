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
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.models import SlackSignature


def digest(signature: str) -> str:
    """The key stored for a signature header (fixed length whatever the header holds)."""
    return hashlib.sha256(signature.encode("utf-8", "surrogateescape")).hexdigest()


# Built once: an insert with its values inlined was compiled anew for every claim (about 1 ms
# of the ack's CPU). Executed with a list of rows, one statement for the lot (SQLAlchemy's
# "insertmanyvalues"), RETURNING the digests that were new.
_CLAIM = {name: insert(SlackSignature).on_conflict_do_nothing().returning(SlackSignature.digest)
          for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))}


def claim(conn: Connection | Session, signature: str, expires_at: datetime) -> bool:
    """Record `signature` until `expires_at`; False when it was already recorded (a replay)."""
    return claim_many(conn, [(signature, expires_at)])[0]


def claim_many(conn: Connection | Session, claims: Sequence[tuple[str, datetime]]) -> list[bool]:
    """`claim` for several signatures in one statement, one answer each in order; a signature
    given twice is first only the first time."""
    keys = [digest(signature) for signature, _ in claims]
    rows: dict[str, datetime] = {}
    for key, (_, expires_at) in zip(keys, claims, strict=True):
        rows.setdefault(key, expires_at)
    dialect = conn.dialect if isinstance(conn, Connection) else conn.get_bind().dialect
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT.
    result = conn.execute(_CLAIM[dialect.name], [{"digest": k, "expires_at": e} for k, e in rows.items()])
    new = {str(row[0]) for row in result}
    answers = []
    for key in keys:
        answers.append(key in new)
        new.discard(key)
    return answers


def purge(conn: Connection | Session, now: datetime) -> int:
    """Delete the signatures that can no longer verify; how many went."""
    result = conn.execute(delete(SlackSignature).where(SlackSignature.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
