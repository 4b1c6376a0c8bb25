"""The daily digest: yesterday's usage, who is close to a limit, who is revoked, what waits.

Pure reads: `build_digest` takes a Session and returns a `DigestData`; the job posts it.

How the numbers add up (nothing is counted twice where it is summed):

- **Overall** totals are the sum over every meter once (meters without a subject too).
- **Per subject** totals follow `/bedrock usage`: a user is its own meters; a team is its
  own meters plus every member's. A user in a team therefore shows in both lines; the
  per-subject list is never summed.
- **The chart** stacks by the subject that *owns* each meter (a team's stack is its own
  AIPs only; its members appear as themselves), plus `OTHERS` for the rest and for meters
  with no subject. The stacks partition the meters, so each day's bar is that day's
  overall total.

Scale (10k subjects × 30 days of hourly rows, a limit on each; `bench/bench_digest.py`): the
ledger never leaves the database and there is no query per subject. Every boundary the
per-meter read needs (the chart's first day, the digest's two days, the limit windows' starts
and ends) is computed in Python (DST-safe) and sorted; each read is a `GROUP BY meter` over a
range (whole UTC days of the rollup and hourly edges, `ledger.spans`; hours after `now` priced
as empty, so today is its day row less the empty hours), all UNION ALL-ed. Grouping by meter
alone keeps each hash table small: grouping by meter *and* an interval expression is 3-4×
slower at 10k meters. Between two neighbouring kept bounds (the chart's span before the two
days, each of the two days) every meter is read once; a limit window starting inside one splits
it only for that limit's meters (the later pieces read for them and taken from the whole,
`Part.less`). Outside, an interval is read only for the meters of the limits whose windows
reach into it — on PostgreSQL through the (meter, hour) key when they are few
(`PROBE_SHARE`), else filtered on their ids as one constant array. Each local day's total over
every meter is summed apart, per UTC day and edge hour (`_day_sums`), on a side connection
with the other small reads while the per-meter read is planned; the chart's few stacked
subjects per meter and day through the keys. Python folds the ~5·10^4 rows in numpy, selects
the lines and the limits at or above WATCH_PERCENT there, and makes objects only for those.

Limits are evaluated in bulk from the same rows, with exactly `limit_usage.limit_status`'s
window and bucket rules (`limit_usage.limit_window`; the integration tests check the two
agree); `limit_status` itself would be one query per limit.

Cache-read/-write token counts are not summed (the digest shows none; their cost is in
`cost_micro_usd`): in the `Totals` here they are always 0.
"""

from __future__ import annotations

import gc
import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from functools import lru_cache
from itertools import chain, pairwise
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

import numpy as np
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Double,
    Integer,
    Select,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    true,
    union,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from bot.models import Limit, Meter, RestoreRequest, Revocation, Subject, TeamMember, Usage, UsageDay
from bot.quantities import Window, window_bounds
from bot.services import billing, ledger, unpriced
from bot.services import raises as raise_service
from bot.services.billing import DayBill
from bot.services.ledger import Span, Totals
from bot.services.limit_usage import LimitStatus, limit_window
from bot.services.raises import RaiseView
from bot.services.unpriced import UnpricedSummary
from bot.services.usage import _forecast

WATCH_PERCENT = 80  # "who is above 80% of a limit" (design §5), whatever a limit's own warn levels
CHART_STACKS = 5
# Subject names are [a-z0-9._-]: a name with a space can never collide with a subject.
OTHERS = "all others"
_COLS = ("input_tokens", "output_tokens", "requests", "cost_micro_usd")

# In _COLS order. Floats when PostgreSQL summed as float8: integers all the same (every sum
# stays below 2**53, checked), made int where they leave this module.
Sums = tuple[float, float, float, float]
Covers = Callable[[int], list[int]]
_T = TypeVar("_T")


@dataclass(frozen=True)
class SubjectDay:
    """One subject's yesterday and the day before (a team includes its members)."""

    name: str
    kind: str
    slack_user_id: str | None
    totals: Totals
    previous: Totals


@dataclass(frozen=True)
class AtRisk:
    """A limit at or above WATCH_PERCENT, with the metric projected to the window's end
    (straight line; None for rolling windows and a window less than an hour old)."""

    status: LimitStatus
    kind: str
    forecast: int | None


@dataclass(frozen=True)
class RevokedLine:
    id: int
    subject: str
    kind: str
    reason: str
    note: str
    since: datetime
    by: str


@dataclass(frozen=True)
class PendingLine:
    id: int
    subject: str
    requester: str  # a Slack user id (or an actor label)
    reason: str
    created_at: datetime
    age: timedelta


@dataclass(frozen=True)
class ChartData:
    """Tokens per local day, stacked: the top subjects of the period, then OTHERS."""

    days: list[date]
    series: dict[str, list[int]]
    totals: list[int]


