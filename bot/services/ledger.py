"""The hourly usage ledger and its UTC-day rollup: idempotent upserts and adds in, per-subject
sums out. The only writer of `usage` and `usage_daily`: every write changes both in the
caller's transaction, so a day row is always the sum of its hours."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Subquery,
    TextClause,
    bindparam,
    delete,
    func,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from bot.models import Meter, Usage, UsageDay, UTCDateTime

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
Model = type[Usage] | type[UsageDay]


# The same definitions as `Totals`, for sums done in SQL, on the hourly rows or the day rollup
# (the two tables have the same value columns): the one place `tokens` is defined.
def all_input_sql(model: Model) -> ColumnElement[int]:
    """`Totals.all_input_tokens`: fresh input plus cache read and cache write tokens."""
    return model.input_tokens + model.cache_read_tokens + model.cache_write_tokens


def tokens_sql(model: Model) -> ColumnElement[int]:
    """`Totals.tokens`: all input plus output."""
    return all_input_sql(model) + model.output_tokens


ALL_INPUT_SQL = all_input_sql(Usage)
TOKENS_SQL = tokens_sql(Usage)
# The names `metric_sql` knows: `Totals.metric`'s, and the unpriced tokens
# (tests/integration/test_limit_usage.py checks that the two agree).
METRICS = ("tokens", "input_tokens", "output_tokens", "requests", "cost_usd", "unpriced_tokens")


def metric_sql(model: Model, name: str) -> ColumnElement[int]:
    """`Totals.metric(name)` in SQL, on `usage` or `usage_daily` (a name of METRICS)."""
    if name == "tokens":
        return tokens_sql(model)
    if name == "input_tokens":
        return all_input_sql(model)
    if name == "cost_usd":
        return model.cost_micro_usd  # type: ignore[return-value]
    if name in ("output_tokens", "requests", "unpriced_tokens"):
        return getattr(model, name)  # type: ignore[no-any-return]
    raise ValueError(f"no SQL for metric {name!r}")


VALUE_COLS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
               "requests", "cost_micro_usd", "unpriced_tokens", "unpriced_requests")


def floor_hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class LedgerRow:
    meter_id: int
    hour: datetime
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    cost_micro_usd: int = 0
    # calls to models without a price: in the token counts above, not in cost_micro_usd
    unpriced_tokens: int = 0
    unpriced_requests: int = 0


@dataclass(frozen=True)
class Totals:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    cost_micro_usd: int = 0
    # calls to models without a price: in the token counts above, not in cost_micro_usd
    unpriced_tokens: int = 0
    unpriced_requests: int = 0

    @property
    def all_input_tokens(self) -> int:
        """Input as the model read it: fresh input plus tokens read from and written to the
        prompt cache (each billed at its own rate, all of them input)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def tokens(self) -> int:
        """What a `tokens` limit counts: input + output + cache read + cache write."""
        return self.all_input_tokens + self.output_tokens

    def metric(self, name: str) -> int:
        """The value a limit on `name` is measured against (`input_tokens` includes cache tokens)."""
        return {"tokens": self.tokens, "input_tokens": self.all_input_tokens,
                "output_tokens": self.output_tokens, "requests": self.requests,
                "cost_usd": self.cost_micro_usd}[name]


def floor_day(at: datetime) -> datetime:
    """00:00 UTC of the UTC day holding `at`: the key of its `usage_daily` row."""
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(at: datetime) -> datetime:
    day = floor_day(at)
    return day if day == at else day + DAY


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _values(r: LedgerRow) -> tuple[int, ...]:
    return tuple(getattr(r, c) for c in VALUE_COLS)


Deltas = dict[tuple[int, datetime], list[int]]


def _add_delta(deltas: Deltas, meter_id: int, hour: datetime, values: Sequence[int]) -> None:
    acc = deltas.setdefault((meter_id, floor_day(hour)), [0] * len(VALUE_COLS))
    for i, v in enumerate(values):
        acc[i] += v


