"""The UTC-day rollup (`usage_daily`) on SQLite and PostgreSQL: after any sequence of ledger
writes (upserts, adds, replays of an upsert, log re-reads deleting hours) it equals the hourly
rows summed per (meter, UTC day); sums read through it (`ledger.totals`) equal the hourly sums
(`ledger.hourly_totals`) over any window; concurrent writers of the same hours on PostgreSQL
leave it exact; `spans` covers each hour bucket of a window exactly once; migration 0013's
backfill equals the hourly sum and later writes land on the backfilled rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, insert, inspect, select, text

from bot.clock import FixedClock
from bot.db import Database
from bot.migrate import downgrade, upgrade
from bot.models import Meter, Subject, Usage, UsageDay
from bot.services import directory, ledger
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow, floor_day, floor_hour
from tests.conftest import _pg_reachable, drop_pg_schema, new_pg_schema_url
from tests.rollup_check import hourly_by_day, rollup

H = timedelta(hours=1)
BASE = datetime(2026, 11, 22, 18, tzinfo=UTC)  # the random hours span four UTC days from here
HOURS = 4 * 24
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
VALUE_COLS = ledger.VALUE_COLS
SYSTEM = Actor.system("test")

values = st.tuples(*[st.integers(0, 10**9)] * len(VALUE_COLS))
rows = st.lists(st.tuples(st.integers(0, 2), st.integers(0, HOURS - 1), values), max_size=6)
ops = st.lists(st.one_of(
    st.tuples(st.just("upsert"), rows),
    st.tuples(st.just("add"), rows),
    st.tuples(st.just("replay"), st.none()),  # the previous upsert again (a re-read hour)
    st.tuples(st.just("delete"), st.tuples(st.integers(0, HOURS), st.integers(0, 30),
                                           st.sets(st.integers(0, 2), min_size=1))),
), max_size=12)
windows = st.lists(st.tuples(st.integers(-90, HOURS * 60 + 90), st.integers(0, HOURS * 60 + 180),
                             st.sets(st.integers(0, 2), min_size=1)), min_size=1, max_size=4)


@pytest.fixture
def meters(db: Database) -> tuple[list[int], list[int]]:
    """Three subjects with a meter each: (subject ids, meter ids)."""
    clock = FixedClock(NOW)
    with db.session_scope() as s:
        subjects = [directory.ensure_user(s, clock, SYSTEM, SubjectRef(name=f"u{i}")).id for i in range(3)]
        ids = [directory.ensure_meter(s, clock, "profile", f"aip{i:09d}", sid).id
               for i, sid in enumerate(subjects)]
    return subjects, ids


def _row(meter_ids: list[int], m: int, h: int, v: tuple[int, ...]) -> LedgerRow:
    return LedgerRow(meter_ids[m], BASE + h * H, *v)


def _merged(rs: list[LedgerRow]) -> list[LedgerRow]:
    """`ledger.add` wants one row per (meter, hour)."""
    acc: dict[tuple[int, datetime], list[int]] = {}
    for r in rs:
        a = acc.setdefault((r.meter_id, r.hour), [0] * len(VALUE_COLS))
        for i, c in enumerate(VALUE_COLS):
            a[i] += getattr(r, c)
    return [LedgerRow(m, h, *v) for (m, h), v in acc.items()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops, sums=windows)
def test_rollup_equals_the_hourly_sum_after_any_writes(db: Database, meters: tuple[list[int], list[int]],
                                                       script: list[tuple[str, Any]],
                                                       sums: list[tuple[int, int, set[int]]]) -> None:
    subjects, meter_ids = meters
    with db.session_scope() as s:  # a fresh ledger for each example
        s.execute(delete(UsageDay))
        s.execute(delete(Usage))
    last: list[LedgerRow] = []
    clock = FixedClock(NOW)
    for op, arg in script:
        with db.session_scope() as s:
            if op == "upsert":
                last = [_row(meter_ids, *r) for r in arg]
                ledger.upsert(s, last, clock())
            elif op == "replay":
                ledger.upsert(s, last, clock())
            elif op == "add":
                ledger.add(s, _merged([_row(meter_ids, *r) for r in arg]), clock())
            else:
                start, length, which = arg
                chosen = select(Meter.id).where(Meter.id.in_([meter_ids[i] for i in which]))
                ledger.delete_hours(s, chosen, BASE + start * H, BASE + (start + length) * H)
    with db.session_scope() as s:
        assert rollup(s) == hourly_by_day(s)
        for a, b, which in sums:  # windows at any minute, before, inside and past the rows
            start, end = BASE + timedelta(minutes=a), BASE + timedelta(minutes=b)
            ids = [subjects[i] for i in which]
            assert ledger.totals(s, ids, start, end) == ledger.hourly_totals(s, ids, start, end)


@settings(max_examples=500, deadline=None)
@given(a=st.integers(-3000, 3000), b=st.integers(-3000, 3000), e=st.none() | st.integers(-3000, 3000))
def test_spans_count_each_hour_bucket_of_the_window_exactly_once(a: int, b: int, e: int | None) -> None:
    start, end = BASE + timedelta(minutes=a * 7), BASE + timedelta(minutes=b * 7)
    empty_from = None if e is None else floor_hour(BASE + timedelta(minutes=e * 7))  # "after now"
    pieces = ledger.spans(start, end, empty_from)
    first = floor_day(min(start, end)) - 2 * ledger.DAY
    for i in range(int((max(start, end) - first) / H) + 72):
        hour = first + i * H
        covered = sum(p.sign for p in pieces if p.lo <= (floor_day(hour) if p.daily else hour) < p.hi)
        assert covered == (1 if start <= hour < end else 0), (hour, pieces)
    assert all(p.lo < p.hi for p in pieces)
    assert all(p.lo == floor_day(p.lo) and p.hi == floor_day(p.hi) for p in pieces if p.daily)


def test_a_replaced_hour_moves_its_day_by_the_difference(db: Database,
                                                         meters: tuple[list[int], list[int]]) -> None:
    _subjects, (m, *_rest) = meters
    clock = FixedClock(NOW)
    day = floor_day(BASE) + ledger.DAY
    with db.session_scope() as s:
        ledger.upsert(s, [LedgerRow(m, day + 3 * H, input_tokens=100),
                          LedgerRow(m, day + 5 * H, input_tokens=7)], clock())
    with db.session_scope() as s:
        ledger.upsert(s, [LedgerRow(m, day + 3 * H, input_tokens=40)], clock())  # a re-read: 100 → 40
        ledger.add(s, [LedgerRow(m, day + 23 * H, input_tokens=1)], clock())
    with db.session_scope() as s:
        assert s.get(UsageDay, (m, day)).input_tokens == 48  # type: ignore[union-attr]
        assert s.scalar(select(Usage.input_tokens)
                        .where(Usage.meter_id == m, Usage.hour == day + 3 * H)) == 40


# ---------------------------------------------------------------- concurrent writers (PostgreSQL)


def _wait_until_blocked(db: Database, pid: int) -> None:
    """Until backend `pid` waits on a row lock held by another transaction (polls pg_locks)."""
    deadline = time.monotonic() + 20
    with db.engine.connect() as c:
        while time.monotonic() < deadline:
            if c.execute(text("SELECT count(*) FROM pg_locks WHERE pid = :p AND NOT granted"),
                         {"p": pid}).scalar_one():
                return
            c.rollback()
    raise AssertionError("the second writer never waited for the first")


@pytest.mark.parametrize("second", ["upsert", "add"])
@pytest.mark.parametrize("existing", [False, True])
def test_concurrent_writers_of_one_hour_keep_the_day_exact(db: Database, meters: tuple[list[int], list[int]],
                                                           second: str, existing: bool) -> None:
    """Writer A replaces an hour and holds its transaction open; writer B writes the same hour
    (a new one, or one already stored) and has to wait; A commits, then B. The day row is the
    hour's final value: B's `upsert` replaced A's value (its delta is from A's, not from what
    B's snapshot saw), B's `add` added to it."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite writers are serial (BEGIN IMMEDIATE)")
    _subjects, (m, *_rest) = meters
    clock = FixedClock(NOW)
    hour = BASE + 30 * H
    if existing:
        with db.session_scope() as s:
            ledger.upsert(s, [LedgerRow(m, hour, input_tokens=1000, requests=9)], clock())
    a_wrote, b_started, b_pid = threading.Event(), threading.Event(), []
    errors: list[BaseException] = []

    def writer_b() -> None:
        try:
            a_wrote.wait(20)
            with db.session_scope() as s:
                b_pid.append(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
                b_started.set()
                row = LedgerRow(m, hour, input_tokens=5, requests=1)
                (ledger.upsert if second == "upsert" else ledger.add)(s, [row], clock())
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            b_started.set()

    b = threading.Thread(target=writer_b)
    b.start()
    with db.session_scope() as s:
        ledger.upsert(s, [LedgerRow(m, hour, input_tokens=300, requests=3)], clock())
        a_wrote.set()
        b_started.wait(20)
        if b_pid:
            _wait_until_blocked(db, b_pid[0])
    b.join(30)
    assert not errors, errors
    expected = (5, 1) if second == "upsert" else (305, 4)
    with db.session_scope() as s:
        stored = s.execute(select(Usage.input_tokens, Usage.requests)
                           .where(Usage.meter_id == m, Usage.hour == hour)).one()
        assert tuple(stored) == expected
        assert rollup(s) == hourly_by_day(s)


# ---------------------------------------------------------------- migration 0013's backfill


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/m.db"
        return
    if not _pg_reachable():
        pytest.skip("PostgreSQL not reachable")
    url, schema = new_pg_schema_url()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


def test_0013_backfills_the_rollup_with_the_hourly_sum(empty_url: str) -> None:
    import random

    rnd = random.Random(13)
    upgrade(empty_url, "0012")
    eng = create_engine(empty_url)
    try:
        with eng.begin() as c:
            c.execute(insert(Subject.__table__), [
                {"id": i, "kind": "user", "name": f"u{i}", "created_by": "t", "created_at": NOW}
                for i in (1, 2)])
            c.execute(insert(Meter.__table__), [
                {"id": i, "kind": "profile", "key": f"aip{i}", "subject_id": 1 + i % 2, "created_at": NOW}
                for i in (1, 2, 3)])
            hours = sorted({(rnd.randint(1, 3), BASE + rnd.randint(0, HOURS - 1) * H) for _ in range(150)})
            c.execute(insert(Usage.__table__), [
                {"meter_id": m, "hour": h, "updated_at": NOW,
                 **{col: rnd.randint(0, 10**12) for col in VALUE_COLS}} for m, h in hours])
        upgrade(empty_url)
        db = Database(empty_url)
        try:
            with db.session_scope() as s:
                hourly = hourly_by_day(s)
                assert len(hourly) > 6
                assert rollup(s) == hourly
            with db.session_scope() as s:  # a later write lands on the backfilled day row
                m, h = hours[0]
                ledger.add(s, [LedgerRow(m, h, input_tokens=1)], FixedClock(NOW)())
            with db.session_scope() as s:
                assert rollup(s) == hourly_by_day(s)
                days = s.execute(select(UsageDay.day).where(UsageDay.meter_id == m)).scalars().all()
                assert len(days) == len(set(days))
        finally:
            db.dispose()
        downgrade(empty_url, "0012")
        assert "usage_daily" not in inspect(eng).get_table_names()
        with eng.connect() as c:
            assert c.execute(text("SELECT count(*) FROM usage")).scalar_one() == len(hours)
    finally:
        eng.dispose()
