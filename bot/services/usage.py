"""Usage: the CloudWatch sync into the ledger, and the per-subject usage report.

The sync is three steps, run by `bot/flows/usage_sync.py`: `plan_sync` (a short transaction:
the cursor and the known profiles), `read_metrics` (ListMetrics and GetMetricData, no session),
`record_sync` (a short transaction: ledger upserts, backfill marks, the cursor). A sync that
fails between them writes nothing and leaves the cursor, so the next one reads the same hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bot.aws.metrics import ALL_METRICS, CloudWatchMetrics, HourlyUsage
from bot.clock import Clock
from bot.errors import Denied, NotFound
from bot.models import Limit, Meter, Profile, Revocation, Subject, SyncCursor
from bot.pricing import PriceTable
from bot.quantities import Window, window_bounds, window_label
from bot.services import billing, directory, ledger, unpriced
from bot.services.billing import BillComparison
from bot.services.directory import Actor, SubjectInfo, SubjectRef
from bot.services.ledger import HOUR, LedgerRow, Totals, floor_hour
from bot.services.limit_usage import LimitStatus, limit_statuses

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


def backfill_start(now: datetime) -> datetime:
    """The start of the previous month, a day early: whatever BOT_TIMEZONE is (±14 h),
    its previous calendar month is covered."""
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1) - timedelta(days=1)


@dataclass(frozen=True)
class SyncPlan:
    """What one sync reads, decided in a short transaction (plain data: no session needed)."""

    now: datetime
    start: datetime  # the previous hour, or the cursor after a gap
    known_arns: frozenset[str]  # every recorded AIP: the rest may be adopted
    backfilled: frozenset[str]  # profile ids read from `start` when ListMetrics lists them
    new: frozenset[str]  # of those, created in the last day: read whether listed or not
    fresh: tuple[str, ...]  # never backfilled: read from the start of the previous month
    stop: datetime  # hours are read up to here: now, or the usage stream's handover hour

    @property
    def recently_active(self) -> bool:
        """After a gap longer than RECENT, ListMetrics' PT3H would miss profiles idle since."""
        return self.now - self.start <= RECENT


@dataclass(frozen=True)
class Readings:
    """What CloudWatch answered for a plan."""

    usage: list[HourlyUsage]
    active: int  # profiles read from `start`
    fresh: tuple[str, ...]  # profile ids backfilled by these readings (adopted ones included)
    calls: dict[str, int]  # this sync's API calls, by operation


def plan_sync(session: Session, clock: Clock, until: datetime | None = None) -> SyncPlan:
    """With `until` (the usage stream's handover hour) only hours before it are read and
    written: from then on the stream counts AIP calls (docs/usage-stream.md)."""
    now = clock()
    cur = session.get(SyncCursor, CURSOR)
    start = floor_hour(now) - HOUR
    if cur is not None and cur.position < start:
        start = max(cur.position, backfill_start(now))
    rows = session.execute(select(Profile.arn, Profile.profile_id, Profile.backfilled_at,
                                  Profile.created_at)).all()
    done = [(pid, created) for _, pid, backfilled, created in rows if backfilled is not None]
    return SyncPlan(now, start, frozenset(arn for arn, *_ in rows),
                    frozenset(pid for pid, _ in done),
                    frozenset(pid for pid, created in done if now - created < NEW_PROFILE),
                    tuple(pid for _, pid, backfilled, _ in rows if backfilled is None),
                    now if until is None else min(now, until))


def read_metrics(plan: SyncPlan, metrics: CloudWatchMetrics,
                 adopting: Sequence[str] = ()) -> Readings:
    """The CloudWatch calls of a plan (no session: called with no transaction open).

    `adopting`: ids of AIPs about to be adopted, backfilled like never-synced profiles.
    Only hours before `plan.stop` are read (the usage stream counts the rest).
    """
    calls_before = Counter(metrics.calls)
    wanted: dict[str, frozenset[str]] = {}
    if plan.start < plan.stop:
        listed = metrics.active_model_ids(recently_active=plan.recently_active)
        wanted = {pid: names for pid, names in listed.items() if pid in plan.backfilled}
        # ListMetrics can take up to 15 minutes to list a metric it has never seen: profiles
        # created in the last day are read whether listed or not (cache tokens included, since
        # `tokens` counts them), so their first breach counts.
        for pid in sorted(plan.new):
            wanted.setdefault(pid, frozenset(ALL_METRICS))
    usage = metrics.hourly(wanted, plan.start, plan.stop) if wanted else []
    fresh = plan.fresh + tuple(pid for pid in adopting if pid not in plan.fresh)
    if fresh:
        # The last 3 hours say nothing about last month: ask for every metric, cache
        # tokens included (a one-off cost per profile).
        backfill = {pid: frozenset(ALL_METRICS) for pid in fresh}
        if plan.stop > backfill_start(plan.now):
            usage += metrics.hourly(backfill, backfill_start(plan.now), plan.stop)
    return Readings(usage, len(wanted), fresh, dict(Counter(metrics.calls) - calls_before))


