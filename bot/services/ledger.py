"""The hourly usage ledger: idempotent upserts in, per-subject sums out."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Subquery, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.models import Meter, Usage

HOUR = timedelta(hours=1)
# The same definitions as `Totals`, for sums done in SQL: the one place `tokens` is defined.
ALL_INPUT_SQL = Usage.input_tokens + Usage.cache_read_tokens + Usage.cache_write_tokens
TOKENS_SQL = ALL_INPUT_SQL + Usage.output_tokens
# `Totals.metric` in SQL, and the unpriced tokens (tests/integration/test_limit_usage.py checks
# that the two agree).
METRIC_SQL: dict[str, Any] = {
    "tokens": TOKENS_SQL, "input_tokens": ALL_INPUT_SQL, "output_tokens": Usage.output_tokens,
    "requests": Usage.requests, "cost_usd": Usage.cost_micro_usd, "unpriced_tokens": Usage.unpriced_tokens}
_VALUE_COLS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
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


def upsert(session: Session, rows: Sequence[LedgerRow], now: datetime) -> int:
    """Insert or overwrite (meter, hour) rows: re-reading an hour replaces it, never adds.

    One single-row INSERT … ON CONFLICT sent as an executemany: compiled once and cached
    (a 2,000-row multi-VALUES statement was recompiled per chunk, ~10x slower at 10k profiles).
    """
    if not rows:
        return 0
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Usage)
    stmt = stmt.on_conflict_do_update(index_elements=["meter_id", "hour"],
                                      set_={c: stmt.excluded[c] for c in (*_VALUE_COLS, "updated_at")})
    values = [{"meter_id": r.meter_id, "hour": r.hour, "updated_at": now,
               **{c: getattr(r, c) for c in _VALUE_COLS}} for r in rows]
    session.connection().execute(stmt, values)
    return len(rows)


def add(session: Session, rows: Sequence[LedgerRow], now: datetime) -> int:
    """Add (meter, hour) increments to what the ledger holds: for meters fed one event at a
    time — the usage stream and the gateway's /v1/usage — where each row is new usage, not a
    re-read of the same hour.

    Unlike `upsert`, running it twice counts twice: the caller makes it exactly-once (the
    stream's checkpoint and seen-event ids, the gateway's request id, commit in the same
    transaction). Rows for the same (meter, hour) must be merged first (one statement cannot
    update a row twice).
    """
    if not rows:
        return 0
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Usage)
    table = Usage.__table__
    stmt = stmt.on_conflict_do_update(
        index_elements=["meter_id", "hour"],
        set_={**{c: table.c[c] + stmt.excluded[c] for c in _VALUE_COLS},
              "updated_at": stmt.excluded.updated_at})
    values = [{"meter_id": r.meter_id, "hour": r.hour, "updated_at": now,
               **{c: getattr(r, c) for c in _VALUE_COLS}} for r in rows]
    session.connection().execute(stmt, values)
    return len(rows)


def totals(session: Session, subject_ids: Iterable[int], start: datetime,
           end: datetime) -> Totals:
    """Sum of every meter of these subjects over the hour buckets that start in [start, end).

    Not floored: a rolling window starting at 10:30 begins with the 11:00 bucket, so
    consecutive periods never count the same bucket twice.
    """
    ids = list(subject_ids)
    if not ids:
        return Totals()
    cols = [func.coalesce(func.sum(getattr(Usage, c)), 0) for c in _VALUE_COLS]
    q = (select(*cols).join(Meter, Meter.id == Usage.meter_id)
         .where(Meter.subject_id.in_(ids), Usage.hour >= start, Usage.hour < end))
    row = session.execute(q).one()
    return Totals(*(int(v) for v in row))


def metrics_by_group(session: Session, groups: Subquery, metrics: Collection[str], start: datetime,
                     end: datetime) -> dict[int, dict[str, int]]:
    """`totals(...).metric(m)` for each of `metrics` (keys of METRIC_SQL) and many groups of
    subjects, in one grouped statement: `groups` has columns `group_id` and `subject_id`, one
    row per (group, subject), no pair twice; a group sums every meter of its subjects over the
    hour buckets that start in [start, end). Only the asked sums are computed (each costs per
    ledger row). Groups with no usage there are absent (their values are 0)."""
    names = sorted(metrics)
    q = (select(groups.c.group_id, *(func.sum(METRIC_SQL[m]) for m in names))
         .select_from(groups)
         .join(Meter, Meter.subject_id == groups.c.subject_id)
         .join(Usage, Usage.meter_id == Meter.id)
         .where(Usage.hour >= start, Usage.hour < end)
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
