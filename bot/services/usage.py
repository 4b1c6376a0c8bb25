"""Usage: the CloudWatch sync into the ledger, and the per-subject usage report.

The sync is three steps, run by `bot/flows/usage_sync.py`: `plan_sync` (a short transaction:
the cursor and the known profiles), `read_metrics` (ListMetrics and GetMetricData, no session),
`record_sync` (a short transaction: ledger upserts, backfill marks, the cursor). A sync that
fails between them writes nothing and leaves the cursor, so the next one reads the same hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bot.aws import mantle_metrics
from bot.aws.mantle_metrics import MantleUsage
from bot.aws.metrics import ALL_METRICS, CloudWatchMetrics, HourlyUsage
from bot.clock import Clock
from bot.errors import Denied, NotFound
from bot.models import Limit, Meter, PollMark, Profile, Revocation, Subject, SyncCursor
from bot.pricing import PriceTable
from bot.quantities import Window, window_bounds, window_label
from bot.services import billing, directory, ledger, poll_cadence, unpriced
from bot.services.billing import BillComparison
from bot.services.directory import Actor, SubjectInfo, SubjectRef
from bot.services.ledger import HOUR, LedgerRow, Totals, floor_hour
from bot.services.limit_usage import LimitStatus, limit_statuses
from bot.services.poll_cadence import Cadence

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
    skipped: int = 0  # profiles and mantle projects adaptive polling left for a later sync
    metrics_requested: int = 0  # GetMetricData queries sent (its billing unit)
    mantle_rows: int = 0


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
    # Adaptive polling (docs/usage-sync.md): the backfilled profiles due now, each with the hour
    # its read starts at (its own mark); None = every profile, from `start`.
    due: Mapping[str, datetime] | None = None
    mantle: Mapping[str, datetime] = field(default_factory=dict)  # due mantle projects → start
    skipped: int = 0

    def start_of(self, profile_id: str) -> datetime | None:
        """Where a profile's read starts; None when adaptive polling skips it this time."""
        if self.due is None:
            return self.start
        return self.due.get(profile_id)

    @property
    def recently_active(self) -> bool:
        """After a gap longer than RECENT, ListMetrics' PT3H would miss profiles idle since."""
        first = min(self.due.values(), default=self.start) if self.due else self.start
        return self.now - min(first, self.start) <= RECENT


@dataclass(frozen=True)
class Readings:
    """What CloudWatch answered for a plan."""

    usage: list[HourlyUsage]
    active: int  # profiles read from `start`
    fresh: tuple[str, ...]  # profile ids backfilled by these readings (adopted ones included)
    calls: dict[str, int]  # this sync's API calls, by operation
    mantle: list[MantleUsage] = field(default_factory=list)
    read: tuple[str, ...] = ()  # due profiles whose hours were read (adaptive marks)
    metrics_requested: int = 0


def plan_sync(session: Session, clock: Clock, until: datetime | None = None,
              cadence: Cadence | None = None) -> SyncPlan:
    """With `until` (the usage stream's handover hour) only hours before it are read and
    written: from then on the stream counts AIP calls (docs/usage-stream.md). With `cadence`,
    only the profiles and mantle projects adaptive polling finds due are read."""
    now = clock()
    cur = session.get(SyncCursor, CURSOR)
    start = floor_hour(now) - HOUR
    if cur is not None and cur.position < start:
        start = max(cur.position, backfill_start(now))
    rows = session.execute(select(Profile.arn, Profile.profile_id, Profile.backfilled_at,
                                  Profile.created_at, Profile.subject_id)).all()
    done = [(pid, created) for _, pid, backfilled, created, _ in rows if backfilled is not None]
    owners = {pid: sid for _, pid, _, _, sid in rows}
    due, mantle, skipped = _due(session, now, start, cadence, [pid for pid, _ in done], owners)
    return SyncPlan(now, start, frozenset(arn for arn, *_ in rows),
                    frozenset(pid for pid, _ in done),
                    frozenset(pid for pid, created in done if now - created < NEW_PROFILE),
                    tuple(pid for _, pid, backfilled, _, _ in rows if backfilled is None),
                    now if until is None else min(now, until), due, mantle, skipped)


