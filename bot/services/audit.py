"""The tamper-evident audit log: an append-only hash chain in `audit_events`.

hash = SHA-256(prev_hash + canonical JSON of the row). Ids are assigned as previous id + 1
while holding a lock, so the chain never forks and a deleted row leaves a visible gap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.models import AuditEvent

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "error")
_PG_LOCK_KEY = 0x62656472  # "bedr": serialises appends across replicas


def canonical(row_id: int, at: datetime, actor: str, action: str, target: str,
              details: str, outcome: str) -> str:
    body = {"id": row_id, "at": at.isoformat(timespec="microseconds"), "actor": actor,
            "action": action, "target": target, "details": details, "outcome": outcome}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, canonical_json: str) -> str:
    return hashlib.sha256((prev_hash + canonical_json).encode()).hexdigest()


def _details_json(details: dict[str, Any] | None) -> str:
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)


def record(session: Session, clock: Clock, actor: str, action: str, target: str,
           details: dict[str, Any] | None = None, outcome: str = "ok") -> AuditEvent:
    """Append one event in the caller's transaction (it commits or rolls back with it)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    head = session.execute(
        select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    row_id, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
    at = clock()
    det = _details_json(details)
    digest = chain_hash(prev, canonical(row_id, at, actor, action, target[:512], det, outcome))
    event = AuditEvent(id=row_id, at=at, actor=actor[:160], action=action[:64], target=target[:512],
                       details=det, outcome=outcome, prev_hash=prev, hash=digest)
    session.add(event)
    session.flush()
    return event


def seen_since(session: Session, action: str, target: str, details: dict[str, Any] | None,
               outcome: str, since: datetime) -> bool:
    """Whether the same event (action, target, details, outcome) was recorded at or after `since`."""
    return session.execute(select(AuditEvent.id).where(
        AuditEvent.action == action, AuditEvent.target == target[:512], AuditEvent.outcome == outcome,
        AuditEvent.details == _details_json(details), AuditEvent.at >= since).limit(1)).first() is not None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    broken_id: int | None = None
    reason: str = ""


def verify(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in id order; name the first row that does not fit."""
    prev_hash, prev_id, count = GENESIS, 0, 0
    rows = session.execute(select(AuditEvent).order_by(AuditEvent.id).execution_options(
        yield_per=batch)).scalars()
    for ev in rows:
        count += 1
        if ev.id != prev_id + 1:
            return VerifyResult(False, count, ev.id,
                                f"row {ev.id}: rows {prev_id + 1}..{ev.id - 1} are missing")
        if ev.prev_hash != prev_hash:
            return VerifyResult(False, count, ev.id,
                                f"row {ev.id}: prev_hash does not match row {prev_id}")
        expect = chain_hash(prev_hash, canonical(ev.id, ev.at, ev.actor, ev.action, ev.target,
                                                 ev.details, ev.outcome))
        if ev.hash != expect:
            return VerifyResult(False, count, ev.id, f"row {ev.id}: contents do not match its hash")
        prev_hash, prev_id = ev.hash, ev.id
    return VerifyResult(True, count)


@dataclass(frozen=True)
class AuditLine:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]


def recent(session: Session, target: str | None = None, limit: int = 20) -> list[AuditLine]:
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 100)))
    if target:
        q = q.where(AuditEvent.target == target)
    return [AuditLine(e.id, e.at, e.actor, e.action, e.target, e.outcome, json.loads(e.details))
            for e in session.execute(q).scalars()]
