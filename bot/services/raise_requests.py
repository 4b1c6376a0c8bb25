"""Raise requests: ask for more on one limit, and a four-eyes decision on it.

Anyone affected by a limit (the user, or a member of the team) may ask. A decision is a
conditional UPDATE (`… WHERE status = 'pending' AND expires_at > now`), as for restore
requests: of two clicks, two admins or two replicas, exactly one wins. Nobody decides a
request on a limit that covers them (their own, or their team's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.errors import BadInput, Denied, NotFound
from bot.models import Limit, RaiseRequest, Subject
from bot.quantities import Amount, Metric, Window, format_amount
from bot.services import access, audit, directory, raises
from bot.services.directory import Actor, SubjectInfo, SubjectRef
from bot.services.limit_usage import limit_status
from bot.services.raises import RaiseView

DECISIONS = {"approve": "approved", "approve_half": "approved", "deny": "denied"}
MAX_REASON = 500


@dataclass(frozen=True)
class RaiseRequestView:
    id: int
    limit_id: int
    subject: SubjectInfo
    metric: str
    window: str
    limit_amount: int
    amount: int
    duration_seconds: int | None
    requester: str
    reason: str
    status: str
    decision: str | None
    decided_by: str | None
    decided_at: datetime | None
    created_at: datetime
    expires_at: datetime
    channel: str | None
    ts: str | None

    def text(self, value: int) -> str:
        return format_amount(Amount(value, self.metric == Metric.COST))


@dataclass(frozen=True)
class RaiseDecision:
    request: RaiseRequestView
    grant: RaiseView | None  # the raise an approval made
    changed: bool  # False: someone else decided first, or it had expired


def _view(session: Session, r: RaiseRequest) -> RaiseRequestView:
    limit = session.get(Limit, r.limit_id)
    assert limit is not None
    subject = session.get(Subject, limit.subject_id)
    assert subject is not None
    return RaiseRequestView(r.id, limit.id, directory.info(subject), limit.metric, limit.window, limit.amount,
                            r.amount, r.duration_seconds, r.requester, r.reason, r.status, r.decision,
                            r.decided_by, r.decided_at, r.created_at, r.expires_at, r.channel, r.ts)


def _limit_and_subject(session: Session, limit_id: int) -> tuple[Limit, Subject]:
    limit = session.get(Limit, limit_id)
    if limit is None:
        raise NotFound(f"no limit {limit_id} (it may have been removed)")
    subject = session.get(Subject, limit.subject_id)
    assert subject is not None
    return limit, subject


def check_can_ask(session: Session, actor: Actor, limit_id: int) -> RaiseRequestTarget:
    """The people a limit covers may ask for more on it (the button, before its modal)."""
    limit, subject = _limit_and_subject(session, limit_id)
    if actor.slack_user_id not in access.affected_users(session, subject):
        raise Denied(f"only the people {subject.name}'s limit covers can ask for more on it")
    return RaiseRequestTarget(limit.id, subject.name, limit.metric, limit.window,
                              format_amount(Amount(limit.amount, limit.metric == Metric.COST)))


@dataclass(frozen=True)
class RaiseRequestTarget:
    """What the modal says it asks about."""

    limit_id: int
    subject: str
    metric: str
    window: str
    amount_text: str


def own_limit(session: Session, clock: Clock, tz: ZoneInfo, week_start: int, actor: Actor,
              amount: Amount, metric: Metric, window: Window | None) -> int:
    """`/bedrock request more`: the asker's own user limit on the metric; of several
    windows, the one nearest its limit (or the one `window` names)."""
    me = directory.find(session, SubjectRef(slack_user_id=actor.slack_user_id))
    if me is None:
        raise NotFound("you have no limits: nobody has provisioned anything for you yet")
    now = clock()
    candidates = session.scalars(select(Limit).where(Limit.subject_id == me.id, Limit.metric == metric.value))
    pct = {lim.id: limit_status(session, lim, me, now, tz, week_start).percent for lim in candidates}
    return raises.find_limit(session, me, metric, window, pct).id


def create(session: Session, clock: Clock, actor: Actor, limit_id: int, amount: Amount,
           duration: timedelta | None, reason: str, ttl: timedelta) -> tuple[RaiseRequestView, bool]:
    """File a request; (view, created). The asker's open request on the same limit is reused."""
    reason = reason.strip()
    if not reason:
        raise BadInput("say why you need more (a short reason)")
    check_can_ask(session, actor, limit_id)
    limit, subject = _limit_and_subject(session, limit_id)
    if amount.is_cost != (limit.metric == Metric.COST):
        raise BadInput(f"{subject.name}'s {limit.metric}/{limit.window} limit is "
                       + ("in dollars: ask for a $ amount" if limit.metric == Metric.COST
                          else "not in dollars: ask for tokens or requests, like 1M"))
    now = clock()
    open_ = session.scalar(select(RaiseRequest).where(
        RaiseRequest.limit_id == limit.id, RaiseRequest.requester == actor.slack_user_id,
        RaiseRequest.status == "pending", RaiseRequest.expires_at > now))
    if open_ is not None:
        return _view(session, open_), False
    req = RaiseRequest(limit_id=limit.id, requester=actor.slack_user_id or actor.label, amount=amount.value,
                       duration_seconds=int(duration.total_seconds()) if duration else None,
                       reason=reason[:MAX_REASON], status="pending", created_at=now, expires_at=now + ttl)
    session.add(req)
    session.flush()
    audit.record(session, clock, actor.label, "raise_request.create", f"{subject.kind}:{subject.name}",
                 {"request": req.id, "limit": limit.id, "amount": req.amount,
                  "duration_seconds": req.duration_seconds, "reason": req.reason})
    return _view(session, req), True


