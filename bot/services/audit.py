"""The tamper-evident audit log: an append-only hash chain in `audit_events`.

hash = SHA-256(prev_hash + canonical JSON of the row). Ids are assigned as previous id + 1
while holding a lock, so the chain never forks and a deleted row leaves a visible gap.

`record()` only queues the event on the session; the queued events of a transaction are
chained and inserted together right before it commits (a `before_commit` hook). The chain
lock (an advisory lock on PostgreSQL) is therefore taken once, at the end, and held for a
few milliseconds — never across the AWS calls a flow makes — and a transaction that rolls
back leaves no audit row and never took the lock.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, select, text
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


@dataclass(frozen=True)
class Pending:
    at: datetime
    actor: str
    action: str
    target: str
    details: str
    outcome: str


_PENDING = "audit_pending"


def record(session: Session, clock: Clock, actor: str, action: str, target: str,
           details: dict[str, Any] | None = None, outcome: str = "ok") -> None:
    """Queue one event in the caller's transaction: it is written when that transaction
    commits and vanishes with it when it rolls back."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    queue: list[Pending] = session.info.setdefault(_PENDING, [])
    queue.append(Pending(clock(), actor[:160], action[:64], target[:512], _details_json(details),
                         outcome))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    queue: list[Pending] = session.info.pop(_PENDING, [])
    if queue:
        _append(session, queue)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _append(session: Session, queue: list[Pending]) -> None:
    """Chain the queued events onto the head, under the lock, in one flush."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    head = session.execute(
        select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    ).first()
    row_id, prev = (head[0], head[1]) if head else (0, GENESIS)
    for p in queue:
        row_id += 1
        digest = chain_hash(prev, canonical(row_id, p.at, p.actor, p.action, p.target, p.details,
                                            p.outcome))
        session.add(AuditEvent(id=row_id, at=p.at, actor=p.actor, action=p.action, target=p.target,
                               details=p.details, outcome=p.outcome, prev_hash=prev, hash=digest))
        prev = digest
    session.flush()


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
