"""The usage report over a seeded ledger, on SQLite and PostgreSQL: who may see what, team
totals, period bounds in a non-UTC zone with Sunday weeks, trend, forecast and limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from bot.clock import FixedClock
from bot.db import Database
from bot.errors import Denied
from bot.models import Limit, Subject
from bot.services import directory, ledger
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow, Totals
from bot.services.usage import UsageReport, period_bounds, report

NY = ZoneInfo("America/New_York")
SUNDAY = 6  # BOT_WEEK_START=sunday
SYSTEM = Actor.system("test")
ADMIN = Actor.slack("UADMIN01")
ALICE, BOB, CAROL, DAVE = (Actor.slack(u) for u in ("UALICE01", "UBOB0001", "UCAROL01", "UDAVE001"))
H = timedelta(hours=1)


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def user(s: Session, clock: FixedClock, name: str, actor: Actor) -> Subject:
    return directory.ensure_user(s, clock, SYSTEM, SubjectRef(name=name, slack_user_id=actor.slack_user_id))


def meter(s: Session, clock: FixedClock, kind: str, key: str, subject: Subject) -> int:
    return directory.ensure_meter(s, clock, kind, key, subject.id).id


def seed(s: Session, clock: FixedClock, meter_id: int, hour: datetime, inp: int = 0, out: int = 0,
         requests: int = 0, cost: int = 0) -> None:
    ledger.upsert(s, [LedgerRow(meter_id, hour, inp, out, 0, 0, requests, cost)], clock())


def view(db: Database, clock: FixedClock, actor: Actor, name: str | None, period: str | None,
         tz: ZoneInfo = NY) -> UsageReport:
    with db.session_scope() as s:
        return report(s, clock, tz, SUNDAY, actor, SubjectRef(name=name) if name else None, period)


# ---- team totals and who may see them --------------------------------------------------


@pytest.fixture
def team_ml(db: Database, clock: FixedClock) -> Database:
    """team-ml = alice + bob; carol and dave are outsiders; UADMIN01 is an owner."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        alice, _bob, carol, _dave = (user(s, clock, n, a) for n, a in
                                     (("alice", ALICE), ("bob", BOB), ("carol", CAROL), ("dave", DAVE)))
        team, _ = directory.change_members(s, clock, SYSTEM, "team-ml", "add",
                                           [SubjectRef(slack_user_id="UALICE01"),
                                            SubjectRef(slack_user_id="UBOB0001")])
        bob = directory.get(s, SubjectRef(slack_user_id="UBOB0001"))
        at = utc(11, 25, 9)
        seed(s, clock, meter(s, clock, "profile", "teamaip00001", team), at, 1000, 100, 10, 5000)
        seed(s, clock, meter(s, clock, "profile", "aliceaip0001", alice), at, 200, 20, 2, 700)
        seed(s, clock, meter(s, clock, "principal", "arn:aws:iam::123456789012:user/bob", bob),
             at, 30, 3, 1, 90)
        seed(s, clock, meter(s, clock, "profile", "carolaip0001", carol), at, 7000, 700, 70, 99999)
    return db


def test_team_usage_is_its_own_profiles_plus_its_members(team_ml: Database, clock: FixedClock) -> None:
    for actor in (ALICE, BOB, ADMIN, SYSTEM):
        r = view(team_ml, clock, actor, "team-ml", "month")
        assert r.totals == Totals(1230, 123, 0, 0, 13, 5790)
        assert (r.subject.name, r.subject.kind, r.members, r.teams) == (
            "team-ml", "team", ["alice", "bob"], [])


@pytest.mark.parametrize("actor", [CAROL, DAVE, Actor.slack("UNOBODY1")])
def test_outsiders_may_not_see_a_team(team_ml: Database, clock: FixedClock, actor: Actor) -> None:
    with pytest.raises(Denied):
        view(team_ml, clock, actor, "team-ml", "month")


def test_users_see_themselves_admins_see_everyone(team_ml: Database, clock: FixedClock) -> None:
    mine = view(team_ml, clock, ALICE, None, None)  # no subject, no period: self, this month
    assert (mine.subject.name, mine.period, mine.teams) == ("alice", "month", ["team-ml"])
    assert mine.totals == Totals(200, 20, 0, 0, 2, 700)
    assert view(team_ml, clock, ALICE, "alice", "today").totals == Totals(200, 20, 0, 0, 2, 700)
    with pytest.raises(Denied):
        view(team_ml, clock, ALICE, "carol", "month")
    with pytest.raises(Denied):
        view(team_ml, clock, DAVE, "bob", "month")
    assert view(team_ml, clock, ADMIN, "carol", "month").totals == Totals(7000, 700, 0, 0, 70, 99999)
    assert view(team_ml, clock, ADMIN, "bob", "month").totals == Totals(30, 3, 0, 0, 1, 90)


# ---- period bounds ---------------------------------------------------------------------