@dataclass(frozen=True)
class DigestData:
    day: date  # the local day the digest is about ("yesterday")
    start: datetime  # its bounds, UTC
    end: datetime
    now: datetime
    tz_name: str
    totals: Totals  # overall, every meter once
    previous: Totals  # the day before, same rule
    top: list[SubjectDay]
    at_risk: list[AtRisk]
    revocations: list[RevokedLine]
    requests: list[PendingLine]
    chart: ChartData
    subjects: list[SubjectDay] = field(default_factory=list)  # everyone with usage either day
    unpriced: UnpricedSummary | None = None  # the day's calls to models without a price
    bill: DayBill | None = None  # AWS's bill for the latest closed UTC day read from Cost Explorer
    raises: list[RaiseView] = field(default_factory=list)  # temporary raises granted that day

    @property
    def active_users(self) -> int:
        return sum(1 for s in self.subjects if s.kind == "user" and s.totals.tokens + s.totals.requests)


# ---- time ----------------------------------------------------------------------------

def day_starts(now: datetime, tz: tzinfo, days: int) -> list[datetime]:
    """UTC starts of the last `days` local days before today, then today's start
    (days + 1 boundaries). DST-safe: steps by whole local days, not by 24 hours."""
    starts = [window_bounds(Window.DAY, now, tz)[0]]
    for _ in range(days):
        starts.insert(0, window_bounds(Window.DAY, starts[0] - timedelta(seconds=1), tz)[0])
    return starts


def digest_day(now: datetime, tz: tzinfo) -> date:
    """The local date a digest built at `now` is about: yesterday in `tz`."""
    return day_starts(now, tz, 1)[0].astimezone(tz).date()


# ---- the one scan --------------------------------------------------------------------

# On PostgreSQL sum(bigint) accumulates in numeric/int128 state; summing the same integers as
# float8 is twice as fast and exact while every partial sum stays below 2**53 (9·10^15
# tokens, or $9bn, per meter and interval). Should any column's total come within a quarter
# of that (room for the rollup's day rows, whose edge hours are then subtracted), the exact
# form runs instead.
_FLOAT_EXACT = 2**53


def _sum(dialect: str, exact: bool, value: ColumnElement[Any]) -> ColumnElement[Any]:
    if dialect == "postgresql" and not exact:
        return func.sum(cast(value, Double))
    return cast(func.sum(value), BigInteger)


def _exprs(model: ledger.Model) -> list[ColumnElement[Any]]:
    """What is summed for each _COLS entry, from `usage` or `usage_daily`: "input_tokens" is
    all input, cache tokens included (`ledger.all_input_sql`), so the digest's Totals carry
    it as input and `tokens` and an `input_tokens` limit come out as everywhere else."""
    return [ledger.all_input_sql(model) if c == "input_tokens" else getattr(model, c) for c in _COLS]


# An interval only limits need is read for their meters. On PostgreSQL, when those are few,
# each one's hours are fetched through the (meter, hour) primary key instead of scanning the
# interval for everyone (the ledger is stored hour by hour, so a per-meter fetch touches a
# page per row: it pays when under ~a quarter of the meters are wanted).
PROBE_SHARE = 0.25
_PROBE_MIN = timedelta(hours=24)  # shorter intervals are cheap to scan anyway


@dataclass(frozen=True)
class Part:
    """[start, end) read into interval k: for every meter (windows None), or only for the
    meters of limits on one of `windows` (`meters` lists them, for the choice to probe).
    With `less`, the part splits a coarser read (itself in interval `less`, starting there
    and ending past this one) for these meters: its rows are also taken from `less`."""

    k: int
    start: datetime
    end: datetime
    windows: tuple[str, ...] | None
    meters: tuple[int, ...] = ()
    less: int | None = None


def _limited_meters(windows: tuple[str, ...]) -> Select[tuple[int]]:
    """Meters of the subjects limits on these windows cover: their subject, and a team's members."""
    covered = union(
        select(Limit.subject_id).where(Limit.window.in_(windows)),
        select(TeamMember.user_id).join(Limit, Limit.subject_id == TeamMember.team_id)
        .where(Limit.window.in_(windows)))
    return select(Meter.id).where(Meter.subject_id.in_(covered))


def _pieces(p: Part, rollup: bool, empty_from: datetime | None) -> list[Span]:
    """How part p is read: whole UTC days of the rollup and hourly edges (`ledger.spans`;
    hours from `empty_from` on hold no usage yet), or (rollup False, the reference the tests
    and the bench compare with) its hours."""
    return ledger.spans(p.start, p.end, empty_from) if rollup else [Span(False, p.start, p.end)]