def record_sync(session: Session, clock: Clock, plan: SyncPlan, read: Readings,
                prices: PriceTable, adopted: int = 0) -> SyncResult:
    """Write the readings: hourly upserts (idempotent), backfill marks, the cursor."""
    profiles = {pid: (model_id, subject_id) for pid, model_id, subject_id in session.execute(
        select(Profile.profile_id, Profile.model_id, Profile.subject_id))}
    fresh = [pid for pid in read.fresh if pid in profiles]  # an AIP not adopted has no row
    backfilled = 0
    if fresh:
        marked = session.execute(update(Profile).where(Profile.profile_id.in_(fresh),
                                                       Profile.backfilled_at.is_(None))
                                 .values(backfilled_at=plan.now)
                                 .execution_options(synchronize_session=False))
        backfilled = marked.rowcount  # type: ignore[attr-defined]
    usage = [r for r in read.usage if r.model_id in profiles]
    rows = _ledger_rows(session, clock, usage, profiles, prices)
    ledger.upsert(session, rows, plan.now)
    _advance(session, session.get(SyncCursor, CURSOR), floor_hour(plan.now), plan.now)
    return SyncResult(read.active, len(usage), backfilled, len(rows), adopted, plan.start, plan.now,
                      read.calls)


def _ledger_rows(session: Session, clock: Clock, readings: list[HourlyUsage],
                 profiles: dict[str, tuple[str, int | None]], prices: PriceTable) -> list[LedgerRow]:
    """`profiles`: profile id → (model id, subject id)."""
    meters = {key: mid for key, mid in session.execute(
        select(Meter.key, Meter.id).where(Meter.kind == "profile"))}
    merged: dict[tuple[int, datetime], LedgerRow] = {}
    for r in readings:
        model_id, subject_id = profiles[r.model_id]
        meter_id = meters.get(r.model_id) or directory.ensure_meter(
            session, clock, "profile", r.model_id, subject_id).id
        cost = prices.cost_micro_usd(model_id, r.input_tokens, r.output_tokens,
                                     r.cache_read_tokens, r.cache_write_tokens)
        unpriced = not prices.known(model_id)  # counted in tokens, flagged, never $0
        all_tokens = r.input_tokens + r.output_tokens + r.cache_read_tokens + r.cache_write_tokens
        # A backfill and a normal read can both return an hour: the values are the same
        # CloudWatch sums, so the last one wins rather than adding up.
        merged[(meter_id, r.hour)] = LedgerRow(meter_id, r.hour, r.input_tokens, r.output_tokens,
                                               r.cache_read_tokens, r.cache_write_tokens,
                                               r.invocations, cost,
                                               all_tokens if unpriced else 0,
                                               r.invocations if unpriced else 0)
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
    unpriced_models: tuple[str, ...] = ()  # AIP models behind totals.unpriced_tokens
    bill: BillComparison | None = None  # AWS's bill for the period's closed days, if read


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
    flagged = tuple(unpriced.models(session, ids, start, end)) if totals.unpriced_tokens else ()
    return UsageReport(
        directory.info(subject), period, window_label(PERIOD_WINDOWS[period], start, tz), start,
        end, now, totals, previous, _forecast(totals, start, end, now, PERIOD_WINDOWS[period]),
        _limits_for(session, subject, now, tz, week_start), _revoked(session, subject),
        [t.name for t in directory.teams_of(session, subject)] if subject.kind == "user" else [],
        [m.name for m in directory.members_of(session, subject)] if subject.kind == "team" else [],
        flagged, billing.compare(session, subject.id, start, end, now))


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
    pairs = [(limit, owner) for owner in owners
             for limit in session.scalars(select(Limit).where(Limit.subject_id == owner.id)
                                          .order_by(Limit.window, Limit.metric))]
    statuses = limit_statuses(session, pairs, now, tz, week_start)
    return [statuses[limit.id] for limit, _ in pairs]


def _revoked(session: Session, subject: Subject) -> list[str]:
    ids = [subject.id, *(t.id for t in directory.teams_of(session, subject))] \
        if subject.kind == "user" else [subject.id]
    q = (select(Revocation, Subject.name).join(Subject, Subject.id == Revocation.subject_id)
         .where(Revocation.subject_id.in_(ids), Revocation.state == "active"))
    return [f"{name}: {r.reason}" + (f" ({r.note})" if r.note else "")
            for r, name in session.execute(q)]
