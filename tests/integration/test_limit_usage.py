"""`limit_statuses` (every limit at once, one grouped ledger statement per window) equals
`limit_status` (one limit, its own ledger queries) limit by limit, on SQLite and PostgreSQL;
both equal the sums of the hourly rows alone (both read whole UTC days from the rollup).

Each seed builds a random world: users and teams (a user in several teams, an empty team, a
team whose members have no meter), several meters per subject and meters of no one, hourly
ledger rows from 40 days back to 2 hours ahead with cache and unpriced tokens, limits on every
metric and window, raises active, ended and not yet started; then compares both at a random
instant, time zone and week start.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from bot.clock import FixedClock
from bot.db import Database
from bot.models import Limit, LimitRaise, Meter, Subject, TeamMember
from bot.quantities import Metric, Window
from bot.services import directory, enforce, ledger, limit_usage
from bot.services.ledger import LedgerRow, floor_hour
from bot.services.limit_usage import limit_status, limit_statuses

BASE = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # a DST change in Europe, a Sunday
ZONES = ("UTC", "Europe/Berlin", "America/Los_Angeles", "Pacific/Kiritimati", "Asia/Kolkata")
METRICS = [m.value for m in Metric]
WINDOWS = [w.value for w in Window]


def _world(session: Session, rng: random.Random, now: datetime) -> None:
    created = now - timedelta(days=60)
    users = [Subject(kind="user", name=f"u{i}", slack_user_id=f"U{i:04d}" if i % 2 else None,
                     created_by="test", created_at=created) for i in range(rng.randint(6, 14))]
    teams = [Subject(kind="team", name=f"t{i}", created_by="test", created_at=created)
             for i in range(rng.randint(2, 5))]
    session.add_all(users + teams)
    session.flush()
    for team in teams[1:]:  # teams[0] stays empty
        for user in rng.sample(users, rng.randint(1, len(users) // 2)):
            session.add(TeamMember(team_id=team.id, user_id=user.id, added_by="test", added_at=created))
    owners: list[int | None] = [s.id for s in users + teams if s.name != "u0"]  # u0: no meter
    meters = [Meter(kind="profile", key=f"m{i}", subject_id=rng.choice([*owners, None]), created_at=created)
              for i in range(rng.randint(10, 25))]
    session.add_all(meters)
    session.flush()
    top = floor_hour(now)
    rows: dict[tuple[int, datetime], LedgerRow] = {}
    for _ in range(rng.randint(300, 900)):
        meter_id, hour = rng.choice(meters).id, top - timedelta(hours=rng.randint(-2, 40 * 24))
        inp, out, cr, cw = (rng.randint(0, 5000) for _ in range(4))
        unpriced = rng.random() < 0.2
        rows[(meter_id, hour)] = LedgerRow(
            meter_id, hour, inp, out, cr, cw, rng.randint(0, 9), 0 if unpriced else rng.randint(0, 90_000),
            inp + out + cr + cw if unpriced else 0, 1 if unpriced else 0)
    ledger.upsert(session, list(rows.values()), now)
    for subject in users + teams:
        picked = rng.sample([(m, w) for m in METRICS for w in WINDOWS], rng.randint(0, 4))
        if subject.kind == "team":  # every team has one limit its members' usage counts in
            picked = list(dict.fromkeys([("tokens", "30d"), *picked]))
        for metric, window in picked:
            session.add(Limit(subject_id=subject.id, metric=metric, window=window,
                              amount=rng.randint(1, 2_000_000), warn=[80, 90], action="revoke",
                              alarm=False, created_by="test", created_at=created, updated_at=created))
    session.flush()
    for limit in session.scalars(select(Limit)):
        for _ in range(rng.choice((0, 0, 1, 2))):
            starts = now + timedelta(hours=rng.randint(-48, 3))
            session.add(LimitRaise(limit_id=limit.id, amount=rng.randint(1, 500_000), starts_at=starts,
                                   expires_at=starts + timedelta(hours=rng.randint(1, 72)),
                                   granted_by="test", reason="test", created_at=created))
    session.flush()


def _hourly(session: Session, limit: Limit, subject: Subject, now: datetime, tz: ZoneInfo,
            week_start: int) -> tuple[int, int]:
    """(used, unpriced tokens) of a limit from the hourly ledger alone."""
    start, _end, summed_to = limit_usage.limit_window(limit.window, now, tz, week_start)
    t = ledger.hourly_totals(session, directory.covered_subject_ids(session, subject), start, summed_to)
    return t.metric(limit.metric), t.unpriced_tokens if limit.metric == "cost_usd" else 0


@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_limit_status_per_limit(db: Database, seed: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    now = BASE + timedelta(days=rng.randint(0, 40), minutes=rng.randint(0, 24 * 60 - 1),
                           seconds=rng.randint(0, 59))
    tz, week_start = ZoneInfo(rng.choice(ZONES)), rng.randint(0, 6)
    if seed % 2:  # several grouped statements per window, merged
        monkeypatch.setattr(limit_usage, "OWNERS_PER_QUERY", 2)
    with db.session_scope() as session:
        _world(session, rng, now)
        pairs = session.execute(select(Limit, Subject).join(Subject, Subject.id == Limit.subject_id)
                                .order_by(Limit.id)).tuples().all()
        batch = limit_statuses(session, pairs, now, tz, week_start)
        one_by_one = {limit.id: limit_status(session, limit, subject, now, tz, week_start)
                      for limit, subject in pairs}
        # both read the day rollup: the hourly rows alone are the reference
        hourly = {limit.id: _hourly(session, limit, subject, now, tz, week_start) for limit, subject in pairs}
    assert batch == one_by_one
    assert {lid: (s.used, s.unpriced_tokens) for lid, s in batch.items()} == hourly
    # the worlds are not empty: usage counted, teams counted, raises counted
    assert sum(s.used > 0 for s in batch.values()) > len(batch) // 3
    teams = {limit.id for limit, subject in pairs if subject.kind == "team" and subject.name != "t0"}
    assert any(s.used for lid, s in batch.items() if lid in teams)
    assert any(s.raised for s in batch.values())


def test_batch_of_nothing_and_of_a_limit_without_usage(db: Database) -> None:
    now = BASE + timedelta(days=3, hours=5)
    with db.session_scope() as session:
        assert limit_statuses(session, [], now, ZoneInfo("UTC"), 0) == {}
        quiet = Subject(kind="team", name="quiet", created_by="test", created_at=now)
        session.add(quiet)
        session.flush()
        limit = Limit(subject_id=quiet.id, metric="tokens", window="month", amount=10, warn=[80],
                      action="revoke", alarm=False, created_by="test", created_at=now, updated_at=now)
        session.add(limit)
        session.flush()
        got = limit_statuses(session, [(limit, quiet)], now, ZoneInfo("UTC"), 0)
        assert got == {limit.id: limit_status(session, limit, quiet, now, ZoneInfo("UTC"), 0)}
        assert got[limit.id].used == 0 and got[limit.id].amount == 10


def _statements_of_evaluate(db: Database, users: int, now: datetime) -> int:
    """Statements of a steady-state `enforce.evaluate` (second run) over `users` users, each with
    limits on a calendar and a rolling window, half of them over a warning level."""
    with db.session_scope() as session:
        for i in range(users):
            user = Subject(kind="user", name=f"n{users}-{i}", created_by="test", created_at=now)
            session.add(user)
            session.flush()
            meter = Meter(kind="profile", key=f"n{users}-{i}", subject_id=user.id, created_at=now)
            session.add(meter)
            session.flush()
            ledger.upsert(session, [LedgerRow(meter.id, floor_hour(now), 850 if i % 2 else 100)], now)
            for window in ("day", "24h"):
                session.add(Limit(subject_id=user.id, metric="tokens", window=window, amount=1000,
                                  warn=[80, 90], action="revoke", alarm=False, created_by="test",
                                  created_at=now, updated_at=now))
    clock = FixedClock(now)
    with db.session_scope() as session:
        first = enforce.evaluate(session, clock, ZoneInfo("UTC"), 0)
    assert len(first.warnings) == 2 * (users // 2) and not first.breaches  # 85%: two limits each
    seen: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.session_scope() as session:
            again = enforce.evaluate(session, clock, ZoneInfo("UTC"), 0)
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert again.checked >= 2 * users and not again.warnings
    return len(seen)


def test_enforce_statements_do_not_grow_with_the_limits(db: Database) -> None:
    now = BASE + timedelta(days=2, hours=10, minutes=30)
    assert _statements_of_evaluate(db, 3, now) == _statements_of_evaluate(db, 40, now + timedelta(days=1))