def _part_select(p: Part, pieces: list[Span], dialect: str, exact: bool, probe: bool) -> Select[Any]:
    k = literal_column(str(p.k), Integer).label("k")
    if probe:
        return _probe_select(p, k, pieces, dialect, exact)
    where = None
    if p.windows is not None:
        # PostgreSQL: the meters _plan listed, as one array a hash table is made of (= ANY of
        # a constant array); sent as text, split by the immutable string_to_array (folded
        # into a constant when planned for its values, as the main engine always plans:
        # bot.db): psycopg spends ~1 µs in Python on each element of a list. SQLite: worked
        # out again in SQL from the limits.
        limited = (any_(cast(func.string_to_array(bindparam(f"ids_{p.k}", ",".join(map(str, p.meters)),
                                                            type_=Text), ","), ARRAY(Integer)))
                   if dialect == "postgresql" else _limited_meters(p.windows))

        def where(m: ledger.Model) -> ColumnElement[bool]:
            return m.meter_id == limited if dialect == "postgresql" else m.meter_id.in_(limited)
    selects = [ledger.span_select(piece, _exprs, where) for piece in pieces]
    rows = (union_all(*selects) if len(selects) > 1 else selects[0]).subquery(f"r_{p.k}")
    sums = [_sum(dialect, exact, rows.c[f"v{i}"]) for i in range(len(_COLS))]
    return select(k, rows.c.meter_id, *sums).group_by(rows.c.meter_id)


def _probe_select(p: Part, k: ColumnElement[Any], pieces: list[Span], dialect: str, exact: bool
                  ) -> Select[Any]:
    """Each wanted meter's rows fetched through the table's (meter, hour|day) key: a row per
    meter and piece (the fold adds a part's rows up)."""
    ids = func.unnest(bindparam(f"ids_{p.k}", list(p.meters), type_=ARRAY(Integer))) \
        .table_valued("id").render_derived(name=f"m_{p.k}")
    selects = []
    for j, piece in enumerate(pieces):
        m = piece.model
        values = [v if piece.sign > 0 else -v for v in _exprs(m)]
        per = (select(*(_sum(dialect, exact, v).label(f"v{i}") for i, v in enumerate(values)))
               .where(m.meter_id == ids.c.id, piece.key >= piece.lo, piece.key < piece.hi)
               .lateral(f"s_{p.k}_{j}"))
        selects.append(select(k, ids.c.id, *(per.c[f"v{i}"] for i in range(len(values))))
                       .select_from(ids.join(per, true())).where(per.c.v0.is_not(None)))
    return union_all(*selects) if len(selects) > 1 else selects[0]  # type: ignore[return-value]


# On PostgreSQL the parts are shared out between this many connections, run at once: the
# read is CPU-bound in the database, and one statement uses one core (the planner's own
# parallel plans start workers per part, which costs about what it saves here). The other
# connections see committed data, as of a few milliseconds apart.
CONNECTIONS = 2


def interval_sums(session: Session, parts: list[Part], n_meters: int, exact: bool = False,
                  rollup: bool = True, empty_from: datetime | None = None) -> list[Any]:
    """Rows (k, meter id, input, output, requests, micro-USD): each part's sums per meter
    with usage in it (floats on PostgreSQL: see _FLOAT_EXACT), several rows for one (k,
    meter) when probed. Grouped in the database: one statement (a UNION ALL of the parts),
    or on PostgreSQL one per connection. `rollup` False reads hours only (the reference);
    `empty_from`: the first hour after now (none stored yet: priced as free to read)."""
    conn = session.connection()
    dialect = conn.dialect.name
    pg = dialect == "postgresql"
    work: list[tuple[float, Select[Any]]] = []
    for p in parts:
        if p.windows is not None and not p.meters:
            continue
        pieces = _pieces(p, rollup, empty_from)
        probe = (pg and p.windows is not None and p.end - p.start >= _PROBE_MIN
                 and len(p.meters) <= PROBE_SHARE * n_meters)
        # Rough cost, to share the parts out: rows read (a probed row costs ~4 scanned). Hours
        # after now hold no rows: weighed by their hours they took a connection for
        # themselves while the other read the rest (a third more wall time at 10k limits).
        per_meter = sum(ledger.span_rows(piece, empty_from) for piece in pieces)
        cost = per_meter * (4 * len(p.meters) if probe else n_meters)
        work.append((cost, _part_select(p, pieces, dialect, exact, probe)))
    if not work:
        return []
    groups = _share(work, CONNECTIONS if pg else 1)
    if len(groups) == 1:
        rows = _fetch(conn, groups[0])
    else:
        with ThreadPoolExecutor(max_workers=len(groups) - 1) as pool:
            others = [pool.submit(_fetch_apart, conn.engine, g) for g in groups[1:]]
            rows = _fetch(conn, groups[0])
            for f in others:
                rows += f.result()
    if pg and not exact and any(sum(map(itemgetter(c), rows)) >= _FLOAT_EXACT / 4 for c in range(2, 6)):
        return interval_sums(session, parts, n_meters, exact=True, rollup=rollup, empty_from=empty_from)
    return rows


