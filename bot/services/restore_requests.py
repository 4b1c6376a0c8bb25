"""Restore requests: ask for access back, and a four-eyes decision on it.

A decision is a conditional UPDATE (`… WHERE status = 'pending' AND expires_at > now`):
of two clicks, two admins or two replicas, exactly one wins and the rest do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.errors import BadInput, Denied, NotFound
from bot.models import RestoreRequest, Revocation, Subject
from bot.services import access, audit, directory
from bot.services.access import Lift
from bot.services.directory import Actor, SubjectInfo, SubjectRef

DECISIONS = {"approve": "approved", "approve_24h": "approved", "deny": "denied"}
EXCEPTION_HOURS = 24
MAX_REASON = 500


@dataclass(frozen=True)
class RequestView:
    id: int
    revocation_id: int
    subject: SubjectInfo
    revocation_reason: str
    requester: str
    reason: str
    status: str
    decided_by: str | None
    decided_at: datetime | None
    decision: str | None
    decision_note: str
    created_at: datetime
    expires_at: datetime
    channel: str | None
    ts: str | None


@dataclass(frozen=True)
class Decision:
    request: RequestView
    lifts: list[Lift]  # revocations marked restored; their denies come off after the commit
    changed: bool  # False: someone else decided first, or it had expired


def _view(session: Session, r: RestoreRequest, decision: str | None = None) -> RequestView:
    rev = session.get(Revocation, r.revocation_id)
    assert rev is not None
    subject = session.get(Subject, rev.subject_id)
    assert subject is not None
    return RequestView(r.id, rev.id, directory.info(subject), rev.reason, r.requester, r.reason,
                       r.status, r.decided_by, r.decided_at, decision, r.decision_note, r.created_at,
                       r.expires_at, r.channel, r.ts)


def get(session: Session, request_id: int) -> RequestView:
    r = session.get(RestoreRequest, request_id)
    if r is None:
        raise NotFound(f"no restore request {request_id}")
    return _view(session, r)


def _may_ask(session: Session, actor: Actor, subject: Subject) -> bool:
    """The affected people may ask: the revoked user, or a member of the revoked team."""
    return actor.slack_user_id in access.affected_users(session, subject)


def check_can_ask(session: Session, actor: Actor, revocation_id: int) -> str:
    """Before opening the modal: may this person ask? Returns the subject's name."""
    rev = session.get(Revocation, revocation_id)
    if rev is None:
        raise NotFound(f"no revocation {revocation_id}")
    subject = session.get(Subject, rev.subject_id)
    assert subject is not None
    if not _may_ask(session, actor, subject):
        raise Denied(f"only the people affected by {subject.name}'s revocation can ask for it back")
    if rev.state != "active":
        raise BadInput(f"{subject.name}'s access is not revoked any more")
    return subject.name


def subject_of(session: Session, request_id: int) -> int:
    """The subject a request is about (its access changes are serialised on it)."""
    subject_id = session.scalar(select(Revocation.subject_id).join(
        RestoreRequest, RestoreRequest.revocation_id == Revocation.id).where(RestoreRequest.id == request_id))
    if subject_id is None:
        raise NotFound(f"no restore request {request_id}")
    return int(subject_id)


def check_decider(session: Session, actor: Actor, request_id: int) -> RequestView:
    """Before the deny modal: the same checks a decision makes, so refusals come at once.
    Four eyes: nobody decides their own request, nor one that gives them their own access
    back (they are the revoked user, or a member of the revoked team)."""
    directory.authorize(session, actor, "approver", "approve or deny restore requests")
    req = session.get(RestoreRequest, request_id)
    if req is None:
        raise NotFound(f"no restore request {request_id}")
    if actor.slack_user_id == req.requester:
        raise Denied("four eyes: you cannot decide your own request; another admin has to")
    rev = session.get(Revocation, req.revocation_id)
    subject = session.get(Subject, rev.subject_id) if rev is not None else None
    if subject is not None and _may_ask(session, actor, subject):
        raise Denied(f"four eyes: request {req.id} would restore your own access "
                     f"({subject.name}); another admin has to decide it")
    return _view(session, req)


def restores_own_access(session: Session, actor: Actor, ref: SubjectRef) -> bool:
    """Is `actor` among the people a restore of `ref` gives access back to?"""
    return actor.slack_user_id is not None and _may_ask(session, actor, directory.get(session, ref))


def create(session: Session, clock: Clock, actor: Actor, revocation_id: int, reason: str,
           ttl: timedelta) -> tuple[RequestView, bool]:
    """File a request; (view, created). An open request for the same revocation is reused."""
    reason = reason.strip()
    if not reason:
        raise BadInput("say why you need access back (a short reason)")
    check_can_ask(session, actor, revocation_id)
    rev = session.get(Revocation, revocation_id)
    assert rev is not None
    subject = session.get(Subject, rev.subject_id)
    assert subject is not None
    now = clock()
    open_ = session.scalar(select(RestoreRequest).where(
        RestoreRequest.revocation_id == rev.id, RestoreRequest.status == "pending",
        RestoreRequest.expires_at > now))
    if open_ is not None:
        return _view(session, open_), False
    req = RestoreRequest(revocation_id=rev.id, requester=actor.slack_user_id or actor.label,
                         reason=reason[:MAX_REASON], status="pending", created_at=now,
                         expires_at=now + ttl)
    session.add(req)
    session.flush()
    audit.record(session, clock, actor.label, "request.create", f"{subject.kind}:{subject.name}",
                 {"request": req.id, "revocation": rev.id, "reason": req.reason})
    return _view(session, req), True