def _due(session: Session, now: datetime, start: datetime, cadence: Cadence | None,
         profiles: list[str], owners: Mapping[str, int | None]
         ) -> tuple[dict[str, datetime] | None, dict[str, datetime], int]:
    """(due profile → start or None for all, due mantle project → start, meters skipped)."""
    projects: dict[str, int | None] = {key: sid for key, sid in session.execute(
        select(Meter.key, Meter.subject_id).where(Meter.kind == "mantle",
                                                  Meter.subject_id.is_not(None)))}
    marks = {(k, key): (pos, at) for k, key, pos, at in session.execute(
        select(PollMark.kind, PollMark.key, PollMark.position, PollMark.read_at))}
    waits = poll_cadence.subject_intervals(session, now, cadence) if cadence else {}
    idle = float(cadence.idle_seconds) if cadence else 0.0

    def due_from(kind: str, key: str, subject: int | None, default: datetime) -> datetime | None:
        pos, at = marks.get((kind, key), (None, None))
        wait = waits.get(subject, idle) if (cadence and subject is not None) else idle
        if cadence and not poll_cadence.is_due(at, wait, now):
            return None
        return default if pos is None else max(min(pos, start), backfill_start(now))

    mantle = {p: at for p, sid in projects.items()
              if (at := due_from("mantle", p, sid, backfill_start(now))) is not None}
    skipped = len(projects) - len(mantle)
    if cadence is None:
        return None, mantle, skipped
    due = {p: at for p in profiles if (at := due_from("profile", p, owners.get(p), start)) is not None}
    return due, mantle, skipped + len(profiles) - len(due)


def read_metrics(plan: SyncPlan, metrics: CloudWatchMetrics,
                 adopting: Sequence[str] = ()) -> Readings:
    """The CloudWatch calls of a plan (no session: called with no transaction open).

    `adopting`: ids of AIPs about to be adopted, backfilled like never-synced profiles.
    Only hours before `plan.stop` are read (the usage stream counts the rest); mantle projects,
    which the stream never carries, up to now.
    """
    calls_before, requested_before = Counter(metrics.calls), metrics.metrics_requested
    wanted: dict[str, frozenset[str]] = {}
    usage: list[HourlyUsage] = []
    read: tuple[str, ...] = ()
    if plan.start < plan.stop:
        due = plan.backfilled if plan.due is None else frozenset(plan.due) & plan.backfilled
        if due or plan.due is None:  # adaptive polling with nothing due lists nothing
            listed = metrics.active_model_ids(recently_active=plan.recently_active)
            wanted = {pid: names for pid, names in listed.items() if pid in due}
        # ListMetrics can take up to 15 minutes to list a metric it has never seen: profiles
        # created in the last day are read whether listed or not (cache tokens included, since
        # `tokens` counts them), so their first breach counts.
        for pid in sorted(plan.new & due):
            wanted.setdefault(pid, frozenset(ALL_METRICS))
        usage = _read_grouped(plan, metrics, wanted)
        read = tuple(sorted(due))
    fresh = plan.fresh + tuple(pid for pid in adopting if pid not in plan.fresh)
    if fresh:
        # The last 3 hours say nothing about last month: ask for every metric, cache
        # tokens included (a one-off cost per profile).
        backfill = {pid: frozenset(ALL_METRICS) for pid in fresh}
        if plan.stop > backfill_start(plan.now):
            usage += metrics.hourly(backfill, backfill_start(plan.now), plan.stop)
    mantle = _read_mantle(plan, metrics)
    return Readings(usage, len(wanted), fresh, dict(Counter(metrics.calls) - calls_before), mantle,
                    read, metrics.metrics_requested - requested_before)


