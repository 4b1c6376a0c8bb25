"""Enforce: warnings at thresholds, revocation at 100%, lifting when usage is back under.

Runs after every usage sync. Each step is idempotent, so a second run for the same breach
does nothing again:
- a warning fires once per (limit, window, threshold) through `alert_marks`;
- a limit holds at most one active revocation;
- a limit revocation is lifted as soon as the limit's *current* window is under the
  amount: at the next calendar window, when a rolling window slides below it, when the
  amount is raised, or when the limit is removed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.models import AlertMark, Limit, LimitException, Revocation, Subject
from bot.quantities import Window
from bot.services import access, directory, raises
from bot.services.access import RevocationView
from bot.services.directory import Actor, SubjectInfo
from bot.services.limit_usage import LimitStatus, limit_status, limit_statuses

ACTOR = Actor.system("enforce")
# Rolling windows have no fixed start: their marks share this key and are re-armed
# (deleted) when usage drops back under the threshold.
ROLLING_KEY = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Warning:
    status: LimitStatus
    threshold: int
    subject: SubjectInfo
    users: tuple[str, ...]


@dataclass(frozen=True)
class Breach:
    status: LimitStatus
    revocation: RevocationView


@dataclass(frozen=True)
class BreachPlan:
    """A limit over 100% with no revocation yet: the flow revokes after the evaluation commits."""

    status: LimitStatus
    subject_id: int
    note: str


@dataclass(frozen=True)
class GraceNotice:
    """A breach on a limit with a grace period: revoked at `ends` unless a raise comes first."""

    status: LimitStatus
    ends: datetime
    grace: timedelta
    subject: SubjectInfo
    users: tuple[str, ...]


@dataclass(frozen=True)
class LiftPlan:
    revocation_id: int
    why: str


@dataclass
class Evaluation:
    """One pass over every limit, in one transaction: warnings marked, what to do next."""

    checked: int = 0
    warnings: list[Warning] = field(default_factory=list)
    breaches: list[BreachPlan] = field(default_factory=list)
    lifts: list[LiftPlan] = field(default_factory=list)
    suspended: list[LimitStatus] = field(default_factory=list)
    graces: list[GraceNotice] = field(default_factory=list)


@dataclass
class EnforceResult:
    checked: int = 0
    warnings: list[Warning] = field(default_factory=list)
    graces: list[GraceNotice] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    restored: list[RevocationView] = field(default_factory=list)
    suspended: list[LimitStatus] = field(default_factory=list)
    reasserted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def evaluate(session: Session, clock: Clock, tz: ZoneInfo, week_start: int,
             only: Collection[int] | None = None) -> Evaluation:
    """Database only: no AWS call is made while this transaction is open. `only`: just these
    limits, for breaches and warnings (the usage stream's prompt check); lifts are left to the
    full run after each sync.

    Reads in bulk, not per limit: every limit's usage (`limit_statuses`: one grouped ledger
    statement per window), then the alert marks of the current windows, the exceptions in
    force and the active limit revocations, one statement each. Per limit, only what crosses
    something costs more: the Slack ids of a team's members for a new warning. New marks are
    written in one INSERT at the end, re-armed ones in one DELETE."""
    ev = Evaluation()
    now = clock()
    q = select(Limit, Subject).join(Subject, Subject.id == Limit.subject_id).order_by(Limit.id)
    if only is not None:
        q = q.where(Limit.id.in_(sorted(set(only))))
    limits = session.execute(q).tuples().all()
    statuses = limit_statuses(session, limits, now, tz, week_start)
    revs = session.scalars(select(Revocation).where(*_ACTIVE_LIMIT_REVOCATION).order_by(Revocation.id)).all()
    if only is None:
        ev.lifts = _finished(session, now, tz, week_start, revs, statuses)
    known = _Known.load(session, statuses, now, revs)
    for limit, subject in limits:
        ev.checked += 1
        _check(session, clock, limit, subject, statuses[limit.id], known, ev)
    known.write(session)
    return ev


@dataclass
class _Known:
    """What `evaluate` reads once for all limits rather than once per limit, and the marks it
    writes at the end (one INSERT, one DELETE)."""

    marks: dict[tuple[int, datetime, int], datetime]  # (limit, window key, threshold) → marked at
    ids: dict[int, dict[tuple[datetime, int], int]]  # limit → (key, threshold) → id of a stored mark
    suspended: set[int]  # limits with an exception in force
    revoked: set[int]  # limits with an active revocation (LIMIT_REASONS)
    new: list[dict[str, Any]] = field(default_factory=list)  # marks to insert
    rearmed: list[int] = field(default_factory=list)  # ids of marks to delete

    @classmethod
    def load(cls, session: Session, statuses: dict[int, LimitStatus], now: datetime,
             revs: Sequence[Revocation]) -> _Known:
        """`revs`: the active limit revocations."""
        keys = {ROLLING_KEY, *(s.window_start for s in statuses.values() if not Window(s.window).rolling)}
        rows = session.execute(select(AlertMark.limit_id, AlertMark.window_start, AlertMark.threshold,
                                      AlertMark.id, AlertMark.created_at)
                               .where(AlertMark.window_start.in_(sorted(keys)))).tuples().all()
        excepted = select(LimitException.limit_id).where(LimitException.expires_at > now)
        ids: dict[int, dict[tuple[datetime, int], int]] = defaultdict(dict)
        for lid, key, t, mid, _ in rows:
            ids[lid][(key, t)] = mid
        return cls({(lid, key, t): at for lid, key, t, _, at in rows}, ids,
                   set(session.scalars(excepted)),
                   {rev.limit_id for rev in revs if rev.limit_id is not None})

    def write(self, session: Session) -> None:
        if self.new:
            session.execute(insert(AlertMark), self.new)
        if self.rearmed:
            session.execute(delete(AlertMark).where(AlertMark.id.in_(self.rearmed)))


def _check(session: Session, clock: Clock, limit: Limit, subject: Subject, status: LimitStatus,
           known: _Known, ev: Evaluation) -> None:
    key = ROLLING_KEY if Window(limit.window).rolling else status.window_start
    pct = status.percent

    @cache
    def users() -> tuple[str, ...]:  # read only for what is announced
        return tuple(access.affected_users(session, subject))

    # Every crossed threshold is marked, but only the highest new one is announced: a jump
    # from 10% to 300% says "revoked" once, not "80%", "90%" and "revoked".
    crossed = [t for t in sorted(limit.warn) if pct >= t and _mark(clock, known, limit.id, key, t)]
    if crossed and (pct < 100 or limit.action == "notify"):
        ev.warnings.append(Warning(status, crossed[-1], directory.info(subject), users()))
    if pct < 100:
        if key == ROLLING_KEY:
            _rearm(known, limit.id, pct)
        return
    if limit.action == "notify" or limit.id in known.suspended:
        if limit.action != "notify":
            ev.suspended.append(status)
        if _mark(clock, known, limit.id, key, 100) and limit.action == "notify":
            ev.warnings[-1:] = [w for w in ev.warnings[-1:] if w.status.limit_id != limit.id]
            ev.warnings.append(Warning(status, 100, directory.info(subject), users()))
        return
    if limit.id not in known.revoked:
        fresh = _mark(clock, known, limit.id, key, 100)
        if limit.grace_seconds:
            # The 100% mark's time is when the breach began: revoke once the grace is over.
            grace = timedelta(seconds=limit.grace_seconds)
            ends = known.marks[(limit.id, key, 100)] + grace
            if clock() < ends:
                if fresh:
                    ev.graces.append(GraceNotice(status, ends, grace, directory.info(subject), users()))
                return
        ev.breaches.append(BreachPlan(status, subject.id, _breach_note(status)))


def still_breached(session: Session, clock: Clock, limit_id: int, amount: int | None = None) -> bool:
    """Asked again right before a breach is recorded: still no revocation, no exception, and
    no raise granted since the evaluation (`amount`: the effective amount it judged by)."""
    limit = session.get(Limit, limit_id)
    if limit is None or limit_revocation(session, limit_id) is not None:
        return False
    now = clock()
    if amount is not None and raises.effective_amount(session, limit, now) > amount:
        return False
    return not suspended(session, limit_id, now)


def _breach_note(s: LimitStatus) -> str:
    return f"{s.metric}/{s.window} limit reached: {s.used} of {s.amount}"


def _mark(clock: Clock, known: _Known, limit_id: int, key: datetime, threshold: int) -> bool:
    """Record that a threshold fired; False when it already had (in this window)."""
    if (limit_id, key, threshold) in known.marks:
        return False
    at = known.marks[(limit_id, key, threshold)] = clock()
    known.new.append({"limit_id": limit_id, "window_start": key, "threshold": threshold, "created_at": at})
    return True


def _rearm(known: _Known, limit_id: int, pct: float) -> None:
    """Forget the rolling window's marks above `pct`: they fire again when crossed again."""
    stored = known.ids.get(limit_id, {})
    for key, threshold in [k for k in stored if k[0] == ROLLING_KEY and pct < k[1]]:
        known.rearmed.append(stored.pop((key, threshold)))
        del known.marks[(limit_id, key, threshold)]