def _share(work: list[tuple[float, Select[Any]]], n: int) -> list[list[Select[Any]]]:
    """The parts in n groups of about equal cost (largest first, to the lightest group)."""
    groups: list[tuple[float, list[Select[Any]]]] = [(0.0, []) for _ in range(min(n, len(work)))]
    for cost, q in sorted(work, key=lambda w: -w[0]):
        i = min(range(len(groups)), key=lambda j: groups[j][0])
        groups[i] = (groups[i][0] + cost, [*groups[i][1], q])
    return [g for _c, g in groups if g]


def _fetch(conn: Connection, selects: list[Select[Any]]) -> list[Any]:
    if conn.dialect.name == "postgresql":
        # A dozen short aggregations: compiling them to machine code (JIT, on by default for
        # costly plans) takes longer than it saves. This transaction only.
        conn.exec_driver_sql("SET LOCAL jit = off")
        # The parts are shared between CONNECTIONS already, and a part over the rollup's
        # UNION ALL has no statistics on its groups (the planner guesses 200 meters, not 10^4):
        # its parallel partial aggregate then ran ~3x slower than a plain hash aggregate.
        conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    result = conn.execute(union_all(*selects) if len(selects) > 1 else selects[0])
    # Plain numbers, no type processing: the driver's tuples, without a Row object for each
    # of ~10^5 rows (a fifth of the digest's Python time).
    rows = list(result.cursor.fetchall())
    result.close()
    return rows


def _fetch_apart(engine: Engine, selects: list[Select[Any]]) -> list[Any]:
    return _apart(engine, lambda s: _fetch(s.connection(), selects))


def _apart(engine: Engine, read: Callable[[Session], _T]) -> _T:
    """`read` on a connection of its own (for another thread), rolled back: read only."""
    with engine.connect() as conn, Session(bind=conn) as session:
        try:
            return read(session)
        finally:
            conn.rollback()


def _totals(v: Sums) -> Totals:
    return Totals(input_tokens=int(v[0]), output_tokens=int(v[1]), requests=int(v[2]),
                  cost_micro_usd=int(v[3]))


class _Ledger:
    """The read intervals, folded per subject (the meter's owner; None: no subject) in numpy:
    `acc[slot, k]` holds the 4 sums of interval k. float64 when PostgreSQL summed as float8
    (exact integers: see _FLOAT_EXACT), else Python ints in object arrays (SQLite, and the
    exact re-read), so nothing rounds. About 10^5 rows: a Python loop over them was most of
    the digest's time. What a subject covers (a team: itself and its members, `groups`) is
    summed once per window asked for, for every subject at once.
    """

    def __init__(self, bounds: list[datetime], rows: Sequence[Any], owner: dict[int, int | None],
                 groups: dict[int, list[int]], less: dict[int, int]) -> None:
        self.index = {b: i for i, b in enumerate(bounds)}
        self.slot: dict[int | None, int] = {None: 0}
        for sid in (*owner.values(), *groups, *(m for ids in groups.values() for m in ids)):
            self.slot.setdefault(sid, len(self.slot))
        # A group's row is the sum of its members' rows (`_cover`): the pairs as index arrays.
        pairs = [(self.slot[g], self.slot[m]) for g, ids in groups.items() for m in ids]
        self._group_slots = np.array(sorted({g for g, _m in pairs}), dtype=np.int64)
        self._group_slots_rep = np.array([g for g, _m in pairs], dtype=np.int64)
        self._member_slots = np.array([m for _g, m in pairs], dtype=np.int64)
        exact = bool(rows) and not isinstance(rows[0][2], float)
        self._dtype: Any = object if exact else np.float64
        self.acc = np.zeros((len(self.slot), len(bounds) + 1, 4), dtype=self._dtype)
        if rows:
            flat = chain.from_iterable(rows)
            cols = np.fromiter(flat, dtype=self._dtype, count=6 * len(rows)).reshape(-1, 6)
            ks = cols[:, 0].astype(np.int64)
            meters = cols[:, 1].astype(np.int64)
            lut = np.zeros(max(int(meters.max()), max(owner, default=0)) + 1, dtype=np.int64)  # meter → slot
            for m, sid in owner.items():
                lut[m] = self.slot[sid]
            np.add.at(self.acc, (lut[meters], ks), cols[:, 2:6])
            if less:  # a split read's pieces, taken from its first interval (`Part.less`)
                from_k = np.zeros(len(bounds) + 1, dtype=np.int64)
                from_k[list(less)] = list(less.values())
                sub = np.flatnonzero(from_k[ks])
                np.add.at(self.acc, (lut[meters[sub]], from_k[ks[sub]]), -cols[sub, 2:6])
        self._covered: dict[tuple[str, int, int], Any] = {}

    def _cover(self, key: tuple[str, int, int], table: Callable[[], Any]) -> Any:
        """`table()` (4 sums per slot) with each group's row replaced by its members' total,
        plus a last row of zeros (`zero_row`: a subject with no slot); made once per `key`."""
        got = self._covered.get(key)
        if got is None:
            base = table()
            got = np.concatenate([base, np.zeros((1, 4), dtype=base.dtype)])
            if len(self._member_slots):
                got[self._group_slots] = 0
                np.add.at(got, self._group_slots_rep, base[self._member_slots])
            self._covered[key] = got
        return got

    @property
    def zero_row(self) -> int:
        """The row of `window`'s tables that is all zeros."""
        return len(self.slot)

    def slots_of(self, sids: Sequence[int]) -> Any:
        """Each subject's row in the tables (`zero_row` for one without a meter or member)."""
        z = self.zero_row
        return np.fromiter((self.slot.get(sid, z) for sid in sids), dtype=np.int64, count=len(sids))

    def window(self, start: datetime, end: datetime) -> Any:
        """What each slot covers over [start, end) (both are boundaries): rows of 4 sums."""
        i, j = self.index[start], self.index[end]
        return self._cover(("window", i, j), lambda: self.acc[:, i + 1:j + 1, :].sum(axis=1))

    def own_tokens(self, start: datetime, end: datetime) -> dict[int | None, int]:
        """Tokens (input + output) of each subject's own meters over [start, end) (both are
        boundaries; a team's members not included)."""
        i, j = self.index[start], self.index[end]
        per_slot = [int(v) for v in self.acc[:, i + 1:j + 1, 0:2].sum(axis=(1, 2)).tolist()]
        return {sid: per_slot[slot] for sid, slot in self.slot.items()}