def record_message(session: Session, request_id: int, channel: str, ts: str) -> None:
    session.execute(update(RaiseRequest).where(RaiseRequest.id == request_id).values(channel=channel, ts=ts))


def subject_of(session: Session, request_id: int) -> int:
    subject_id = session.scalar(select(Limit.subject_id).join(
        RaiseRequest, RaiseRequest.limit_id == Limit.id).where(RaiseRequest.id == request_id))
    if subject_id is None:
        raise NotFound(f"no raise request {request_id}")
    return int(subject_id)


def check_decider(session: Session, actor: Actor, request_id: int) -> RaiseRequestView:
    directory.authorize(session, actor, "approver", "approve or deny raise requests")
    req = session.get(RaiseRequest, request_id)
    if req is None:
        raise NotFound(f"no raise request {request_id}")
    if actor.slack_user_id == req.requester:
        raise Denied("four eyes: you cannot decide your own request; another admin has to")
    _, subject = _limit_and_subject(session, req.limit_id)
    raises.check_four_eyes(session, actor, subject, "decide a raise")
    return _view(session, req)


def granted_amount(requested: int, decision: str) -> int:
    """Approve half: half the amount asked for, rounded up (never nothing)."""
    return (requested + 1) // 2 if decision == "approve_half" else requested


def decide(session: Session, clock: Clock, tz: ZoneInfo, week_start: int, actor: Actor,
           request_id: int, decision: str) -> RaiseDecision:
    """Decide once: the conditional UPDATE lets exactly one click win; an approval grants
    the raise in the same transaction."""
    if decision not in DECISIONS:
        raise BadInput(f"unknown decision {decision!r}")
    check_decider(session, actor, request_id)
    req = session.get(RaiseRequest, request_id)
    assert req is not None
    now = clock()
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        update(RaiseRequest)
        .where(RaiseRequest.id == request_id, RaiseRequest.status == "pending", RaiseRequest.expires_at > now)
        .values(status=DECISIONS[decision], decision=decision, decided_by=actor.slack_user_id, decided_at=now)
        .execution_options(synchronize_session=False))
    session.refresh(req)
    if result.rowcount != 1:
        return RaiseDecision(_view(session, req), None, changed=False)
    grant = None
    if decision != "deny":
        limit, _ = _limit_and_subject(session, req.limit_id)
        until = (now + timedelta(seconds=req.duration_seconds) if req.duration_seconds
                 else raises.default_end(limit, now, tz, week_start))
        grant = raises.grant(session, clock, actor, limit, granted_amount(req.amount, decision), until,
                             req.reason, request_id=req.id)
    audit.record(session, clock, actor.label, f"raise_request.{decision}", f"raise_request:{req.id}",
                 {"limit": req.limit_id, "requester": req.requester, "asked": req.amount,
                  "granted": grant.amount if grant else 0})
    return RaiseDecision(_view(session, req), grant, changed=True)


def expire(session: Session, clock: Clock) -> list[RaiseRequestView]:
    now = clock()
    due = list(session.scalars(select(RaiseRequest).where(
        RaiseRequest.status == "pending", RaiseRequest.expires_at <= now).order_by(RaiseRequest.id)))
    for req in due:
        req.status = "expired"
        audit.record(session, clock, "system:expire_requests", "raise_request.expire",
                     f"raise_request:{req.id}", {"requester": req.requester})
    session.flush()
    return [_view(session, r) for r in due]


def pending_by(session: Session, requester: str) -> list[RaiseRequestView]:
    q = (select(RaiseRequest).where(RaiseRequest.requester == requester, RaiseRequest.status == "pending")
         .order_by(RaiseRequest.id))
    return [_view(session, r) for r in session.scalars(q)]
