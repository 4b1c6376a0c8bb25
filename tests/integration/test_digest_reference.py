"""The digest's bulk fold against a plain reference: every number `build_digest` shows, worked
out one subject, one limit and one day at a time from `ledger.hourly_totals` (one query each,
the semantics the module docstring states), on a random ledger with a team, ties, a meter
with no subject and a limit of every window on every subject. Whatever the fold does to be
fast (numpy, merged intervals, fewer objects), the digest must stay this one."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.clock import FixedClock
from bot.db import Database
from bot.models import Limit, Subject, TeamMember, Usage
from bot.quantities import Window
from bot.services import directory, ledger
from bot.services.digest import (
    CHART_STACKS,
    OTHERS,
    WATCH_PERCENT,
    AtRisk,
    ChartData,
    SubjectDay,
    build_digest,
    day_starts,
)
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow, Totals
from bot.services.limit_usage import LimitStatus, limit_window
from bot.services.usage import _forecast

SYSTEM = Actor.system("test")
METRICS = ["tokens", "cost_usd", "requests", "input_tokens", "output_tokens"]
UNIT = {"tokens": 4000, "cost_usd": 60000, "requests": 6, "input_tokens": 3000, "output_tokens": 300}


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def seed(db: Database, clock: FixedClock, rnd: random.Random) -> None:
    """9 users (3 in team-a, 2 in team-b), two teams with their own meters, a meter with no
    subject, an idle user; ~40 days of hours at random; a limit of every window on everyone."""
    with db.session_scope() as s:
        users = [directory.ensure_user(s, clock, SYSTEM,
                                       SubjectRef(name=f"u{i}", slack_user_id=f"UREF{i:05d}"))
                 for i in range(9)]
        team_a, _ = directory.change_members(s, clock, SYSTEM, "team-a", "add",
                                             [SubjectRef(slack_user_id=f"UREF{i:05d}") for i in range(3)])
        team_b, _ = directory.change_members(s, clock, SYSTEM, "team-b", "add",
                                             [SubjectRef(slack_user_id=f"UREF{i:05d}") for i in (3, 4)])
        owners: list[Subject | None] = [*users[:8], team_a, team_b, None, users[1]]  # u8 idle; u1 twice
        for i, owner in enumerate(owners):
            m = directory.ensure_meter(s, clock, "profile" if owner else "metadata", f"ref{i:09d}",
                                       owner.id if owner else None).id
            hours = [utc(12, 2) - (h + 1) * timedelta(hours=1) for h in range(40 * 24) if rnd.random() < 0.3]
            cost = rnd.choice([0, 500, 90000])  # equal costs: ties broken by tokens, then name
            ledger.upsert(s, [LedgerRow(m, h, rnd.randint(0, 5000), rnd.randint(0, 500), rnd.randint(0, 50),
                                        rnd.randint(0, 20), rnd.randint(0, 9), cost,
                                        unpriced_tokens=rnd.choice([0, 0, 0, 250]),
                                        unpriced_requests=rnd.choice([0, 0, 1])) for h in hours], clock())
        for j, owner in enumerate([*users, team_a, team_b]):
            for w in ["day", "week", "month", "24h", "7d", "30d"]:
                metric = METRICS[(j + len(w)) % len(METRICS)]
                s.add(Limit(subject_id=owner.id, metric=metric, amount=rnd.randint(1, 300) * UNIT[metric],
                            window=w, warn=[80, 90], action=rnd.choice(["revoke", "notify"]), alarm=False,
                            created_by="test", created_at=clock(), updated_at=clock()))


def shown(t: Totals) -> Totals:
    """A total as the digest carries it: all input as input, no cache or unpriced counts."""
    return Totals(input_tokens=t.all_input_tokens, output_tokens=t.output_tokens, requests=t.requests,
                  cost_micro_usd=t.cost_micro_usd)


def covered(s: Session, subject: Subject) -> list[int]:
    if subject.kind != "team":
        return [subject.id]
    return [subject.id, *s.scalars(select(TeamMember.user_id).where(TeamMember.team_id == subject.id))]


def reference(s: Session, now: datetime, tz: ZoneInfo, week_start: int, top_n: int, chart_days: int
              ) -> tuple[Totals, Totals, list[SubjectDay], list[SubjectDay], list[AtRisk], ChartData]:
    starts = day_starts(now, tz, max(chart_days, 2))
    subjects = list(s.scalars(select(Subject)))

    def overall(a: datetime, b: datetime) -> Totals:
        cols = [func.coalesce(func.sum(getattr(Usage, c)), 0) for c in ledger.VALUE_COLS]
        row = s.execute(select(*cols).where(Usage.hour >= a, Usage.hour < b)).one()
        return shown(Totals(*(int(v) for v in row)))

    days = []
    for subject in subjects:
        now_t, before = (shown(ledger.hourly_totals(s, covered(s, subject), a, b))
                         for a, b in ((starts[-2], starts[-1]), (starts[-3], starts[-2])))
        if now_t != Totals() or before != Totals():
            days.append(SubjectDay(subject.name, subject.kind, subject.slack_user_id, now_t, before))
    days.sort(key=lambda d: (-d.totals.cost_micro_usd, -d.totals.tokens, d.name))
    top = [d for d in days if d.totals.cost_micro_usd or d.totals.tokens][:top_n]

    at_risk = []
    for limit in s.scalars(select(Limit)):
        owner = s.get(Subject, limit.subject_id)
        assert owner is not None
        start, end, summed_to = limit_window(limit.window, now, tz, week_start)
        t = shown(ledger.hourly_totals(s, covered(s, owner), start, summed_to))
        status = LimitStatus(limit.id, owner.name, limit.metric, limit.amount, limit.window,
                             t.metric(limit.metric), start, end, limit.action, tuple(limit.warn))
        if status.percent >= WATCH_PERCENT:
            projected = _forecast(t, start, end, now, Window(limit.window))
            at_risk.append(AtRisk(status, owner.kind, projected.metric(limit.metric) if projected else None))
    at_risk.sort(key=lambda a: (-a.status.percent, a.status.subject, a.status.metric, a.status.window))

    chart = list(zip(starts[-chart_days - 1:-1], starts[-chart_days:], strict=True))
    totals = [overall(a, b).tokens for a, b in chart]
    own = {subject.name: [shown(ledger.hourly_totals(s, [subject.id], a, b)).tokens for a, b in chart]
           for subject in subjects}
    named = sorted((n for n, v in own.items() if sum(v) > 0), key=lambda n: (-sum(own[n]), n))
    series = {n: own[n] for n in named[:CHART_STACKS]}
    rest = [t - sum(v[i] for v in series.values()) for i, t in enumerate(totals)]
    if any(rest):
        series[OTHERS] = rest
    chart_data = ChartData([a.astimezone(tz).date() for a, _b in chart], series, totals)
    return (overall(starts[-2], starts[-1]), overall(starts[-3], starts[-2]), days, top, at_risk, chart_data)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York"])
def test_the_digest_is_the_one_worked_out_one_subject_at_a_time(db: Database, clock: FixedClock,
                                                                zone: str) -> None:
    seed(db, clock, random.Random(zone))
    check_against_reference(db, ZoneInfo(zone))


@pytest.mark.parametrize("zone", ["Europe/Berlin", "America/New_York"])
def test_limits_on_some_subjects_split_the_shared_read_for_their_meters_only(db: Database, clock: FixedClock,
                                                                            zone: str) -> None:
    """Most limits gone: a window starting inside the chart's days or the digest's two days
    (7d, 24h, 30d) splits the every-meter read only for its limits' meters (a team's: its
    members'), and the other meters' whole reads must land where their windows sum them."""
    rnd = random.Random(f"some-{zone}")
    seed(db, clock, rnd)
    with db.session_scope() as s:
        team_a = s.scalars(select(Subject.id).where(Subject.name == "team-a")).one()
        for lim in s.scalars(select(Limit)).all():
            keep = lim.subject_id == team_a and lim.window in ("7d", "24h")
            if not keep and rnd.random() < 0.7:
                s.delete(lim)
    check_against_reference(db, ZoneInfo(zone), at_risk=False)


def check_against_reference(db: Database, tz: ZoneInfo, at_risk: bool = True) -> None:
    for now, week_start, top_n, chart_days in ((utc(11, 25, 10, 30), 0, 10, 14), (utc(12, 1, 0, 15), 2, 3, 9),
                                               (utc(11, 30, 23, 59), 6, 4, 2)):
        with db.session_scope() as s:
            d = build_digest(s, now, tz, week_start, top_n=top_n, chart_days=chart_days)
            want = reference(s, now, tz, week_start, top_n, chart_days)
        assert d.at_risk or not at_risk, "the random limits leave some at or above 80%"
        assert (d.totals, d.previous, d.subjects, d.top, d.at_risk, d.chart) == want
        with db.session_scope() as s:  # the day's unpriced calls, summed hour by hour
            unpriced = s.execute(select(func.coalesce(func.sum(Usage.unpriced_tokens), 0),
                                        func.coalesce(func.sum(Usage.unpriced_requests), 0))
                                 .where(Usage.hour >= d.start, Usage.hour < d.end)).one()
        assert d.unpriced is not None and (d.unpriced.tokens, d.unpriced.requests) == tuple(unpriced)
        assert d.active_users == sum(1 for x in want[2]
                                     if x.kind == "user" and x.totals.tokens + x.totals.requests)
        assert len(d.subjects) < 11, "an idle user has no line"
