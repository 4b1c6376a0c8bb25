"""What AWS billed (Cost Explorer, per subject and closed UTC day) beside the bot's estimate.

`store_day` keeps one row per (subject, day, basis); `compare` sums the closed days that lie
wholly inside a report's period. Cost Explorer's days are UTC days, so a period in another
`BOT_TIMEZONE` is compared over the UTC days it contains (none for a single local day that
straddles two UTC days: then nothing is shown rather than a misleading figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.models import BilledCost

DAY = timedelta(days=1)
# Which attribution a subject's bill is read by, best first: its AIPs' cost-allocation tags
# (the bot's own meters), then the IAM principal tags.
BASIS_ORDER = ("tag:user", "tag:team")


@dataclass(frozen=True)
class BillComparison:
    first_day: date
    last_day: date
    days: int
    basis: str
    billed_micro_usd: int
    estimate_micro_usd: int
    unpriced_tokens: int = 0

    @property
    def divergence_pct(self) -> float | None:
        """(billed − estimate) / estimate in %; None when the bot estimated nothing."""
        if self.estimate_micro_usd == 0:
            return None
        return 100.0 * (self.billed_micro_usd - self.estimate_micro_usd) / self.estimate_micro_usd


NOISE_MICRO_USD = 10_000  # differences under a cent are rounding, never an alert


def diverges(b: BillComparison, threshold_pct: float) -> bool:
    """Billed and estimated part by a cent or more and by more than `threshold_pct`."""
    if abs(b.billed_micro_usd - b.estimate_micro_usd) < NOISE_MICRO_USD:
        return False
    pct = b.divergence_pct
    return pct is None or abs(pct) > threshold_pct


def utc_day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + DAY


def closed_days(now: datetime, lookback: int) -> list[date]:
    """The last `lookback` UTC days that have ended (yesterday first is last in the list)."""
    today = now.astimezone(UTC).date()
    return [today - timedelta(days=n) for n in range(lookback, 0, -1)]


def days_within(start: datetime, end: datetime, now: datetime) -> list[date]:
    """UTC days wholly inside [start, end) that have ended by `now`."""
    day = start.astimezone(UTC).date()
    out: list[date] = []
    while True:
        d_start, d_end = utc_day_bounds(day)
        if d_end > end or d_end > now:
            return out
        if d_start >= start:
            out.append(day)
        day += DAY


def store_day(session: Session, clock: Clock, subject_id: int | None, day: date, basis: str,
              billed_micro_usd: int, estimate_micro_usd: int, unpriced_tokens: int) -> None:
    """Insert or overwrite one (subject, day, basis); subject None = the whole account."""
    who = BilledCost.subject_id.is_(None) if subject_id is None else BilledCost.subject_id == subject_id
    row = session.scalar(select(BilledCost).where(
        who, BilledCost.day == day.isoformat(), BilledCost.basis == basis))
    if row is None:
        session.add(BilledCost(subject_id=subject_id, day=day.isoformat(), basis=basis,
                               billed_micro_usd=billed_micro_usd, estimate_micro_usd=estimate_micro_usd,
                               unpriced_tokens=unpriced_tokens, fetched_at=clock()))
    else:
        row.billed_micro_usd, row.estimate_micro_usd = billed_micro_usd, estimate_micro_usd
        row.unpriced_tokens, row.fetched_at = unpriced_tokens, clock()
    session.flush()


@dataclass(frozen=True)
class DayRow:
    subject_id: int
    day: date
    basis: str
    billed_micro_usd: int
    estimate_micro_usd: int
    unpriced_tokens: int


def store_days(session: Session, clock: Clock, rows: list[DayRow]) -> int:
    """Insert or overwrite many subject rows: one INSERT … ON CONFLICT sent as an executemany
    (a SELECT per row took ~30 s at 10k subjects × 3 days; bench/bench_bill_reconcile.py)."""
    if not rows:
        return 0
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(BilledCost)
    cols = ("billed_micro_usd", "estimate_micro_usd", "unpriced_tokens", "fetched_at")
    stmt = stmt.on_conflict_do_update(index_elements=["subject_id", "day", "basis"],
                                      set_={c: stmt.excluded[c] for c in cols})
    now = clock()
    session.connection().execute(stmt, [
        {"subject_id": r.subject_id, "day": r.day.isoformat(), "basis": r.basis,
         "billed_micro_usd": r.billed_micro_usd, "estimate_micro_usd": r.estimate_micro_usd,
         "unpriced_tokens": r.unpriced_tokens, "fetched_at": now} for r in rows])
    return len(rows)


def compare(session: Session, subject_id: int, start: datetime, end: datetime,
            now: datetime) -> BillComparison | None:
    """The bill for the closed UTC days of [start, end), by the best basis that has them all."""
    days = days_within(start, end, now)
    if not days:
        return None
    wanted = {d.isoformat() for d in days}
    rows = list(session.scalars(select(BilledCost).where(
        BilledCost.subject_id == subject_id, BilledCost.day.in_(sorted(wanted)))))
    bases = sorted({r.basis for r in rows}, key=_rank)
    for basis in bases:
        mine = [r for r in rows if r.basis == basis]
        if {r.day for r in mine} == wanted:  # a partial read would understate the bill
            return BillComparison(days[0], days[-1], len(days), basis,
                                  sum(r.billed_micro_usd for r in mine),
                                  sum(r.estimate_micro_usd for r in mine),
                                  sum(r.unpriced_tokens for r in mine))
    return None


def _rank(basis: str) -> tuple[int, str]:
    return (BASIS_ORDER.index(basis) if basis in BASIS_ORDER else len(BASIS_ORDER), basis)


@dataclass(frozen=True)
class Estimate:
    micro_usd: int = 0
    unpriced_tokens: int = 0
    tokens: int = 0  # input + output + cache
    cache_tokens: int = 0


def estimate(session: Session, subject_ids: list[int] | None, kinds: tuple[str, ...],
             day: date) -> Estimate:
    """The bot's estimate for one UTC day over the meters of these kinds (of these subjects;
    None = every meter): what a bill attributed the same way should match."""
    from sqlalchemy import func

    from bot.models import Meter, Usage

    start, end = utc_day_bounds(day)
    cols = (Usage.cost_micro_usd, Usage.unpriced_tokens,
            Usage.input_tokens + Usage.output_tokens + Usage.cache_read_tokens + Usage.cache_write_tokens,
            Usage.cache_read_tokens + Usage.cache_write_tokens)
    q = (select(*(func.coalesce(func.sum(c), 0) for c in cols))
         .join(Meter, Meter.id == Usage.meter_id)
         .where(Usage.hour >= start, Usage.hour < end, Meter.kind.in_(kinds)))
    if subject_ids is not None:
        q = q.where(Meter.subject_id.in_(subject_ids))
    row = session.execute(q).one()
    return Estimate(*(int(v) for v in row))


def compare_account(session: Session, start: datetime, end: datetime,
                    now: datetime) -> BillComparison | None:
    """The account's whole Bedrock bill (rows without a subject) for the closed UTC days."""
    days = days_within(start, end, now)
    wanted = {d.isoformat() for d in days}
    rows = list(session.scalars(select(BilledCost).where(
        BilledCost.subject_id.is_(None), BilledCost.basis == "account",
        BilledCost.day.in_(sorted(wanted)))))
    if not days or {r.day for r in rows} != wanted:
        return None
    return BillComparison(days[0], days[-1], len(days), "account",
                          sum(r.billed_micro_usd for r in rows),
                          sum(r.estimate_micro_usd for r in rows), sum(r.unpriced_tokens for r in rows))


