"""Temporary raises: a limit's effective amount is its amount plus the raises active now.

A raise is granted by an admin (`/bedrock limit alice +1M/day for 24h <reason>`) or by an
approved raise request; it ends by itself at `expires_at`, and the next enforcement run
judges usage against the plain limit again. Several windows on one subject each keep their
own raises: a raise belongs to one limit row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, delete, func, select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.errors import BadInput, Denied, NotFound
from bot.models import AlertMark, Limit, LimitRaise, Subject
from bot.quantities import Amount, Metric, Window, format_amount, window_bounds
from bot.services import access, audit, directory
from bot.services.directory import Actor, SubjectRef

MAX_REASON = 500
MAX_DURATION = timedelta(days=31)


@dataclass(frozen=True)
class RaiseView:
    id: int
    limit_id: int
    subject: str
    metric: str
    window: str
    amount: int
    starts_at: datetime
    expires_at: datetime
    granted_by: str  # an actor label: slack:U… or system:…
    reason: str
    request_id: int | None

    @property
    def amount_text(self) -> str:
        return format_amount(Amount(self.amount, self.metric == Metric.COST))


def _view(session: Session, r: LimitRaise) -> RaiseView:
    limit = session.get(Limit, r.limit_id)
    assert limit is not None
    subject = session.get(Subject, limit.subject_id)
    assert subject is not None
    return RaiseView(r.id, r.limit_id, subject.name, limit.metric, limit.window, r.amount, r.starts_at,
                     r.expires_at, r.granted_by, r.reason, r.request_id)


def _active(now: datetime) -> ColumnElement[bool]:
    return and_(LimitRaise.starts_at <= now, LimitRaise.expires_at > now)


def raised(session: Session, limit_id: int, now: datetime) -> int:
    """What the active raises add to a limit's amount now."""
    return int(session.scalar(select(func.coalesce(func.sum(LimitRaise.amount), 0)).where(
        LimitRaise.limit_id == limit_id, _active(now))) or 0)


def raised_by_limit(session: Session, now: datetime) -> dict[int, int]:
    """`raised` for every limit with a raise active now, in one query (others: 0)."""
    q = (select(LimitRaise.limit_id, func.sum(LimitRaise.amount)).where(_active(now))
         .group_by(LimitRaise.limit_id))
    return {int(lid): int(total) for lid, total in session.execute(q)}


def effective_amount(session: Session, limit: Limit, now: datetime) -> int:
    return limit.amount + raised(session, limit.id, now)


def active_on(session: Session, limit_ids: list[int], now: datetime) -> list[RaiseView]:
    if not limit_ids:
        return []
    q = (select(LimitRaise).where(LimitRaise.limit_id.in_(limit_ids), _active(now))
         .order_by(LimitRaise.expires_at, LimitRaise.id))
    return [_view(session, r) for r in session.scalars(q)]


def granted_between(session: Session, start: datetime, end: datetime) -> list[RaiseView]:
    q = (select(LimitRaise).where(LimitRaise.created_at >= start, LimitRaise.created_at < end)
         .order_by(LimitRaise.id))
    return [_view(session, r) for r in session.scalars(q)]


def default_end(limit: Limit, now: datetime, tz: ZoneInfo, week_start: int) -> datetime:
    """"Until the window ends": the calendar window's end; a rolling window's length from now."""
    window = Window(limit.window)
    if window.length is not None:
        return now + window.length
    return window_bounds(window, now, tz, week_start)[1]


def check_four_eyes(session: Session, actor: Actor, subject: Subject, what: str) -> None:
    """Nobody decides or grants more for themselves, nor for a team they are a member of."""
    if actor.slack_user_id and actor.slack_user_id in access.affected_users(session, subject):
        raise Denied(f"four eyes: you cannot {what} for {subject.name} (it covers you); "
                     "another admin has to")