def create_for_subject(session: Session, clock: Clock, actor: Actor, ref: SubjectRef, reason: str,
                       ttl: timedelta) -> tuple[RequestView, bool]:
    """`/bedrock restore <self> <reason>` by a non-admin: the newest active revocation."""
    subject = directory.get(session, ref)
    revs = access.active(session, subject.id)
    if not revs:
        raise BadInput(f"{subject.name} is not revoked")
    return create(session, clock, actor, revs[-1].id, reason, ttl)


def record_message(session: Session, request_id: int, channel: str, ts: str) -> None:
    session.execute(update(RestoreRequest).where(RestoreRequest.id == request_id)
                    .values(channel=channel, ts=ts))


def decide(session: Session, clock: Clock, actor: Actor, request_id: int, decision: str,
           note: str = "", dry_run: bool = False) -> Decision:
    """Decide once: the conditional UPDATE lets exactly one click win. An approval marks the
    revocation restored here; the flow deletes the deny after this commits."""
    if decision not in DECISIONS:
        raise BadInput(f"unknown decision {decision!r}")
    check_decider(session, actor, request_id)
    req = session.get(RestoreRequest, request_id)
    assert req is not None
    now = clock()
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(RestoreRequest)
        .where(RestoreRequest.id == request_id, RestoreRequest.status == "pending",
               RestoreRequest.expires_at > now)
        .values(status=DECISIONS[decision], decided_by=actor.slack_user_id, decided_at=now,
                decision_note=note.strip()[:MAX_REASON])
        .execution_options(synchronize_session=False))
    session.refresh(req)
    if result.rowcount != 1:
        return _unchanged(session, clock, actor, req, decision)
    lifts = _apply(session, clock, actor, req, decision, dry_run) if decision != "deny" else []
    audit.record(session, clock, actor.label, f"request.{decision}", f"request:{req.id}",
                 {"revocation": req.revocation_id, "requester": req.requester, "note": req.decision_note,
                  "restored": [x.view.id for x in lifts]})
    return Decision(_view(session, req, decision), lifts, changed=True)


def _unchanged(session: Session, clock: Clock, actor: Actor, req: RestoreRequest,
               decision: str) -> Decision:
    """Another click won, or the request is closed: say what it really is (a pending request
    past its time is expired even before the sweep marks it) and audit the no-op."""
    view = _view(session, req)
    if view.status == "pending" and view.expires_at <= clock():
        view = replace(view, status="expired", decided_by=None)
    audit.record(session, clock, actor.label, f"request.{decision}", f"request:{req.id}",
                 {"reason": nothing_to_do(view), "status": view.status}, outcome="denied")
    return Decision(view, [], changed=False)


def nothing_to_do(r: RequestView) -> str:
    """Why a decision changed nothing, for the clicker and the audit log."""
    if r.status == "expired":
        return f"Nothing to do: request {r.id} has expired; the requester can ask again."
    by = f" by <@{r.decided_by}>" if r.decided_by else ""
    return f"Nothing to do: request {r.id} is already {r.status}{by}."


def _apply(session: Session, clock: Clock, actor: Actor, req: RestoreRequest, decision: str,
           dry_run: bool) -> list[Lift]:
    rev = session.get(Revocation, req.revocation_id)
    assert rev is not None
    if rev.state != "active":
        return []
    until = clock() + timedelta(hours=EXCEPTION_HOURS) if decision == "approve_24h" else None
    access.hold_off(session, clock, actor, rev, until=until, request_id=req.id)
    return [access.mark_lifted(session, clock, actor, rev, f"request {req.id} approved", dry_run)]


def expire(session: Session, clock: Clock) -> list[RequestView]:
    now = clock()
    due = list(session.scalars(select(RestoreRequest).where(
        RestoreRequest.status == "pending", RestoreRequest.expires_at <= now)))
    for req in due:
        req.status = "expired"
        audit.record(session, clock, "system:expire_requests", "request.expire", f"request:{req.id}",
                     {"requester": req.requester})
    session.flush()
    return [_view(session, r) for r in due]


def pending_for(session: Session, subject_ids: list[int]) -> list[RequestView]:
    q = (select(RestoreRequest).join(Revocation, Revocation.id == RestoreRequest.revocation_id)
         .where(Revocation.subject_id.in_(subject_ids), RestoreRequest.status == "pending")
         .order_by(RestoreRequest.id))
    return [_view(session, r) for r in session.scalars(q)]