# ---- the digest ----------------------------------------------------------------------

class _SubjectRow(NamedTuple):  # 10^4 of them per build: a tuple is made 3x faster than a dataclass
    id: int
    kind: str
    name: str
    slack_user_id: str | None


class _Side(NamedTuple):
    """What the build reads apart from the per-meter sums (`_build`'s `side`)."""

    overall: list[Sums]
    unpriced: UnpricedSummary
    revocations: list[RevokedLine]
    requests: list[PendingLine]
    bill: DayBill | None
    raises: list[RaiseView]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a digest is built. The build allocates ~10^5
    short-lived containers at once (driver rows, the lines); each burst set off full
    collections walking the whole heap, a third of its CPU at 10k subjects
    (bench/bench_digest.py). Reference counting frees them all the same. Left as found: of
    two overlapping builds, the one that turned it off turns it back on."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def build_digest(session: Session, now: datetime, tz: tzinfo, week_start: int, top_n: int = 10,
                 chart_days: int = 14, bill_divergence_pct: float = 10.0,
                 rollup: bool = True) -> DigestData:
    """Everything the daily digest shows, for the local day before `now` in `tz`. `rollup`
    False reads the hourly ledger alone (the reference the tests and the bench compare with)."""
    with _collector_paused(), ThreadPoolExecutor(max_workers=1) as pool:
        return _build(session, now, tz, week_start, top_n, chart_days, bill_divergence_pct, rollup, pool)


