"""Limits: set, list, remove. One per (subject, metric, window)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.errors import BadInput, NotFound
from bot.models import AlertMark, Limit, Subject
from bot.quantities import Amount, Metric, Window, format_amount
from bot.services import audit, directory, raises
from bot.services.directory import Actor, SubjectRef
from bot.services.raises import RaiseView

CREATE_HINT = ("; subjects are created by `/bedrock provision`, `/bedrock link` or "
               "`/bedrock team <team> add`")
MAX_GRACE = timedelta(hours=24)


@dataclass(frozen=True)
class LimitView:
    id: int
    subject: str
    metric: str
    amount: int
    window: str
    warn: tuple[int, ...]
    action: str
    alarm: bool
    grace_seconds: int = 0
    raises: tuple[RaiseView, ...] = ()  # active now (listed with a time only)

    @property
    def amount_text(self) -> str:
        return format_amount(Amount(self.amount, self.metric == Metric.COST))


def view(limit: Limit, subject_name: str, active: tuple[RaiseView, ...] = ()) -> LimitView:
    return LimitView(limit.id, subject_name, limit.metric, limit.amount, limit.window,
                     tuple(limit.warn), limit.action, limit.alarm, limit.grace_seconds, active)


def set_limit(session: Session, clock: Clock, actor: Actor, ref: SubjectRef, amount: Amount,
              window: Window, metric: Metric, warn: tuple[int, ...], action: str,
              alarm: bool, grace: timedelta = timedelta(0)) -> tuple[LimitView, LimitView | None]:
    """Create or change a limit. Returns (new, previous or None)."""
    directory.authorize(session, actor, "admin", "limit")
    subject = directory.get(session, ref, CREATE_HINT)
    if (metric == Metric.COST) != amount.is_cost:
        raise BadInput("a cost limit needs a $ amount, and a $ amount makes a cost limit")
    if action not in ("revoke", "notify"):
        raise BadInput(f"unknown action {action!r}: use revoke or notify")
    if not timedelta(0) <= grace <= MAX_GRACE:
        raise BadInput("a grace period is at most 24h")
    limit = session.scalar(select(Limit).where(
        Limit.subject_id == subject.id, Limit.metric == metric.value, Limit.window == window.value))
    before = view(limit, subject.name) if limit else None
    now = clock()
    if limit is None:
        limit = Limit(subject_id=subject.id, metric=metric.value, window=window.value,
                      created_by=actor.label, created_at=now, amount=amount.value)
        session.add(limit)
    limit.amount, limit.warn, limit.action, limit.alarm = amount.value, list(warn), action, alarm
    limit.grace_seconds = int(grace.total_seconds())
    limit.updated_at = now
    session.flush()
    if before is not None and before.amount != limit.amount:
        # A changed amount re-arms the warnings of the current window.
        session.execute(delete(AlertMark).where(AlertMark.limit_id == limit.id))
    after = view(limit, subject.name)
    audit.record(session, clock, actor.label, "limit.set", f"{subject.kind}:{subject.name}",
                 {"metric": metric.value, "window": window.value, "amount": limit.amount,
                  "warn": list(warn), "action": action, "alarm": alarm,
                  "grace_seconds": limit.grace_seconds,
                  "before": before.amount if before else None})
    return after, before


def list_limits(session: Session, ref: SubjectRef | None, now: datetime | None = None) -> list[LimitView]:
    """Every limit (or one subject's); with `now`, each carries its active raises."""
    q = select(Limit, Subject.name).join(Subject, Subject.id == Limit.subject_id)
    if ref is not None:
        q = q.where(Limit.subject_id == directory.get(session, ref).id)
    rows = list(session.execute(q.order_by(Subject.name, Limit.window, Limit.metric).limit(500)))
    active: dict[int, list[RaiseView]] = {}
    if now is not None:
        for r in raises.active_on(session, [limit.id for limit, _ in rows], now):
            active.setdefault(r.limit_id, []).append(r)
    return [view(limit, name, tuple(active.get(limit.id, ()))) for limit, name in rows]


def remove_limits(session: Session, clock: Clock, actor: Actor, ref: SubjectRef,
                  window: Window | None, metric: Metric | None) -> list[LimitView]:
    directory.authorize(session, actor, "admin", "unlimit")
    subject = directory.get(session, ref, CREATE_HINT)
    q = select(Limit).where(Limit.subject_id == subject.id)
    if window is not None:
        q = q.where(Limit.window == window.value)
    if metric is not None:
        q = q.where(Limit.metric == metric.value)
    found = list(session.scalars(q))
    if not found:
        raise NotFound(f"{subject.name} has no matching limit")
    removed = [view(limit, subject.name) for limit in found]
    for limit in found:
        session.delete(limit)
    session.flush()
    audit.record(session, clock, actor.label, "limit.remove", f"{subject.kind}:{subject.name}",
                 {"removed": [f"{v.metric}/{v.window}" for v in removed]})
    return removed
