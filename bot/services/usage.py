"""Usage: the CloudWatch sync into the ledger, and the per-subject usage report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.metrics import ALL_METRICS, CloudWatchMetrics, HourlyUsage
from bot.aws.profiles import ProfilesBackend
from bot.clock import Clock
from bot.errors import Denied, NotFound
from bot.models import Limit, Meter, Profile, Revocation, Subject, SyncCursor
from bot.pricing import PriceTable
from bot.quantities import Window, window_bounds, window_label
from bot.services import directory, ledger
from bot.services.directory import Actor, SubjectInfo, SubjectRef
from bot.services.ledger import HOUR, LedgerRow, Totals, floor_hour
from bot.services.profiles import adopt_tagged

CURSOR = "usage_sync"
RECENT = timedelta(hours=2)
NEW_PROFILE = timedelta(days=1)  # ListMetrics' RecentlyActive=PT3H covers a gap this short


@dataclass(frozen=True)
class SyncResult:
    active: int
    read: int
    backfilled: int
    rows: int
    adopted: int
    start: datetime
    end: datetime
    calls: dict[str, int] = field(default_factory=dict)


def _cursor(session: Session) -> SyncCursor | None:
    return session.get(SyncCursor, CURSOR)


def backfill_start(now: datetime) -> datetime:
    """The start of the previous month, a day early: whatever BOT_TIMEZONE is (±14 h),
    its previous calendar month is covered."""
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1) - timedelta(days=1)


def sync_usage(session: Session, clock: Clock, metrics: CloudWatchMetrics,
               backend: ProfilesBackend | None, prices: PriceTable,
               discover: bool = True, until: datetime | None = None) -> SyncResult:
    """Read the current and previous hour (or since the last sync) into the ledger.

    A profile never synced before is backfilled from the start of the previous month.
    With `until` (the usage stream's handover hour) only hours before it are read and
    written: from then on the stream counts AIP calls (docs/usage-stream.md).
    """
    now = clock()
    calls_before = Counter(metrics.calls)
    adopted = adopt_tagged(session, clock, backend) if (discover and backend) else []
    cur = _cursor(session)
    start = floor_hour(now) - HOUR
    if cur is not None and cur.position < start:
        start = max(cur.position, backfill_start(now))
    stop = now if until is None else min(now, until)
    profiles = {p.profile_id: p for p in session.scalars(select(Profile))}
    fresh = [p for p in profiles.values() if p.backfilled_at is None]
    wanted: dict[str, frozenset[str]] = {}
    if start < stop:
        active = metrics.active_model_ids(recently_active=now - start <= RECENT)
        wanted = {pid: names for pid, names in active.items()
                  if pid in profiles and profiles[pid].backfilled_at is not None}
        # ListMetrics can take up to 15 minutes to list a metric it has never seen: profiles
        # created in the last day are read whether listed or not (cache tokens included, since
        # `tokens` counts them), so their first breach counts.
        for p in profiles.values():
            young = now - p.created_at < NEW_PROFILE
            if p.backfilled_at is not None and p.profile_id not in wanted and young:
                wanted[p.profile_id] = frozenset(ALL_METRICS)
    readings = metrics.hourly(wanted, start, stop) if wanted else []
    if fresh:
        # The last 3 hours say nothing about last month: ask for every metric, cache
        # tokens included (a one-off cost per profile).
        backfill = {p.profile_id: frozenset(ALL_METRICS) for p in fresh}
        if stop > backfill_start(now):
            readings += metrics.hourly(backfill, backfill_start(now), stop)
        for p in fresh:
            p.backfilled_at = now
    rows = _ledger_rows(session, clock, readings, profiles, prices)
    ledger.upsert(session, rows, now)
    _advance(session, cur, floor_hour(now), now)
    return SyncResult(len(wanted), len(readings), len(fresh), len(rows), len(adopted), start, now,
                      dict(Counter(metrics.calls) - calls_before))


def _ledger_rows(session: Session, clock: Clock, readings: list[HourlyUsage],
                 profiles: dict[str, Profile], prices: PriceTable) -> list[LedgerRow]:
    meters = {m.key: m.id for m in session.scalars(select(Meter).where(Meter.kind == "profile"))}
    merged: dict[tuple[int, datetime], LedgerRow] = {}
    for r in readings:
        profile = profiles[r.model_id]
        meter_id = meters.get(r.model_id) or directory.ensure_meter(
            session, clock, "profile", r.model_id, profile.subject_id).id
        cost = prices.cost_micro_usd(profile.model_id, r.input_tokens, r.output_tokens,
                                     r.cache_read_tokens, r.cache_write_tokens)
        # A backfill and a normal read can both return an hour: the values are the same
        # CloudWatch sums, so the last one wins rather than adding up.
        merged[(meter_id, r.hour)] = LedgerRow(meter_id, r.hour, r.input_tokens, r.output_tokens,
                                               r.cache_read_tokens, r.cache_write_tokens,
                                               r.invocations, cost)
    return list(merged.values())


def _advance(session: Session, cur: SyncCursor | None, position: datetime, now: datetime) -> None:
    if cur is None:
        session.add(SyncCursor(name=CURSOR, position=position, updated_at=now))
    else:
        cur.position, cur.updated_at = position, now
    session.flush()


# ---- the usage report ----------------------------------------------------------------

PERIOD_WINDOWS = {"today": Window.DAY, "yesterday": Window.DAY, "week": Window.WEEK,
                  "month": Window.MONTH, "7d": Window.D7, "30d": Window.D30}
DEFAULT_PERIOD = "month"


@dataclass(frozen=True)
class LimitStatus:
    limit_id: int
    subject: str
    metric: str
    amount: int
    window: str
    used: int
    window_start: datetime
    window_end: datetime
    action: str
    warn: tuple[int, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.amount if self.amount else 0.0


@dataclass(frozen=True)
class UsageReport:
    subject: SubjectInfo
    period: str
    label: str
    start: datetime
    end: datetime
    now: datetime
    totals: Totals
    previous: Totals
    forecast: Totals | None
    limits: list[LimitStatus]
    revoked: list[str]
    teams: list[str]
    members: list[str]


def period_bounds(period: str, now: datetime, tz: ZoneInfo, week_start: int
                  ) -> tuple[datetime, datetime, datetime, datetime]:
    """(start, end, previous start, previous end) for a usage period."""
    window = PERIOD_WINDOWS[period]
    at = now
    if period == "yesterday":
        at = window_bounds(Window.DAY, now, tz, week_start)[0] - timedelta(seconds=1)
    start, end = window_bounds(window, at, tz, week_start)
    if window.rolling:
        length = end - start
        return start, end, start - length, start
    prev_start, prev_end = window_bounds(window, start - timedelta(seconds=1), tz, week_start)
    return start, end, prev_start, prev_end


def limit_status(session: Session, limit: Limit, subject: Subject, now: datetime, tz: ZoneInfo,
                 week_start: int) -> LimitStatus:
    start, end = window_bounds(Window(limit.window), now, tz, week_start)
    ids = directory.covered_subject_ids(session, subject)
    used = ledger.totals(session, ids, start, end if end > now else now + HOUR).metric(limit.metric)
    return LimitStatus(limit.id, subject.name, limit.metric, limit.amount, limit.window, used,
                       start, end, limit.action, tuple(limit.warn))


def report(session: Session, clock: Clock, tz: ZoneInfo, week_start: int, actor: Actor,
           ref: SubjectRef | None, period: str | None) -> UsageReport:
    subject = _subject_for(session, actor, ref)
    if not directory.can_view(session, actor, subject):
        raise Denied("you can see your own usage and your teams'; admins can see everyone's.")
    period = period or DEFAULT_PERIOD
    now = clock()
    start, end, pstart, pend = period_bounds(period, now, tz, week_start)
    ids = directory.covered_subject_ids(session, subject)
    totals = ledger.totals(session, ids, start, end)
    previous = ledger.totals(session, ids, pstart, pend)
    return UsageReport(
        directory.info(subject), period, window_label(PERIOD_WINDOWS[period], start, tz), start,
        end, now, totals, previous, _forecast(totals, start, end, now, PERIOD_WINDOWS[period]),
        _limits_for(session, subject, now, tz, week_start), _revoked(session, subject),
        [t.name for t in directory.teams_of(session, subject)] if subject.kind == "user" else [],
        [m.name for m in directory.members_of(session, subject)] if subject.kind == "team" else [])


def _subject_for(session: Session, actor: Actor, ref: SubjectRef | None) -> Subject:
    if ref is not None:
        return directory.get(session, ref)
    me = directory.find(session, SubjectRef(slack_user_id=actor.slack_user_id))
    if me is None:
        raise NotFound("you have no usage yet: ask an admin to provision a profile for you "
                       "(`/bedrock provision @you <model>`)")
    return me


def _forecast(t: Totals, start: datetime, end: datetime, now: datetime,
              window: Window) -> Totals | None:
    """Straight-line projection to the window's end; none for past or rolling windows."""
    if window.rolling or end <= now or now - start < HOUR:
        return None
    f = (end - start) / (now - start)
    return Totals(*(round(getattr(t, c) * f) for c in
                    ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                     "requests", "cost_micro_usd")))


def _limits_for(session: Session, subject: Subject, now: datetime, tz: ZoneInfo,
                week_start: int) -> list[LimitStatus]:
    """The subject's own limits, then those of the teams it belongs to."""
    owners = [subject, *(directory.teams_of(session, subject) if subject.kind == "user" else [])]
    out = []
    for owner in owners:
        for limit in session.scalars(select(Limit).where(Limit.subject_id == owner.id)
                                     .order_by(Limit.window, Limit.metric)):
            out.append(limit_status(session, limit, owner, now, tz, week_start))
    return out


def _revoked(session: Session, subject: Subject) -> list[str]:
    ids = [subject.id, *(t.id for t in directory.teams_of(session, subject))] \
        if subject.kind == "user" else [subject.id]
    q = (select(Revocation, Subject.name).join(Subject, Subject.id == Revocation.subject_id)
         .where(Revocation.subject_id.in_(ids), Revocation.state == "active"))
    return [f"{name}: {r.reason}" + (f" ({r.note})" if r.note else "")
            for r, name in session.execute(q)]
