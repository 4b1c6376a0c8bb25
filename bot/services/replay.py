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
from functools import cache

from sqlalchemy import Connection, TextClause, bindparam, delete, text
from sqlalchemy.orm import Session

from bot.models import SlackSignature


def digest(signature: str) -> str:
    """The key stored for a signature header (fixed length whatever the header holds)."""
    return hashlib.sha256(signature.encode("utf-8", "surrogateescape")).hexdigest()


MAX_ROWS = 64  # rows per claim statement (the group commit's batch)


@cache
def _claim_sql(rows: int) -> TextClause:
    """The claim of `rows` signatures as one statement, the same text on SQLite and PostgreSQL.
    Text, not `insert(...).on_conflict_do_nothing()`: SQLAlchemy 2.0 cannot cache a dialect insert
    with ON CONFLICT (its cache key is None, "[no key]" in the echo log), so that one was compiled
    anew for every ack, half of an ack's CPU in serve (issue 19). A text clause with typed binds is
    cached like any statement, and `expires_at` goes through the column's own type."""
    values = ", ".join(f"(:d{i}, :e{i})" for i in range(rows))
    when = SlackSignature.__table__.c.expires_at.type
    return text(f"INSERT INTO {SlackSignature.__tablename__} (digest, expires_at) VALUES {values} "
                "ON CONFLICT DO NOTHING RETURNING digest").bindparams(
        *(bindparam(f"e{i}", type_=when) for i in range(rows)))


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
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT.
    new: set[str] = set()
    items = list(rows.items())
    for start in range(0, len(items), MAX_ROWS):
        chunk = items[start:start + MAX_ROWS]
        params = {f"{p}{i}": v for i, kv in enumerate(chunk) for p, v in zip("de", kv, strict=True)}
        new.update(str(row[0]) for row in conn.execute(_claim_sql(len(chunk)), params))
    answers = []
    for key in keys:
        answers.append(key in new)
        new.discard(key)
    return answers


def purge(conn: Connection | Session, now: datetime) -> int:
    """Delete the signatures that can no longer verify; how many went."""
    result = conn.execute(delete(SlackSignature).where(SlackSignature.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)