def estimates_by_subject(session: Session, kinds: tuple[str, ...], day: date) -> dict[int, Estimate]:
    """`estimate` for every subject at once (one grouped query a day, not one per subject)."""
    from sqlalchemy import func

    from bot.models import Meter, Usage

    start, end = utc_day_bounds(day)
    cols = (Usage.cost_micro_usd, Usage.unpriced_tokens,
            Usage.input_tokens + Usage.output_tokens + Usage.cache_read_tokens + Usage.cache_write_tokens,
            Usage.cache_read_tokens + Usage.cache_write_tokens)
    q = (select(Meter.subject_id, *(func.sum(c) for c in cols))
         .join(Meter, Meter.id == Usage.meter_id)
         .where(Usage.hour >= start, Usage.hour < end, Meter.kind.in_(kinds),
                Meter.subject_id.is_not(None))
         .group_by(Meter.subject_id))
    return {int(sid): Estimate(*(int(v or 0) for v in rest)) for sid, *rest in session.execute(q)}


@dataclass(frozen=True)
class DayBill:
    """The latest closed UTC day with a stored bill: the account's line and the subjects whose
    bill and estimate part by more than the threshold."""

    account: BillComparison
    divergent: list[tuple[str, BillComparison]]


def latest_day_bill(session: Session, now: datetime, threshold_pct: float,
                    within_days: int = 7) -> DayBill | None:
    from bot.models import Subject

    oldest = (now.astimezone(UTC).date() - timedelta(days=within_days)).isoformat()
    day_text = session.scalar(select(BilledCost.day).where(
        BilledCost.subject_id.is_(None), BilledCost.basis == "account", BilledCost.day >= oldest)
        .order_by(BilledCost.day.desc()).limit(1))
    if day_text is None:
        return None
    day = date.fromisoformat(day_text)
    start, end = utc_day_bounds(day)
    account = compare_account(session, start, end, now)
    if account is None:
        return None
    divergent = []
    for row, name in session.execute(select(BilledCost, Subject.name).join(
            Subject, Subject.id == BilledCost.subject_id).where(BilledCost.day == day_text)
            .order_by(Subject.name, BilledCost.basis)).tuples():
        b = BillComparison(day, day, 1, row.basis, row.billed_micro_usd, row.estimate_micro_usd,
                           row.unpriced_tokens)
        if diverges(b, threshold_pct):
            divergent.append((name, b))
    return DayBill(account, divergent)