def grant(session: Session, clock: Clock, actor: Actor, limit: Limit, amount: int,
          expires_at: datetime, reason: str, request_id: int | None = None) -> RaiseView:
    """Record a raise (authorization and four eyes are the caller's), audited."""
    now = clock()
    if amount <= 0:
        raise BadInput("a raise must be more than zero")
    if expires_at <= now:
        raise BadInput("that raise would already be over")
    row = LimitRaise(limit_id=limit.id, amount=amount, starts_at=now, expires_at=expires_at,
                     granted_by=actor.label, request_id=request_id, reason=reason.strip()[:MAX_REASON],
                     created_at=now)
    session.add(row)
    # The warnings re-arm against the raised amount; the 100% mark (when a breach began)
    # stays, so a breach after the raise ends is acted on at once.
    session.execute(delete(AlertMark).where(AlertMark.limit_id == limit.id, AlertMark.threshold < 100))
    session.flush()
    view = _view(session, row)
    audit.record(session, clock, actor.label, "limit.raise", f"limit:{limit.id}",
                 {"subject": view.subject, "metric": limit.metric, "window": limit.window,
                  "amount": amount, "expires_at": expires_at.isoformat(), "request": request_id,
                  "reason": view.reason})
    return view


def find_limit(session: Session, subject: Subject, metric: Metric, window: Window | None,
               percent_of: dict[int, float] | None = None) -> Limit:
    """The subject's limit on `metric` (and `window`); of several windows, the one nearest
    its limit (`percent_of`: limit id → percent used)."""
    q = select(Limit).where(Limit.subject_id == subject.id, Limit.metric == metric.value)
    if window is not None:
        q = q.where(Limit.window == window.value)
    found = list(session.scalars(q.order_by(Limit.id)))
    if not found:
        where = f"{metric.value}/{window.value}" if window else metric.value
        raise NotFound(f"{subject.name} has no {where} limit to raise")
    pct = percent_of or {}
    return max(found, key=lambda limit: (pct.get(limit.id, 0.0), -limit.id))


def grant_direct(session: Session, clock: Clock, tz: ZoneInfo, week_start: int, actor: Actor,
                 ref: SubjectRef, amount: Amount, window: Window, metric: Metric,
                 duration: timedelta | None, reason: str) -> RaiseView:
    """`/bedrock limit alice +1M/day for 24h <reason>` (admin; not on a limit covering them)."""
    directory.authorize(session, actor, "admin", "limit +<amount>")
    if not reason.strip():
        raise BadInput("say why (a short reason) after the amount and duration")
    subject = directory.get(session, ref)
    limit = find_limit(session, subject, metric, window)
    check_four_eyes(session, actor, subject, "grant a raise")
    now = clock()
    until = now + duration if duration is not None else default_end(limit, now, tz, week_start)
    return grant(session, clock, actor, limit, amount.value, until, reason)


def close_expired(session: Session, clock: Clock) -> list[RaiseView]:
    """Raises that have ended and were not yet closed: closed and audited (the flow then
    puts the limit's alarm/budget back to the plain amount)."""
    now = clock()
    due = list(session.scalars(select(LimitRaise).where(
        LimitRaise.closed_at.is_(None), LimitRaise.expires_at <= now).order_by(LimitRaise.id)))
    out = []
    for r in due:
        r.closed_at = now
        view = _view(session, r)
        out.append(view)
        audit.record(session, clock, "system:expire_requests", "limit.raise.expire", f"limit:{r.limit_id}",
                     {"raise": r.id, "subject": view.subject, "amount": r.amount})
    session.flush()
    return out


def revocation_to_lift(session: Session, limit_id: int, now: datetime, tz: ZoneInfo,
                       week_start: int) -> int | None:
    """After a raise: the limit's active revocation, when usage is now under the raised
    amount. A person approved more, so an alarm's or budget's verdict is lifted too."""
    from bot.services.enforce import limit_revocation  # enforce imports this module
    from bot.services.limit_usage import limit_status

    limit = session.get(Limit, limit_id)
    rev = limit_revocation(session, limit_id) if limit is not None else None
    if limit is None or rev is None:
        return None
    subject = session.get(Subject, limit.subject_id)
    assert subject is not None
    status = limit_status(session, limit, subject, now, tz, week_start)
    return rev.id if status.used < status.amount else None