def _build(session: Session, now: datetime, tz: tzinfo, week_start: int, top_n: int, chart_days: int,
           bill_divergence_pct: float, rollup: bool, pool: ThreadPoolExecutor) -> DigestData:
    chart_days = max(1, chart_days)
    starts = day_starts(now, tz, max(chart_days, 2))
    first = len(starts) - 1 - chart_days  # the chart's first day
    y_start, y_end = starts[-2], starts[-1]

    def side(s: Session) -> _Side:
        return _Side(_day_totals(s, starts, rollup), unpriced.summary(s, y_start, y_end), _revocations(s),
                     _pending(s, now), billing.latest_day_bill(s, now, bill_divergence_pct),
                     raise_service.granted_between(s, y_start, y_end))

    conn = session.connection()  # Core rows for the big reads: no ORM bookkeeping
    # PostgreSQL: the days' totals over every meter, the day's unpriced usage (a fifth of the
    # build's database time) and the small reads are made on another connection meanwhile,
    # while this thread works in Python and the per-meter read has not taken both cores yet.
    aside = pool.submit(_apart, conn.engine, side) if conn.dialect.name == "postgresql" else None
    subjects = {sid: _SubjectRow(sid, kind, name, slack) for sid, kind, name, slack in conn.execute(
        select(Subject.id, Subject.kind, Subject.name, Subject.slack_user_id)).tuples().all()}
    members: dict[int, list[int]] = defaultdict(list)
    for team_id, user_id in conn.execute(select(TeamMember.team_id, TeamMember.user_id)).tuples().all():
        members[team_id].append(user_id)

    def covered(sid: int) -> list[int]:
        s = subjects.get(sid)
        return [sid, *members.get(sid, [])] if s is not None and s.kind == "team" else [sid]

    limits = conn.execute(select(Limit.id, Limit.subject_id, Limit.metric, Limit.amount, Limit.window,
                                 Limit.action, cast(Limit.warn, Text).label("warn"))).all()
    windows = {w: limit_window(w, now, tz, week_start) for w in {lim.window for lim in limits}}
    # Per meter: the chart's whole span, the digest's two days and the limits' windows; each
    # day's total over every meter apart (`_day_totals`).
    kept = {starts[first], *starts[-3:]}
    bounds = sorted({*kept, *(b for s, _e, q in windows.values() for b in (s, q))})
    owner: dict[int, int | None] = dict(conn.execute(select(Meter.id, Meter.subject_id)).tuples().all())
    parts = _plan(bounds, sorted(kept), limits, windows, covered, owner)
    rows = interval_sums(session, parts, len(owner), rollup=rollup,
                         empty_from=ledger.floor_hour(now) + ledger.HOUR)
    got = aside.result() if aside is not None else side(session)
    overall = got.overall
    groups = {sid: covered(sid) for sid, row in subjects.items() if row.kind == "team"}
    folded = _Ledger(bounds, rows, owner, groups, {p.k: p.less for p in parts if p.less is not None})

    per_subject = _per_subject(folded, subjects, starts)
    top = [s for s in per_subject if s.totals.cost_micro_usd or s.totals.tokens][:max(0, top_n)]
    named = _stacks(folded, subjects, starts[first], starts[-1])
    return DigestData(
        day=y_start.astimezone(tz).date(), start=y_start, end=y_end, now=now,
        tz_name=str(getattr(tz, "key", tz)),
        totals=_totals(overall[-1]),
        previous=_totals(overall[-2]),
        top=top,
        at_risk=_at_risk(limits, windows, folded, subjects, now),
        revocations=got.revocations,
        requests=got.requests,
        chart=_chart(subjects, named, _stack_tokens(session, named, owner, starts[first:], rollup),
                     overall[first:], starts[first:], tz),
        subjects=per_subject,
        unpriced=got.unpriced,
        bill=got.bill,
        raises=got.raises,
    )


def _plan(bounds: list[datetime], kept: list[datetime], limits: Sequence[Any],
          windows: dict[str, tuple[datetime, datetime, datetime]], covered: Covers,
          owner: dict[int, int | None]) -> list[Part]:
    """Which interval is read for whom. Between two neighbouring `kept` bounds (the chart's
    days, the digest's two days) every meter is read at once; a window starting or ending in
    between splits that read only for the meters of its limits (the later pieces read for
    them and taken from the first, `Part.less`): at 10k limits half the rows of reading
    every piece for every meter. Outside the kept span, each interval for the meters of the
    limits whose windows reach into it."""
    by_window: dict[str, set[int]] = defaultdict(set)  # window → the subjects its limits cover
    for lim in limits:
        by_window[lim.window].update(covered(lim.subject_id))
    meters_of: dict[int, list[int]] = defaultdict(list)
    for meter_id, sid in owner.items():
        if sid is not None:
            meters_of[sid].append(meter_id)
    owned = sum(map(len, meters_of.values()))
    wanted: dict[tuple[str, ...], tuple[int, ...]] = {}

    def part(k: int, a: datetime, b: datetime, ws: tuple[str, ...], less: int | None = None) -> Part:
        meters = wanted.get(ws)
        if meters is None:  # neighbouring intervals mostly have the same windows
            subjects = set().union(*(by_window[w] for w in ws))
            meters = wanted[ws] = tuple(sorted(m for sid in subjects for m in meters_of.get(sid, ())))
        if meters and len(meters) == owned:
            # Every meter with a subject: read without a filter (a fifth of the interval's
            # time at 10k meters). Meters without one add to the None slot, never read here.
            return Part(k, a, b, None, less=less)
        return Part(k, a, b, ws, meters, less)

    intervals = list(enumerate(pairwise(bounds), 1))
    parts = []
    for ca, cb in pairwise(kept):
        inside = [(k, a, b) for k, (a, b) in intervals if ca <= a and b <= cb]
        parts.append(Part(inside[0][0], ca, cb, None))
        split = tuple(sorted(w for w, (start, _end, q_end) in windows.items()
                             if ca < start < cb or ca < q_end < cb))
        parts += [part(k, a, b, split, less=inside[0][0]) for k, a, b in inside[1:]]
    for k, (a, b) in intervals:
        if not (kept[0] <= a and b <= kept[-1]):
            parts.append(part(k, a, b, tuple(sorted(w for w, (start, _end, q_end) in windows.items()
                                                    if start <= a and b <= q_end))))
    return parts