def suspended(session: Session, limit_id: int, now: datetime) -> bool:
    """An approved time-boxed exception suspends enforcement of this limit."""
    return session.scalar(select(LimitException.id).where(
        LimitException.limit_id == limit_id, LimitException.expires_at > now)) is not None


LIMIT_REASONS = ("limit", "alarm", "budget")  # revocations that belong to a limit's window
_ACTIVE_LIMIT_REVOCATION = (Revocation.reason.in_(LIMIT_REASONS), Revocation.state == "active")


def limit_revocation(session: Session, limit_id: int) -> Revocation | None:
    return session.scalar(select(Revocation).where(
        Revocation.limit_id == limit_id, *_ACTIVE_LIMIT_REVOCATION).limit(1))


def _finished(session: Session, now: datetime, tz: ZoneInfo, week_start: int, revs: Sequence[Revocation],
              statuses: dict[int, LimitStatus]) -> list[LiftPlan]:
    """`statuses`: of every limit, by its owner (a revocation of another subject is asked apart)."""
    lifts = []
    for rev in revs:
        limit = session.get(Limit, rev.limit_id) if rev.limit_id else None
        subject = session.get(Subject, rev.subject_id)
        if subject is None:
            continue
        if limit is None:
            lifts.append(LiftPlan(rev.id, "limit removed"))
            continue
        status = statuses[limit.id] if limit.subject_id == subject.id and limit.id in statuses \
            else limit_status(session, limit, subject, now, tz, week_start)
        # An alarm's or budget's verdict stands until its window is over: our own estimate
        # may disagree with CloudWatch's or the bill's, and must not undo it early.
        held = rev.reason != "limit" and rev.window_end is not None and rev.window_end > now
        if status.used < status.amount and not held:
            why = "new window" if rev.window_end and rev.window_end <= now else "under the limit"
            lifts.append(LiftPlan(rev.id, why))
    return lifts