def _read_grouped(plan: SyncPlan, metrics: CloudWatchMetrics,
                  wanted: Mapping[str, frozenset[str]]) -> list[HourlyUsage]:
    """One `hourly` read per distinct start hour (a skipped profile starts at its own mark)."""
    groups: dict[datetime, dict[str, frozenset[str]]] = {}
    for pid, names in wanted.items():
        first = plan.start_of(pid) or plan.start
        groups.setdefault(first, {})[pid] = names
    out: list[HourlyUsage] = []
    for first in sorted(groups):
        out += metrics.hourly(groups[first], first, plan.stop)
    return out


def _read_mantle(plan: SyncPlan, metrics: CloudWatchMetrics) -> list[MantleUsage]:
    groups: dict[datetime, list[str]] = {}
    for project, first in plan.mantle.items():
        groups.setdefault(first, []).append(project)
    out: list[MantleUsage] = []
    for first in sorted(groups):
        series = mantle_metrics.listed_series(metrics, groups[first],
                                              plan.now - first <= RECENT)
        if series:
            out += mantle_metrics.hourly(metrics, series, first, plan.now)
    return out


def record_sync(session: Session, clock: Clock, plan: SyncPlan, read: Readings,
                prices: PriceTable, adopted: int = 0) -> SyncResult:
    """Write the readings: hourly upserts (idempotent), backfill marks, read marks, the cursor."""
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
    mantle = _mantle_rows(session, read.mantle, prices)
    ledger.upsert(session, rows + mantle, plan.now)
    if plan.due is not None:
        _mark(session, "profile", [p for p in read.read if p in profiles], plan.now)
    _mark(session, "mantle", list(plan.mantle), plan.now)
    _advance(session, session.get(SyncCursor, CURSOR), floor_hour(plan.now), plan.now)
    return SyncResult(read.active, len(usage), backfilled, len(rows), adopted, plan.start, plan.now,
                      read.calls, plan.skipped, read.metrics_requested, len(mantle))


def _mantle_rows(session: Session, readings: list[MantleUsage],
                 prices: PriceTable) -> list[LedgerRow]:
    """Per (project meter, hour): the sum over the project's models, each priced on its own
    (AWS publishes no cache metric for mantle: cache columns stay 0)."""
    meters = {key: mid for key, mid in session.execute(
        select(Meter.key, Meter.id).where(Meter.kind == "mantle"))}
    merged: dict[tuple[int, datetime], list[int]] = {}
    for r in readings:
        meter_id = meters.get(r.project)
        if meter_id is None:  # unlinked since the plan
            continue
        unpriced = not prices.known(r.model)
        cost = prices.cost_micro_usd(r.model, r.input_tokens, r.output_tokens)
        add = (r.input_tokens, r.output_tokens, r.inferences, cost,
               (r.input_tokens + r.output_tokens) if unpriced else 0, r.inferences if unpriced else 0)
        acc = merged.setdefault((meter_id, r.hour), [0] * 6)
        for i, v in enumerate(add):
            acc[i] += v
    return [LedgerRow(mid, hour, i, o, 0, 0, n, c, ut, ur)
            for (mid, hour), (i, o, n, c, ut, ur) in merged.items()]


def _mark(session: Session, kind: str, keys: list[str], now: datetime) -> None:
    """Record that `keys` were read up to `now`: their next read starts at this hour."""
    position = floor_hour(now)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        existing = {m.key: m for m in session.scalars(select(PollMark).where(
            PollMark.kind == kind, PollMark.key.in_(chunk)))}
        for key in chunk:
            mark = existing.get(key)
            if mark is None:
                session.add(PollMark(kind=kind, key=key, position=position, read_at=now))
            else:
                mark.position, mark.read_at = position, now
    session.flush()


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