def _columns(table: Any) -> list[list[int]]:
    """Rows of 4 sums as 4 lists of Python ints, one a column (float64 sums are exact integers:
    see _FLOAT_EXACT): plain ints, not a list per row for the cycle collector to track."""
    return (table if table.dtype == object else table.astype(np.int64)).T.tolist()  # type: ignore[no-any-return]


def _per_subject(folded: _Ledger, subjects: dict[int, _SubjectRow], starts: list[datetime]
                 ) -> list[SubjectDay]:
    """Yesterday and the day before for every subject with usage on either (a team with its
    members), by cost, then tokens, then name. Filtered in numpy: objects only for the lines."""
    rows = list(subjects.values())
    slots = folded.slots_of([r.id for r in rows])
    now_t, before = folded.window(starts[-2], starts[-1])[slots], folded.window(starts[-3], starts[-2])[slots]
    keep = np.flatnonzero((now_t != 0).any(axis=1) | (before != 0).any(axis=1))
    (a, b, c, d), (e, f, g, h), kept = _columns(now_t[keep]), _columns(before[keep]), keep.tolist()
    order = sorted(range(len(kept)), key=lambda i: (-d[i], -(a[i] + b[i]), rows[kept[i]].name))
    out = []
    for i in order:
        s = rows[kept[i]]
        out.append(SubjectDay(s.name, s.kind, s.slack_user_id, Totals(a[i], b[i], 0, 0, c[i], d[i]),
                              Totals(e[i], f[i], 0, 0, g[i], h[i])))
    return out


# Where `Totals.metric(name)` is in the row [tokens, input, output, requests, micro-USD].
_METRIC_COL = {"tokens": 0, "input_tokens": 1, "output_tokens": 2, "requests": 3, "cost_usd": 4}


@lru_cache(maxsize=64)
def _warn(text: str) -> tuple[int, ...]:
    """A limit's warn levels from their JSON text (a handful of distinct lists among many limits)."""
    return tuple(json.loads(text))


def _at_risk(limits: Sequence[Any], windows: dict[str, tuple[datetime, datetime, datetime]],
             folded: _Ledger, subjects: dict[int, _SubjectRow], now: datetime) -> list[AtRisk]:
    """Limits at or above WATCH_PERCENT: every limit's use compared in numpy, per window; a
    LimitStatus made only for those near it (within a point: the exact test is its own)."""
    by_window: dict[str, list[Any]] = defaultdict(list)
    for lim in limits:
        if lim.subject_id in subjects:
            by_window[lim.window].append(lim)
    out = []
    for window, lims in by_window.items():
        start, end, q_end = windows[window]
        win = Window(window)
        table = folded.window(start, q_end)[folded.slots_of([lim.subject_id for lim in lims])]
        values = np.column_stack([table[:, 0] + table[:, 1], table])
        used = values[np.arange(len(lims)), [_METRIC_COL[lim.metric] for lim in lims]]
        amount = np.array([lim.amount for lim in lims], dtype=table.dtype)
        near = np.flatnonzero(used * 100 >= amount * (WATCH_PERCENT - 1))
        for i, a, b, c, d in zip(near.tolist(), *_columns(table[near]), strict=True):
            lim = lims[i]
            # Totals(a, b, 0, 0, c, d).metric(lim.metric), without the Totals
            metric_used = (a + b, a, b, c, d)[_METRIC_COL[lim.metric]]
            status = LimitStatus(lim.id, subjects[lim.subject_id].name, lim.metric, lim.amount, lim.window,
                                 metric_used, start, end, lim.action, _warn(lim.warn))
            if status.percent < WATCH_PERCENT:
                continue
            projected = _forecast(Totals(a, b, 0, 0, c, d), start, end, now, win)
            out.append(AtRisk(status, subjects[lim.subject_id].kind,
                              projected.metric(lim.metric) if projected else None))
    out.sort(key=lambda a: (-a.status.percent, a.status.subject, a.status.metric, a.status.window))
    return out


def _revocations(session: Session) -> list[RevokedLine]:
    q = (select(Revocation.id, Subject.name, Subject.kind, Revocation.reason, Revocation.note,
                Revocation.revoked_at, Revocation.revoked_by)
         .join(Subject, Subject.id == Revocation.subject_id)
         .where(Revocation.state == "active").order_by(Revocation.revoked_at, Revocation.id))
    return [RevokedLine(*row) for row in session.execute(q)]