# Wednesday 2026-11-25 10:30 UTC = 05:30 EST. Weeks start on Sunday; DST ended on Sunday Nov 1,
# so October and the first hours of Nov 1 are EDT (UTC-4), the rest of November EST (UTC-5).
BOUNDS = {
    "today": (utc(11, 25, 5), utc(11, 26, 5), utc(11, 24, 5), utc(11, 25, 5)),
    "yesterday": (utc(11, 24, 5), utc(11, 25, 5), utc(11, 23, 5), utc(11, 24, 5)),
    "week": (utc(11, 22, 5), utc(11, 29, 5), utc(11, 15, 5), utc(11, 22, 5)),
    "month": (utc(11, 1, 4), utc(12, 1, 5), utc(10, 1, 4), utc(11, 1, 4)),
    "7d": (utc(11, 18, 10, 30), utc(11, 25, 10, 30), utc(11, 11, 10, 30), utc(11, 18, 10, 30)),
    "30d": (utc(10, 26, 10, 30), utc(11, 25, 10, 30), utc(9, 26, 10, 30), utc(10, 26, 10, 30)),
}


@pytest.mark.parametrize("period", list(BOUNDS))
def test_period_bounds(period: str, clock: FixedClock) -> None:
    assert period_bounds(period, clock(), NY, SUNDAY) == BOUNDS[period]


def test_week_across_the_dst_change_is_169_hours() -> None:
    start, end, pstart, pend = period_bounds("week", utc(11, 3, 12), NY, SUNDAY)
    assert (start, end, pstart, pend) == (utc(11, 1, 4), utc(11, 8, 5), utc(10, 25, 4), utc(11, 1, 4))
    assert end - start == 169 * H


ROLLING_AT_11 = {
    "7d": (utc(11, 18, 11), utc(11, 25, 11), utc(11, 11, 11), utc(11, 18, 11)),
    "30d": (utc(10, 26, 11), utc(11, 25, 11), utc(9, 26, 11), utc(10, 26, 11)),
}
SEED_FROM, SEED_TO = utc(9, 20), utc(11, 25, 10)  # every hour bucket, both ends included


def _seed_every_hour(db: Database, clock: FixedClock) -> None:
    """One request per hour bucket; input tokens = the bucket's index, so sums identify hours."""
    with db.session_scope() as s:
        alice = user(s, clock, "alice", ALICE)
        m = meter(s, clock, "profile", "aliceaip0001", alice)
        n = (SEED_TO - SEED_FROM) // H + 1
        ledger.upsert(s, [LedgerRow(m, SEED_FROM + i * H, input_tokens=i, requests=1)
                          for i in range(n)], clock())