def _apply_days(session: Session, deltas: Deltas) -> None:
    """Add each (meter, UTC day) delta to its `usage_daily` row, in key order (so concurrent
    writers lock day rows in the same order), as `x = x + excluded.x`: commutes with other
    transactions' deltas to the same day."""
    changed = sorted((k, v) for k, v in deltas.items() if any(v))
    if not changed:
        return
    if _is_pg(session):
        session.connection().execute(_ADD_DAYS_PG, {"rows": _json_rows((m, d, v) for (m, d), v in changed)})
        return
    values = [{"meter_id": m, "day": d, **dict(zip(VALUE_COLS, v, strict=True))} for (m, d), v in changed]
    stmt = _insert(session)(UsageDay)
    table = UsageDay.__table__
    stmt = stmt.on_conflict_do_update(index_elements=["meter_id", "day"],
                                      set_={c: table.c[c] + stmt.excluded[c] for c in VALUE_COLS})
    session.connection().execute(stmt, values)


def upsert(session: Session, rows: Sequence[LedgerRow], now: datetime) -> int:
    """Insert or overwrite (meter, hour) rows: re-reading an hour replaces it, never adds.
    The day rollup gets new - old for each hour, in the same transaction.

    Exact under concurrent writers of the same hours on PostgreSQL: missing hours are first
    inserted as zeros (ON CONFLICT DO NOTHING waits for a concurrent insert of the same key
    and then leaves it), then the hours are locked and read (SELECT … FOR UPDATE, in key
    order), so `old` is the committed value this write replaces; SQLite writers are serial
    (BEGIN IMMEDIATE), so there it is a plain read. The same (meter, hour) twice in `rows`:
    the last one wins. On PostgreSQL each write is one statement over a JSON parameter; on
    SQLite a cached single-row form sent as an executemany.
    """
    if not rows:
        return 0
    latest = {(r.meter_id, r.hour): r for r in rows}
    keys = sorted(latest)
    conn = session.connection()
    pg = _is_pg(session)
    if pg:
        zero = (0,) * len(VALUE_COLS)
        conn.execute(_ZERO_HOURS_PG, {"rows": _json_rows((m, h, zero) for m, h in keys), "now": now})
    old = _stored_values(session, keys, lock=pg)
    if pg:
        conn.execute(_SET_HOURS_PG, {"rows": _json_rows((m, h, _values(latest[m, h])) for m, h in keys),
                                     "now": now})
    else:
        stmt = sqlite_insert(Usage)
        stmt = stmt.on_conflict_do_update(index_elements=["meter_id", "hour"],
                                          set_={c: stmt.excluded[c] for c in (*VALUE_COLS, "updated_at")})
        conn.execute(stmt, [{"meter_id": m, "hour": h, "updated_at": now,
                             **dict(zip(VALUE_COLS, _values(latest[m, h]), strict=True))} for m, h in keys])
    deltas: Deltas = {}
    zero = (0,) * len(VALUE_COLS)
    for key in keys:
        before = old.get(key, zero)
        _add_delta(deltas, key[0], key[1], [n - o for n, o in zip(_values(latest[key]), before, strict=True)])
    _apply_days(session, deltas)
    return len(rows)


_METERS_PER_READ = 1000  # bound parameters per SELECT (SQLite allows 32,766)


def _stored_values(session: Session, keys: list[tuple[int, datetime]], lock: bool
                   ) -> dict[tuple[int, datetime], tuple[int, ...]]:
    """The stored values of these hours: read per meter chunk over the keys' hour range (a
    plain range and IN list, where a (meter, hour) tuple IN list cost seconds to build at 20k
    keys), locked FOR UPDATE in key order when `lock` (PostgreSQL; a few neighbouring hours of
    the same meters may be locked with them)."""
    cols = [getattr(Usage, c) for c in VALUE_COLS]
    wanted = set(keys)
    lo, hi = min(h for _m, h in keys), max(h for _m, h in keys)
    meters = sorted({m for m, _h in keys})
    out: dict[tuple[int, datetime], tuple[int, ...]] = {}
    for i in range(0, len(meters), _METERS_PER_READ):
        q = (select(Usage.meter_id, Usage.hour, *cols)
             .where(Usage.meter_id.in_(meters[i:i + _METERS_PER_READ]), Usage.hour >= lo, Usage.hour <= hi)
             .order_by(Usage.meter_id, Usage.hour))
        for meter_id, hour, *values in session.execute(q.with_for_update() if lock else q).tuples():
            if (meter_id, hour) in wanted:
                out[meter_id, hour] = tuple(values)
    return out