def _pending(session: Session, now: datetime) -> list[PendingLine]:
    """Requests still waiting for a decision (a pending request past its expiry is not)."""
    q = (select(RestoreRequest.id, Subject.name, RestoreRequest.requester, RestoreRequest.reason,
                RestoreRequest.created_at)
         .join(Revocation, Revocation.id == RestoreRequest.revocation_id)
         .join(Subject, Subject.id == Revocation.subject_id)
         .where(RestoreRequest.status == "pending", RestoreRequest.expires_at > now)
         .order_by(RestoreRequest.created_at, RestoreRequest.id))
    return [PendingLine(rid, name, requester, reason, created, now - created)
            for rid, name, requester, reason, created in session.execute(q)]


def _day_sums(session: Session, starts: list[datetime], rollup: bool, meters: Sequence[int] | None = None
              ) -> dict[int | None, list[list[int]]]:
    """Each local day's sums (exact) over every meter (key None), or per meter of `meters`
    (those with usage in the days). The days' pieces (`ledger.spans`) are read once each,
    summed per UTC day of the rollup and per hour of the edges (a few dozen rows a meter),
    then added up per local day here: neighbouring days share their edge hour."""
    pieces = [(d, piece) for d, (a, b) in enumerate(pairwise(starts))
              for piece in (ledger.spans(a, b) if rollup else [Span(False, a, b)])]
    selects = []
    for daily in (True, False):
        model: ledger.Model = UsageDay if daily else Usage
        key = UsageDay.day if daily else Usage.hour
        tag = literal_column("1" if daily else "0", Integer).label("daily")
        meter = model.meter_id if meters is not None else cast(None, Integer)
        for lo, hi in _merged([(p.lo, p.hi) for _d, p in pieces if p.daily == daily]):
            q = select(tag, meter.label("meter_id"), key.label("at"),
                       *(cast(func.sum(v), BigInteger) for v in _exprs(model))).where(key >= lo, key < hi)
            if meters is not None:
                q = q.where(model.meter_id.in_(list(meters))).group_by(model.meter_id)
            selects.append(q.group_by(key))
    rows = session.connection().execute(union_all(*selects)).tuples().all() if selects else []
    out: dict[int | None, list[list[int]]] = {}
    for daily, meter_id, at, *values in rows:
        days = out.setdefault(meter_id, [[0, 0, 0, 0] for _ in range(len(starts) - 1)])
        for d, p in pieces:
            if p.daily == bool(daily) and p.lo <= at < p.hi:
                for c, v in enumerate(values):
                    days[d][c] += p.sign * int(v)
    return out


def _day_totals(session: Session, starts: list[datetime], rollup: bool) -> list[Sums]:
    """Each local day's total over every meter."""
    days = _day_sums(session, starts, rollup).get(None) or [[0, 0, 0, 0] for _ in range(len(starts) - 1)]
    return [(a, b, c, d) for a, b, c, d in days]


def _merged(ranges: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """The same instants as these [lo, hi) ranges, overlapping and touching ones joined."""
    out: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _stacks(folded: _Ledger, subjects: dict[int, _SubjectRow], start: datetime, end: datetime) -> list[int]:
    """The CHART_STACKS subjects whose own meters used the most tokens over [start, end)."""
    own = folded.own_tokens(start, end)
    period = {sid: t for sid, t in own.items() if sid is not None and sid in subjects and t > 0}
    return sorted(period, key=lambda sid: (-period[sid], subjects[sid].name))[:CHART_STACKS]


def _stack_tokens(session: Session, named: list[int], owner: dict[int, int | None], starts: list[datetime],
                  rollup: bool) -> dict[int, list[int]]:
    """Tokens per local day of each stacked subject's own meters (a few: read through the
    (meter, hour|day) keys)."""
    out = {sid: [0] * (len(starts) - 1) for sid in named}
    meters = [m for m, sid in owner.items() if sid in out]
    for meter, days in (_day_sums(session, starts, rollup, meters) if meters else {}).items():
        sid = owner[meter] if meter is not None else None
        assert sid is not None  # only the stacked subjects' meters were read
        out[sid] = [t + i + o for t, (i, o, _r, _c) in zip(out[sid], days, strict=True)]
    return out


def _chart(subjects: dict[int, _SubjectRow], named: list[int], per_day: dict[int, list[int]],
           overall: list[Sums], starts: list[datetime], tz: tzinfo) -> ChartData:
    """Tokens per day by the meter's owning subject: the top CHART_STACKS, then OTHERS."""
    totals = [int(v[0] + v[1]) for v in overall]
    series = {subjects[sid].name: per_day[sid] for sid in named}
    rest = [t - sum(row[i] for row in series.values()) for i, t in enumerate(totals)]
    if any(rest):
        series[OTHERS] = rest
    return ChartData([a.astimezone(tz).date() for a in starts[:-1]], series, totals)