def _expected(start: datetime, end: datetime) -> tuple[int, int]:
    """(buckets, sum of indices) of seeded hours h with start <= h < end."""
    hours = [i for i in range((SEED_TO - SEED_FROM) // H + 1) if start <= SEED_FROM + i * H < end]
    return len(hours), sum(hours)


@pytest.mark.parametrize(("period", "now", "buckets"), [
    ("today", utc(11, 25, 10, 30), (6, 24)),  # 05:00..10:00 so far; all of Nov 24 EST
    ("yesterday", utc(11, 25, 10, 30), (24, 24)),
    ("week", utc(11, 25, 10, 30), (78, 168)),  # Sun 05:00 UTC .. now; the whole week before
    ("month", utc(11, 25, 10, 30), (583, 744)),  # Nov 1 04:00 UTC .. now; October EDT
    # Rolling: the buckets that start inside the window; 168 whether or not it starts mid-hour.
    ("7d", utc(11, 25, 10, 30), (168, 168)),
    ("7d", utc(11, 25, 11), (168, 168)),
    ("30d", utc(11, 25, 11), (720, 720)),
])
def test_report_counts_exactly_the_hours_of_the_period(db: Database, clock: FixedClock, period: str,
                                                       now: datetime, buckets: tuple[int, int]) -> None:
    _seed_every_hour(db, clock)
    clock.at = now
    r = view(db, clock, ALICE, None, period)
    start, end, pstart, pend = (ROLLING_AT_11[period] if now.minute == 0 else BOUNDS[period])
    assert (r.start, r.end) == (start, end)
    count, index_sum = _expected(start, end)
    pcount, pindex_sum = _expected(pstart, pend)
    assert (count, pcount) == buckets
    assert (r.totals.requests, r.totals.input_tokens) == (count, index_sum)
    assert (r.previous.requests, r.previous.input_tokens) == (pcount, pindex_sum)


# ---- trend and forecast ----------------------------------------------------------------


@pytest.fixture
def history(db: Database, clock: FixedClock) -> Database:
    with db.session_scope() as s:
        alice = user(s, clock, "alice", ALICE)
        m = meter(s, clock, "profile", "aliceaip0001", alice)
        for hour, inp, out, req, cost in [
            (utc(10, 10, 12), 4000, 400, 40, 1000),  # October
            (utc(11, 1, 3), 7, 0, 0, 0),  # Oct 31 23:00 EDT: still October in New York
            (utc(11, 10, 12), 2000, 300, 10, 3000),
            (utc(11, 22, 6), 45, 0, 0, 0),  # Sunday 01:00 EST: this week
            (utc(11, 23, 12), 9, 0, 0, 0),  # the day before yesterday
            (utc(11, 24, 12), 60, 0, 0, 0),  # yesterday
            (utc(11, 25, 4), 1, 0, 0, 0),  # Nov 24 23:00 EST: yesterday
            (utc(11, 25, 6), 55, 0, 0, 0),  # today
            (utc(11, 25, 9), 55, 0, 0, 0),  # today
        ]:
            seed(s, clock, m, hour, inp, out, req, cost)
    return db


@pytest.mark.parametrize(("period", "current", "previous", "forecast"), [
    # forecast = total x window length / time elapsed: 24h/5.5h, 168h/77.5h, 721h/582.5h
    ("today", 110, 61, 480),
    ("yesterday", 61, 9, None),
    ("week", 225, 0, 488),
    ("month", 2225, 4007, 2754),
    ("7d", 225, 0, None),
    ("30d", 2232, 4000, None),
])
def test_trend_and_forecast(history: Database, clock: FixedClock, period: str, current: int,
                            previous: int, forecast: int | None) -> None:
    r = view(history, clock, ALICE, None, period)
    assert r.totals.input_tokens == current
    assert r.previous.input_tokens == previous
    if forecast is None:
        assert r.forecast is None
    else:
        assert r.forecast is not None and r.forecast.input_tokens == forecast


def test_month_forecast_projects_every_column(history: Database, clock: FixedClock) -> None:
    r = view(history, clock, ALICE, None, "month")
    assert r.totals == Totals(2225, 300, 0, 0, 10, 3000)
    assert r.previous == Totals(4007, 400, 0, 0, 40, 1000)
    assert r.forecast == Totals(2754, 371, 0, 0, 12, 3713)
    assert r.label == "November 2026"


def test_no_forecast_in_the_first_hour_of_a_window(history: Database, clock: FixedClock) -> None:
    clock.at = utc(11, 25, 5, 30)  # 00:30 EST
    assert view(history, clock, ALICE, None, "today").forecast is None


# ---- limits ------------------------------------------------------------------------------


def test_limits_show_used_and_percent(db: Database, clock: FixedClock) -> None:
    with db.session_scope() as s:
        alice, bob = user(s, clock, "alice", ALICE), user(s, clock, "bob", BOB)
        team, _ = directory.change_members(s, clock, SYSTEM, "team-ml", "add",
                                           [SubjectRef(slack_user_id="UALICE01"),
                                            SubjectRef(slack_user_id="UBOB0001")])
        mine = meter(s, clock, "profile", "aliceaip0001", alice)
        seed(s, clock, mine, utc(11, 23, 12), 600, 250)  # this week
        seed(s, clock, mine, utc(11, 22, 4), 500, 0)  # Sat 23:00 EST: last week, this month
        seed(s, clock, meter(s, clock, "profile", "teamaip00001", team), utc(11, 10, 12), 3000)
        seed(s, clock, meter(s, clock, "profile", "bobaip000001", bob), utc(11, 24, 12), 100, 50)
        for subject, amount, window in ((alice, 1000, "week"), (team, 10_000, "month")):
            s.add(Limit(subject_id=subject.id, metric="tokens", amount=amount, window=window,
                        warn=[80, 90], action="revoke", alarm=True, created_by="slack:UADMIN01",
                        created_at=clock(), updated_at=clock()))

    limits = view(db, clock, ALICE, None, "today").limits

    assert [(x.subject, x.metric, x.window, x.amount, x.used, x.percent, x.warn, x.action)
            for x in limits] == [
        ("alice", "tokens", "week", 1000, 850, 85.0, (80, 90), "revoke"),
        ("team-ml", "tokens", "month", 10_000, 4500, 45.0, (80, 90), "revoke"),
    ]
    assert (limits[0].window_start, limits[0].window_end) == (utc(11, 22, 5), utc(11, 29, 5))
    assert (limits[1].window_start, limits[1].window_end) == (utc(11, 1, 4), utc(12, 1, 5))
    team_view = view(db, clock, BOB, "team-ml", "week")
    assert [(x.subject, x.used) for x in team_view.limits] == [("team-ml", 4500)]


# ---- regression ------------------------------------------------------------------------


def test_rolling_periods_do_not_share_the_boundary_hour(db: Database, clock: FixedClock) -> None:
    """At 10:30 the 7d boundary cuts the 10:00 bucket: it belongs to one period, not both."""
    with db.session_scope() as s:
        alice = user(s, clock, "alice", ALICE)
        seed(s, clock, meter(s, clock, "profile", "aliceaip0001", alice), utc(11, 18, 10), 100, 0, 1)
    r = view(db, clock, ALICE, None, "7d")
    assert r.totals.requests + r.previous.requests == 1