def add(session: Session, rows: Sequence[LedgerRow], now: datetime) -> int:
    """Add (meter, hour) increments to what the ledger holds: for meters fed one event at a
    time — the usage stream and the gateway's /v1/usage — where each row is new usage, not a
    re-read of the same hour. The day rollup gets the same increments.

    Unlike `upsert`, running it twice counts twice: the caller makes it exactly-once (the
    stream's checkpoint and seen-event ids, the gateway's request id, commit in the same
    transaction). Rows for the same (meter, hour) must be merged first (one statement cannot
    update a row twice).
    """
    if not rows:
        return 0
    ordered = sorted(rows, key=lambda r: (r.meter_id, r.hour))  # lock order, as in `upsert`
    if _is_pg(session):
        session.connection().execute(_ADD_HOURS_PG, {
            "rows": _json_rows((r.meter_id, r.hour, _values(r)) for r in ordered), "now": now})
    else:
        stmt = sqlite_insert(Usage)
        table = Usage.__table__
        stmt = stmt.on_conflict_do_update(
            index_elements=["meter_id", "hour"],
            set_={**{c: table.c[c] + stmt.excluded[c] for c in VALUE_COLS},
                  "updated_at": stmt.excluded.updated_at})
        session.connection().execute(stmt, [{"meter_id": r.meter_id, "hour": r.hour, "updated_at": now,
                                             **{c: getattr(r, c) for c in VALUE_COLS}} for r in ordered])
    deltas: Deltas = {}
    for r in ordered:
        _add_delta(deltas, r.meter_id, r.hour, _values(r))
    _apply_days(session, deltas)
    return len(rows)


def delete_hours(session: Session, meter_ids: Select[tuple[int]], start: datetime,
                 end: datetime) -> int:
    """Delete these meters' hours in [start, end) and take them out of the day rollup (the
    deleted values come back from DELETE … RETURNING: on PostgreSQL the row versions
    actually deleted, after any concurrent writer of them committed)."""
    stmt = (delete(Usage).where(Usage.meter_id.in_(meter_ids), Usage.hour >= start, Usage.hour < end)
            .returning(Usage.meter_id, Usage.hour, *(getattr(Usage, c) for c in VALUE_COLS))
            .execution_options(synchronize_session=False))
    deltas: Deltas = {}
    n = 0
    for meter_id, hour, *values in session.execute(stmt).tuples():
        _add_delta(deltas, meter_id, hour, [-v for v in values])
        n += 1
    _apply_days(session, deltas)
    return n


# ---- PostgreSQL: a batch of increments as one statement -------------------------------------
# The rows travel as one JSON parameter: one round trip and one parse for the whole batch, where
# an executemany sends one INSERT a row (the usage stream adds about one row per call). JSON
# rather than arrays: psycopg adapts a list element by element.

def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _naive_utc(at: datetime) -> str:
    """How the ledger stores a time (as `UTCDateTime` does): naive UTC, here as ISO text."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _json_rows(rows: Iterable[tuple[int, datetime, Sequence[int]]]) -> str:
    """[[meter_id, time, v0, v1, …], …] with the values in VALUE_COLS' order."""
    return json.dumps([[m, _naive_utc(t), *v] for m, t, v in rows])


def _add_pg(table: str, key: str, stamp: bool, how: str = "add") -> TextClause:
    """INSERT … SELECT FROM json_array_elements(:rows) ON CONFLICT: `add` the values to the
    stored ones, `set` them in their place, or `keep` what is stored (DO NOTHING)."""
    cols = ", ".join(VALUE_COLS)
    casts = ", ".join(f"CAST(r->>{i + 2} AS bigint)" for i in range(len(VALUE_COLS)))
    sets = ", ".join(f"{c} = {table}.{c} + excluded.{c}" if how == "add" else f"{c} = excluded.{c}"
                     for c in VALUE_COLS) + (", updated_at = excluded.updated_at" if stamp else "")
    action = "DO NOTHING" if how == "keep" else f"DO UPDATE SET {sets}"
    stmt = text(
        f"INSERT INTO {table} (meter_id, {key}, {cols}{', updated_at' if stamp else ''}) "
        f"SELECT CAST(r->>0 AS integer), CAST(r->>1 AS timestamp), {casts}{', :now' if stamp else ''} "
        f"FROM json_array_elements(CAST(:rows AS json)) AS r "
        f"ON CONFLICT (meter_id, {key}) {action}")
    params: list[BindParameter[Any]] = [bindparam("rows", type_=String())]
    if stamp:
        params.append(bindparam("now", type_=UTCDateTime()))
    return stmt.bindparams(*params)


_ADD_HOURS_PG = _add_pg("usage", "hour", stamp=True)
_SET_HOURS_PG = _add_pg("usage", "hour", stamp=True, how="set")
_ZERO_HOURS_PG = _add_pg("usage", "hour", stamp=True, how="keep")
_ADD_DAYS_PG = _add_pg("usage_daily", "day", stamp=False)


# ---- reads --------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A piece of a sum over hour buckets: the hours [lo, hi) of `usage`, or (daily) the UTC
    days [lo, hi) of `usage_daily`, added (sign 1) or taken away (sign -1)."""

    daily: bool
    lo: datetime
    hi: datetime
    sign: int = 1

    @property
    def model(self) -> Model:
        return UsageDay if self.daily else Usage

    @property
    def key(self) -> ColumnElement[datetime]:
        """The column the range is on (`usage.hour` or `usage_daily.day`)."""
        return UsageDay.day if self.daily else Usage.hour  # type: ignore[return-value]

    @property
    def rows_per_meter(self) -> int:
        """Rows a meter has at most in the span (to weigh the cost of reading it)."""
        return (self.hi - self.lo) // DAY if self.daily else _hours(self.lo, self.hi)


# A day row costs about what an hour row does to read; reading it instead of 24 hours pays.
_DAY_COST = 1


def _hours(lo: datetime, hi: datetime) -> int:
    """How many hour buckets start in [lo, hi)."""
    if hi <= lo:
        return 0
    first = floor_hour(lo) if floor_hour(lo) == lo else floor_hour(lo) + HOUR
    return max(0, -(-(hi - first) // HOUR))


def span_rows(p: Span, empty_from: datetime | None = None) -> int:
    """What reading `p` costs, in rows per meter (hours from `empty_from` on: none, see `spans`)."""
    if p.daily:
        return p.rows_per_meter * _DAY_COST
    return p.rows_per_meter if empty_from is None else _hours(p.lo, min(p.hi, empty_from))


def spans(start: datetime, end: datetime, empty_from: datetime | None = None) -> list[Span]:
    """The cheapest way to sum the hour buckets that start in [start, end) from whole UTC days
    of `usage_daily` and hour edges of `usage` (pure). Hours from `empty_from` on (the hours
    after now) are priced as free to read: none is stored yet, so today's day row less the
    hours after now is cheaper than the hours before it. Only the choice depends on it: any
    choice sums exactly [start, end).

    Each edge either adds the hours between it and the next whole day, or takes whole days
    up to the edge's own day and subtracts the hours beyond it — whichever reads fewer rows:
    a Europe/Berlin day (23:00–23:00 UTC) is one day row plus one hour added and one taken
    away, not 24 hours. All sums are additive, so the pieces add up exactly. Without a
    whole day to gain (short spans) it is the hours alone.
    """
    if end <= start:
        return []

    def rows(p: Span) -> int:
        return span_rows(p, empty_from)

    best = (rows(Span(False, start, end)), [Span(False, start, end)])
    for lo in sorted({floor_day(start), ceil_day(start)}):
        for hi in sorted({floor_day(end), ceil_day(end)}):
            if hi <= lo:
                continue
            pieces = [Span(True, lo, hi)]
            if lo < start:
                pieces.append(Span(False, lo, start, -1))
            elif start < lo:
                pieces.append(Span(False, start, lo))
            if hi < end:
                pieces.append(Span(False, hi, end))
            elif end < hi:
                pieces.append(Span(False, end, hi, -1))
            cost = sum(map(rows, pieces))
            if cost < best[0]:
                best = (cost, pieces)
    return best[1]


def span_select(span: Span, exprs: Callable[[Model], Sequence[ColumnElement[Any]]],
                where: Callable[[Model], ColumnElement[bool]] | None = None) -> Select[Any]:
    """SELECT meter_id, v0, v1, … FROM the span's table over its range, the values being
    `exprs(model)` (negated for a subtracted span), rows filtered by `where(model)` if given."""
    model = span.model
    cols = [e if span.sign > 0 else -e for e in exprs(model)]
    q = (select(model.meter_id.label("meter_id"), *(c.label(f"v{i}") for i, c in enumerate(cols)))
         .where(span.key >= span.lo, span.key < span.hi))
    return q if where is None else q.where(where(model))


def _value_exprs(model: Model) -> list[ColumnElement[Any]]:
    return [getattr(model, c) for c in VALUE_COLS]


def totals(session: Session, subject_ids: Iterable[int], start: datetime,
           end: datetime) -> Totals:
    """Sum of every meter of these subjects over the hour buckets that start in [start, end),
    read from whole UTC days of the rollup and hourly edges (`spans`); equal to
    `hourly_totals`.

    Not floored: a rolling window starting at 10:30 begins with the 11:00 bucket, so
    consecutive periods never count the same bucket twice.
    """
    ids = list(subject_ids)
    pieces = spans(start, end)
    if not ids or not pieces:
        return Totals()
    meters = select(Meter.id).where(Meter.subject_id.in_(ids))
    parts = [span_select(p, _value_exprs, lambda m: m.meter_id.in_(meters)) for p in pieces]
    rows = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    q = select(*(func.coalesce(func.sum(rows.c[f"v{i}"]), 0) for i in range(len(VALUE_COLS))))
    return Totals(*(int(v) for v in session.execute(q).one()))


def hourly_totals(session: Session, subject_ids: Iterable[int], start: datetime,
                  end: datetime) -> Totals:
    """`totals` from the hourly rows alone: the reference the rollup is checked against."""
    ids = list(subject_ids)
    if not ids:
        return Totals()
    cols = [func.coalesce(func.sum(getattr(Usage, c)), 0) for c in VALUE_COLS]
    q = (select(*cols).join(Meter, Meter.id == Usage.meter_id)
         .where(Meter.subject_id.in_(ids), Usage.hour >= start, Usage.hour < end))
    row = session.execute(q).one()
    return Totals(*(int(v) for v in row))


def metrics_by_group(session: Session, groups: Subquery, metrics: Collection[str], start: datetime,
                     end: datetime, rollup: bool = True) -> dict[int, dict[str, int]]:
    """`totals(...).metric(m)` for each of `metrics` (names of METRICS) and many groups of
    subjects, in one statement: `groups` has columns `group_id` and `subject_id`, one row per
    (group, subject), no pair twice; a group sums every meter of its subjects over the hour
    buckets that start in [start, end). Groups with no usage there are absent (their values
    are 0).

    Read like `totals`: whole UTC days from the rollup and hour edges (`spans`), each piece
    limited to the groups' meters, UNION ALL-ed and summed per meter, then per group (a meter
    counts in every group holding its owner). Only the asked sums are computed (each costs per
    ledger row read). `rollup` False reads the hourly rows alone (the bench's baseline)."""
    names = sorted(metrics)
    pieces = spans(start, end) if rollup else [Span(False, start, end)]
    if not names or not pieces:
        return {}
    meters = select(Meter.id).where(Meter.subject_id.in_(select(groups.c.subject_id)))

    def exprs(model: Model) -> list[ColumnElement[Any]]:
        return [metric_sql(model, m) for m in names]

    parts = [span_select(p, exprs, lambda m: m.meter_id.in_(meters)) for p in pieces]
    rows = union_all(*parts).subquery() if len(parts) > 1 else parts[0].subquery()
    meter_sums = (func.sum(rows.c[f"v{i}"]).label(f"s{i}") for i in range(len(names)))
    per_meter = select(rows.c.meter_id, *meter_sums).group_by(rows.c.meter_id).subquery()
    q = (select(groups.c.group_id, *(func.sum(per_meter.c[f"s{i}"]) for i in range(len(names))))
         .select_from(groups)
         .join(Meter, Meter.subject_id == groups.c.subject_id)
         .join(per_meter, per_meter.c.meter_id == Meter.id)
         .group_by(groups.c.group_id))
    return {int(gid): {m: int(v or 0) for m, v in zip(names, sums, strict=True)}
            for gid, *sums in session.execute(q)}


def daily_series(session: Session, subject_ids: Iterable[int], start: datetime,
                 end: datetime) -> list[tuple[datetime, int, int]]:
    """(hour, tokens, micro-usd) rows for charts and trends."""
    ids = list(subject_ids)
    q = (select(Usage.hour, func.sum(TOKENS_SQL),
                func.sum(Usage.cost_micro_usd))
         .join(Meter, Meter.id == Usage.meter_id)
         .where(Meter.subject_id.in_(ids), Usage.hour >= start, Usage.hour < end)
         .group_by(Usage.hour).order_by(Usage.hour))
    return [(h, int(t or 0), int(c or 0)) for h, t, c in session.execute(q)]
