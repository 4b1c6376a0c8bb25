"""The daily digest on SQLite and PostgreSQL: the numbers from a seeded ledger (overall once,
teams with their members, change vs the day before, local days in a non-UTC zone), limits at
80% with forecasts (agreeing with `limit_usage.limit_status`), revocations and pending requests,
the chart series; and the job against the fake Slack: exactly once per (channel, day)
across runs, restarts and racing replicas, a failed post releasing its claim, a dead run's
claim taken over, `force`, and the chart uploaded as a PNG in the message's thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent, Digest, Limit, RestoreRequest, Revocation, Subject
from bot.runtime import Services
from bot.services import digest as digest_service
from bot.services import directory, ledger
from bot.services.digest import OTHERS, DigestData, build_digest, day_starts, digest_day
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow, Totals
from bot.services.limit_usage import limit_status
from bot.slack.notifier import SlackNotifier
from handlers.app import slack_client
from jobs import daily_digest
from tests.harness import Harness, running_bot

UTC_ZONE = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")
SYSTEM = Actor.system("test")
CHANNEL = "CDIGEST01"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


NOW = utc(11, 25, 10, 30)  # the `clock` fixture: a Wednesday; yesterday is Tue 24 Nov


def _user(s: Session, clock: FixedClock, name: str, slack_id: str | None = None) -> Subject:
    return directory.ensure_user(s, clock, SYSTEM, SubjectRef(name=name, slack_user_id=slack_id))


def _rows(s: Session, clock: FixedClock, meter_id: int,
          rows: list[tuple[datetime, int, int, int, int]]) -> None:
    ledger.upsert(s, [LedgerRow(meter_id, h, i, o, 0, 0, r, c) for h, i, o, r, c in rows], clock())


def _limit(s: Session, subject: Subject, metric: str, amount: int, window: str,
           action: str = "revoke") -> None:
    s.add(Limit(subject_id=subject.id, metric=metric, amount=amount, window=window, warn=[80, 90],
                action=action, alarm=False, created_by="test", created_at=NOW, updated_at=NOW))


def seed(db: Database, clock: FixedClock) -> None:
    """alice + bob in team-ml (which has its own AIP), carol, dave, erin, and an unassigned meter.

    Yesterday (UTC): in 7,900, out 760, 14 requests, $0.147000; the day before: in 2,100,
    out 210, 5 requests, $0.059500.
    """
    with db.session_scope() as s:
        alice, bob = _user(s, clock, "alice", "UALICE01"), _user(s, clock, "bob", "UBOB0001")
        carol = _user(s, clock, "carol", "UCAROL01")
        dave, erin = _user(s, clock, "dave"), _user(s, clock, "erin")
        team, _ = directory.change_members(s, clock, SYSTEM, "team-ml", "add",
                                           [SubjectRef(slack_user_id="UALICE01"),
                                            SubjectRef(slack_user_id="UBOB0001")])

        def meter(kind: str, key: str, subject: Subject | None) -> int:
            return directory.ensure_meter(s, clock, kind, key, subject.id if subject else None).id

        _rows(s, clock, meter("profile", "aliceaip0001", alice), [
            (utc(11, 10, 23), 500, 0, 1, 0),  # before the chart, inside the month
            (utc(11, 22, 23), 100, 0, 1, 0),
            (utc(11, 23, 9), 1500, 150, 3, 7500),
            (utc(11, 24, 9), 1000, 100, 2, 5000),
            (utc(11, 24, 15), 2000, 200, 4, 10000),
            (utc(11, 25, 1), 2000, 0, 1, 0),  # today: not in the digest's day
        ])
        _rows(s, clock, meter("principal", "arn:aws:iam::123456789012:user/bob", bob), [
            (utc(11, 23, 12), 500, 50, 1, 2000), (utc(11, 24, 12), 500, 50, 1, 2000)])
        _rows(s, clock, meter("profile", "teamaip00001", team), [(utc(11, 24, 10), 4000, 400, 5, 30000)])
        _rows(s, clock, meter("profile", "carolaip0001", carol), [
            (utc(11, 23, 23), 100, 10, 1, 50000), (utc(11, 24, 23), 100, 10, 1, 100000)])
        _rows(s, clock, meter("profile", "daveaip00001", dave), [(utc(11, 15, 10), 50, 0, 1, 10)])
        _rows(s, clock, meter("profile", "erinaip00001", erin), [(utc(11, 15, 11), 40, 0, 1, 10)])
        _rows(s, clock, meter("metadata", "userId=ghost", None), [(utc(11, 24, 5), 300, 0, 1, 0)])

        _limit(s, alice, "tokens", 8000, "month")  # 7,550 used: 94%
        _limit(s, team, "cost_usd", 50000, "week")  # $0.0565 (team + members since Mon): 113%
        _limit(s, carol, "tokens", 1000, "24h")  # 110 since yesterday 10:30: 11%
        _limit(s, bob, "requests", 2, "day", action="notify")  # nothing today: 0%
        _limit(s, erin, "tokens", 45, "30d")  # 40: 89%, rolling (no forecast)

        manual = Revocation(subject_id=carol.id, reason="manual", note="<!channel> over budget & more",
                            state="active", revoked_by="slack:UADMIN01", revoked_at=utc(11, 24, 12),
                            principals=[])
        s.add_all([
            manual,
            Revocation(subject_id=team.id, reason="limit", note="cost/week", state="active",
                       revoked_by="system:enforce", revoked_at=utc(11, 25, 9), principals=[]),
            Revocation(subject_id=bob.id, reason="manual", state="restored", revoked_by="slack:UADMIN01",
                       revoked_at=utc(11, 20), restored_by="slack:UADMIN01", restored_at=utc(11, 21),
                       principals=[]),
        ])
        s.flush()
        s.add_all([
            RestoreRequest(revocation_id=manual.id, requester="UCAROL01", reason="demo <at> 3pm",
                           status="pending", created_at=utc(11, 25, 8, 30), expires_at=utc(11, 26, 8, 30)),
            RestoreRequest(revocation_id=manual.id, requester="UCAROL01", reason="denied one",
                           status="denied", created_at=utc(11, 24, 13), expires_at=utc(11, 25, 13)),
            RestoreRequest(revocation_id=manual.id, requester="UCAROL01", reason="lapsed",
                           status="pending", created_at=utc(11, 24, 10), expires_at=utc(11, 25, 10)),
        ])


def digest(db: Database, tz: ZoneInfo = UTC_ZONE, **kw: Any) -> DigestData:
    with db.session_scope() as s:
        return build_digest(s, NOW, tz, 0, **kw)


@pytest.fixture
def seeded(db: Database, clock: FixedClock) -> Database:
    seed(db, clock)
    return db


# ---- the numbers ------------------------------------------------------------------------


def test_yesterday_overall_counts_every_meter_once(seeded: Database) -> None:
    d = digest(seeded)
    assert (d.day, d.start, d.end, d.now, d.tz_name) == (date(2026, 11, 24), utc(11, 24), utc(11, 25),
                                                         NOW, "UTC")
    # team-ml's line includes alice and bob, yet the overall counts their meters once.
    assert d.totals == Totals(7900, 760, 0, 0, 14, 147000)
    assert d.previous == Totals(2100, 210, 0, 0, 5, 59500)


def test_per_subject_totals_with_change_and_top_by_cost_then_tokens(seeded: Database) -> None:
    d = digest(seeded)
    by_name = {s.name: s for s in d.subjects}
    assert set(by_name) == {"carol", "team-ml", "alice", "bob"}  # dave, erin: nothing either day
    assert (by_name["team-ml"].totals, by_name["team-ml"].previous) == (
        Totals(7500, 750, 0, 0, 12, 47000), Totals(2000, 200, 0, 0, 4, 9500))
    assert (by_name["alice"].totals, by_name["alice"].previous) == (
        Totals(3000, 300, 0, 0, 6, 15000), Totals(1500, 150, 0, 0, 3, 7500))
    assert (by_name["bob"].totals, by_name["bob"].previous) == (
        Totals(500, 50, 0, 0, 1, 2000), Totals(500, 50, 0, 0, 1, 2000))
    assert by_name["carol"].totals.cost_micro_usd == 100000
    assert by_name["carol"].previous.cost_micro_usd == 50000
    assert [(s.name, s.kind) for s in d.top] == [("carol", "user"), ("team-ml", "team"),
                                                ("alice", "user"), ("bob", "user")]
    assert [s.name for s in digest(seeded, top_n=2).top] == ["carol", "team-ml"]
    assert d.active_users == 3


def test_top_breaks_cost_ties_by_tokens(db: Database, clock: FixedClock) -> None:
    with db.session_scope() as s:
        for name, tokens in (("few", 10), ("many", 1000)):
            m = directory.ensure_meter(s, clock, "profile", f"{name}aip", _user(s, clock, name).id).id
            _rows(s, clock, m, [(utc(11, 24, 3), tokens, 0, 1, 500)])
    assert [t.name for t in digest(db).top] == ["many", "few"]


def test_limits_at_80_percent_with_forecast_agree_with_limit_status(seeded: Database) -> None:
    d = digest(seeded)
    got = [(a.status.subject, a.kind, a.status.metric, a.status.window, a.status.used,
            round(a.status.percent, 1), a.forecast) for a in d.at_risk]
    assert got == [
        ("team-ml", "team", "cost_usd", "week", 56500, 113.0, 162256),  # 56,500 × 168 h / 58.5 h
        # in 7,100 and out 450, each × 720 h / 586.5 h, rounded: 8,716 + 552
        ("alice", "user", "tokens", "month", 7550, 94.4, 9268),
        ("erin", "user", "tokens", "30d", 40, 88.9, None),  # rolling: no forecast
    ]
    with seeded.session_scope() as s:
        expected = {}
        for limit in s.scalars(select(Limit)):
            subject = s.get(Subject, limit.subject_id)
            assert subject is not None
            st = limit_status(s, limit, subject, NOW, UTC_ZONE, 0)
            if st.percent >= 80:
                expected[st.limit_id] = st
    assert {a.status.limit_id: a.status for a in d.at_risk} == expected


def test_revocations_and_pending_requests(seeded: Database) -> None:
    d = digest(seeded)
    assert [(r.subject, r.kind, r.reason, r.since, r.by) for r in d.revocations] == [
        ("carol", "user", "manual", utc(11, 24, 12), "slack:UADMIN01"),
        ("team-ml", "team", "limit", utc(11, 25, 9), "system:enforce")]
    assert d.revocations[0].note == "<!channel> over budget & more"
    # Denied and lapsed requests are not waiting for anyone.
    assert [(r.subject, r.requester, r.reason, r.age) for r in d.requests] == [
        ("carol", "UCAROL01", "demo <at> 3pm", timedelta(hours=2))]


def test_chart_stacks_owning_subjects_and_sums_to_each_days_total(seeded: Database) -> None:
    c = digest(seeded).chart
    assert c.days == [date(2026, 11, 11) + timedelta(days=i) for i in range(14)]
    # Top 5 of the period by the meter's owner (team-ml: its own AIP only), then the rest:
    # erin on the 15th and the unassigned meter on the 24th.
    assert list(c.series) == ["alice", "team-ml", "bob", "carol", "dave", OTHERS]
    day = {d: i for i, d in enumerate(c.days)}
    assert [c.series["alice"][day[date(2026, 11, n)]] for n in (22, 23, 24)] == [100, 1650, 3300]
    assert c.series["team-ml"][day[date(2026, 11, 24)]] == 4400
    assert c.series[OTHERS][day[date(2026, 11, 15)]] == 40
    assert c.series[OTHERS][day[date(2026, 11, 24)]] == 300
    assert c.totals[day[date(2026, 11, 24)]] == 7900 + 760  # the same day as the headline
    for i in range(14):
        assert sum(v[i] for v in c.series.values()) == c.totals[i]
    assert sum(c.totals) == 90 + 100 + 2310 + 8660
    assert digest(seeded, chart_days=3).chart.days == [date(2026, 11, 22), date(2026, 11, 23),
                                                       date(2026, 11, 24)]


def test_local_days_in_new_york(seeded: Database) -> None:
    """05:30 in New York: yesterday is 24 Nov 05:00 UTC → 25 Nov 05:00 UTC."""
    d = digest(seeded, NY)
    assert (d.day, d.start, d.end) == (date(2026, 11, 24), utc(11, 24, 5), utc(11, 25, 5))
    assert d.totals == Totals(9900, 760, 0, 0, 15, 147000)  # + alice at 01:00 UTC on the 25th
    assert d.previous == Totals(2100, 210, 0, 0, 5, 59500)
    assert d.tz_name == "America/New_York"


def test_day_starts_step_whole_local_days_across_dst() -> None:
    starts = day_starts(utc(11, 3, 12), NY, 3)  # New York left DST on Sunday 1 Nov 2026
    assert starts == [utc(10, 31, 4), utc(11, 1, 4), utc(11, 2, 5), utc(11, 3, 5)]
    assert digest_day(utc(11, 3, 3), NY) == date(2026, 11, 1)  # 22:00 on the 2nd in New York


def test_cache_tokens_count_in_tokens_wherever_the_digest_shows_them(db: Database,
                                                                    clock: FixedClock) -> None:
    """tokens = input + output + cache read + cache write; an input limit counts cache tokens."""
    with db.session_scope() as s:
        fay = _user(s, clock, "fay", "UFAY0001")
        m = directory.ensure_meter(s, clock, "profile", "fayaip000001", fay.id).id
        ledger.upsert(s, [LedgerRow(m, utc(11, 24, 9), 100, 20, 5000, 300, 2, 99)], clock())
        _limit(s, fay, "tokens", 6000, "month")
        _limit(s, fay, "input_tokens", 6000, "week")
    d = digest(db)
    assert d.totals.tokens == 100 + 20 + 5000 + 300
    [row] = d.subjects
    assert row.totals.tokens == 5420 and row.totals.metric("input_tokens") == 5400
    assert d.chart.totals[-1] == 5420
    with db.session_scope() as s:
        fay_row = directory.get(s, SubjectRef(name="fay"))
        statuses = {(r.status.metric, r.status.used) for r in d.at_risk}
        for limit in s.scalars(select(Limit).where(Limit.subject_id == fay_row.id)):
            assert (limit.metric, limit_status(s, limit, fay_row, NOW, UTC_ZONE, 0).used) in statuses
    assert statuses == {("tokens", 5420), ("input_tokens", 5400)}
    with db.session_scope() as s:
        assert ledger.daily_series(s, [fay_row.id], utc(11, 24), utc(11, 25))[0][1] == 5420


def test_empty_database(db: Database) -> None:
    d = digest(db)
    assert (d.totals, d.previous, d.top, d.at_risk, d.revocations, d.requests) == (
        Totals(), Totals(), [], [], [], [])
    assert d.chart.series == {} and d.chart.totals == [0] * 14


# ---- the job: exactly once -----------------------------------------------------------


@pytest.fixture
def bot(seeded: Database, clock: FixedClock) -> Iterator[Harness]:
    with running_bot(seeded, clock, BOT_DIGEST_CHANNEL=CHANNEL) as h:
        yield h


def posts(h: Harness) -> list[Any]:
    return [c for c in h.slack.calls("chat.postMessage") if c.args.get("channel") == CHANNEL]


def digest_rows(db: Database) -> list[tuple[str, str, str | None]]:
    with db.session_scope() as s:
        return [(r.channel, r.day, r.ts) for r in s.scalars(select(Digest))]


def digest_audits(db: Database) -> list[AuditEvent]:
    with db.session_scope() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "digest.post")
                              .order_by(AuditEvent.id)))


def replica(h: Harness) -> Services:
    """Another process on the same database: its own engine, Slack client and services."""
    return Services(h.settings, Database(h.services.db.url), h.services.clock,
                    notifier=SlackNotifier(slack_client(h.settings)))


def test_posts_the_digest_and_the_chart_in_its_thread(bot: Harness) -> None:
    out = daily_digest.run(bot.services)
    assert out.ok, out.message
    r = out.value
    assert r is not None and (r.posted, r.recorded, r.chart, r.day) == (True, True, "uploaded",
                                                                      date(2026, 11, 24))
    [post] = posts(bot)
    assert post.args["text"] == ("Bedrock digest for 2026-11-24: 8.7k tokens (▲ 275%), $0.15 (▲ 147%); "
                                 "3 near a limit, 2 revoked, 1 waiting for approval")
    assert post.args["blocks"][0]["text"]["text"] == "Bedrock usage digest: Tue 2026-11-24"
    complete = bot.slack.last("files.completeUploadExternal")
    assert (complete.args["channel_id"], complete.args["thread_ts"]) == (CHANNEL, r.ts)
    [png] = bot.slack.uploaded_files().values()
    assert png.startswith(PNG_MAGIC) and png[16:24] == (1200).to_bytes(4, "big") + (600).to_bytes(4, "big")
    assert digest_rows(bot.services.db) == [(CHANNEL, "2026-11-24", r.ts)]
    [ev] = digest_audits(bot.services.db)
    assert (ev.actor, ev.outcome, ev.target) == ("system:daily_digest", "ok", f"digest:{CHANNEL}:2026-11-24")
    assert '"chart":"uploaded"' in ev.details and '"tokens":8660' in ev.details


def test_two_runs_the_same_day_post_once(bot: Harness, clock: FixedClock) -> None:
    assert daily_digest.run(bot.services).ok
    clock.advance(hours=5)
    again = daily_digest.run(bot.services)
    assert again.ok and again.value is not None and not again.value.posted
    assert again.value.note == "already posted"
    assert len(posts(bot)) == 1 and len(bot.slack.calls("files.completeUploadExternal")) == 1
    clock.advance(days=1)  # the next day is a new digest
    nxt = daily_digest.run(bot.services)
    assert nxt.value is not None and nxt.value.posted and nxt.value.day == date(2026, 11, 25)
    assert len(posts(bot)) == 2


def test_a_restarted_bot_does_not_post_again(bot: Harness) -> None:
    assert daily_digest.run(bot.services).ok
    restarted = replica(bot)
    try:
        out = daily_digest.run(restarted)
    finally:
        restarted.db.dispose()
    assert out.ok and out.value is not None and not out.value.posted
    assert len(posts(bot)) == 1


def test_racing_replicas_post_once(bot: Harness) -> None:
    replicas = [replica(bot) for _ in range(4)]
    barrier = threading.Barrier(len(replicas))
    results: list[Any] = []

    def go(services: Services) -> None:
        barrier.wait()
        results.append(daily_digest.run(services))

    threads = [threading.Thread(target=go, args=(r,)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in replicas:
        r.db.dispose()
    assert len(results) == 4 and all(o.ok for o in results), [o.message for o in results]
    assert sum(1 for o in results if o.value.posted) == 1
    assert len(posts(bot)) == 1 and len(bot.slack.uploaded_files()) == 1
    assert len(digest_rows(bot.services.db)) == 1 and len(digest_audits(bot.services.db)) == 1


def test_a_failed_post_releases_the_claim_and_the_next_run_posts(bot: Harness, clock: FixedClock) -> None:
    bot.slack.fail_always("chat.postMessage", "channel_not_found")
    out = daily_digest.run(bot.services)
    assert not out.ok and "channel_not_found" in out.message
    assert digest_rows(bot.services.db) == []  # released: not "posted"
    [ev] = digest_audits(bot.services.db)
    assert ev.outcome == "error" and '"claim_released":true' in ev.details
    assert bot.slack.uploaded_files() == {}
    bot.slack.heal("chat.postMessage")
    clock.advance(minutes=1)
    retry = daily_digest.run(bot.services)
    assert retry.ok and retry.value is not None and retry.value.posted
    assert len(posts(bot)) == 2  # the failed attempt (the fake records it too), then the post
    assert len(bot.slack.uploaded_files()) == 1
    assert digest_rows(bot.services.db) == [(CHANNEL, "2026-11-24", retry.value.ts)]
    assert not daily_digest.run(bot.services).value.posted  # type: ignore[union-attr]


def test_a_failed_chart_upload_keeps_the_post_and_says_why_in_the_channel(bot: Harness) -> None:
    bot.slack.fail_always("files.completeUploadExternal", "not_in_channel")
    out = daily_digest.run(bot.services)
    assert out.ok and out.value is not None and (out.value.posted, out.value.chart) == (True, "failed")
    assert digest_rows(bot.services.db) == [(CHANNEL, "2026-11-24", out.value.ts)]
    digest_post, notice = posts(bot)
    assert digest_post.args["text"].startswith("Bedrock digest for 2026-11-24")
    assert notice.args["text"] == (
        ":warning: The usage chart for 2026-11-24 could not be posted: Slack said not_in_channel. "
        "Files need the bot in this channel: type `/invite` followed by the bot's name here.")
    [ev] = digest_audits(bot.services.db)
    assert '"chart_problem":"Slack said not_in_channel"' in ev.details
    assert not daily_digest.run(bot.services).value.posted  # type: ignore[union-attr]


def test_a_dead_runs_claim_is_taken_over_once_stale(bot: Harness, clock: FixedClock) -> None:
    with bot.services.db.session_scope() as s:  # a run that claimed, then died before posting
        s.add(Digest(channel=CHANNEL, day="2026-11-24", posted_at=clock() - timedelta(minutes=5), ts=None))
    assert not daily_digest.run(bot.services).value.posted  # type: ignore[union-attr]
    assert posts(bot) == []
    clock.advance(minutes=11)  # the claim is now 16 minutes old
    out = daily_digest.run(bot.services)
    assert out.value is not None and out.value.posted and out.value.recorded
    assert digest_rows(bot.services.db) == [(CHANNEL, "2026-11-24", out.value.ts)]
    assert not daily_digest.run(bot.services).value.posted  # type: ignore[union-attr]


def test_force_posts_again_and_records_nothing_new(bot: Harness) -> None:
    first = daily_digest.run(bot.services)
    forced = daily_digest.run(bot.services, force=True, actor=Actor.slack("UADMIN01"))
    assert forced.ok and forced.value is not None
    assert (forced.value.posted, forced.value.forced, forced.value.recorded) == (True, True, False)
    assert len(posts(bot)) == 2
    assert first.value is not None
    assert digest_rows(bot.services.db) == [(CHANNEL, "2026-11-24", first.value.ts)]
    ev = digest_audits(bot.services.db)[-1]
    assert ev.actor == "slack:UADMIN01" and '"forced":true' in ev.details


def test_force_before_the_scheduled_run_counts_as_the_days_digest(bot: Harness) -> None:
    forced = daily_digest.run(bot.services, force=True, actor=Actor.slack("UADMIN01"))
    assert forced.value is not None and forced.value.recorded
    assert not daily_digest.run(bot.services).value.posted  # type: ignore[union-attr]
    assert len(posts(bot)) == 1


def test_force_needs_an_admin(bot: Harness) -> None:
    out = daily_digest.run(bot.services, force=True, actor=Actor.slack("UALICE01"))
    assert not out.ok and "admin" in out.message
    assert posts(bot) == [] and digest_rows(bot.services.db) == []
    [ev] = digest_audits(bot.services.db)
    assert (ev.actor, ev.outcome) == ("slack:UALICE01", "denied")


def test_no_digest_channel_is_a_clear_error(seeded: Database, clock: FixedClock) -> None:
    with running_bot(seeded, clock) as h:
        out = daily_digest.run(h.services)
        assert not out.ok and "BOT_DIGEST_CHANNEL" in out.message
        assert h.slack.calls("chat.postMessage") == []
        [ev] = digest_audits(seeded)
        assert (ev.actor, ev.outcome) == ("system:daily_digest", "error")


def test_a_given_uploader_gets_the_png_and_the_thread(bot: Harness) -> None:
    got: list[tuple[Any, ...]] = []
    out = daily_digest.run(bot.services, uploader=lambda *a: got.append(a))
    assert out.value is not None
    [(channel, png, filename, title, thread_ts)] = got
    assert (channel, filename, thread_ts) == (CHANNEL, "bedrock-usage-2026-11-24.png", out.value.ts)
    assert png.startswith(PNG_MAGIC) and "2026-11-11 to 2026-11-24 (UTC)" in title
    assert bot.slack.uploaded_files() == {}


def test_without_a_slack_client_the_chart_is_skipped(seeded: Database, clock: FixedClock) -> None:
    with running_bot(seeded, clock, BOT_DIGEST_CHANNEL=CHANNEL) as h:
        plain = Services(h.settings, seeded, clock)  # NullNotifier: logs, has no client
        out = daily_digest.run(plain)
        assert out.ok and out.value is not None and (out.value.posted, out.value.chart) == (True, "skipped")
        assert digest_rows(seeded) == [(CHANNEL, "2026-11-24", "")]
        assert not daily_digest.run(plain).value.posted  # type: ignore[union-attr]


def test_sums_past_float_precision_stay_exact(db: Database, clock: FixedClock) -> None:
    """PostgreSQL sums as float8 for speed; a sum that could have lost precision is redone exactly."""
    with db.session_scope() as s:
        m = directory.ensure_meter(s, clock, "profile", "bigaip", _user(s, clock, "big").id).id
        _rows(s, clock, m, [(utc(11, 24, 3), 2**53 + 1, 3, 1, 2**53 + 7), (utc(11, 24, 4), 1, 0, 1, 0)])
    d = digest(db)
    assert d.totals == Totals(2**53 + 2, 3, 0, 0, 2, 2**53 + 7)
    assert d.chart.totals[-1] == 2**53 + 5


def test_probing_old_intervals_per_meter_gives_the_same_digest(seeded: Database,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Intervals only limits need are read per meter through the primary key when few meters
    need them (PostgreSQL), by a filtered scan otherwise: the digest is the same either way."""
    monkeypatch.setattr(digest_service, "PROBE_SHARE", 0.0)
    scanned = digest(seeded)
    monkeypatch.setattr(digest_service, "PROBE_SHARE", 1.0)
    probed = digest(seeded)
    assert probed == scanned
    assert [a.status.used for a in probed.at_risk] == [56500, 7550, 40]


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Europe/Berlin", "America/New_York",
                                  "Australia/Eucla", "Pacific/Chatham"])
def test_the_rollup_gives_the_digest_the_hourly_ledger_gives(db: Database, clock: FixedClock,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               zone: str) -> None:
    """A random ledger (45 days, a team, a meter with no subject, a limit of every window on
    every subject): the digest read from whole UTC days of `usage_daily` plus hourly edges is
    the digest read from the hourly rows alone, at several times of day and month, in zones
    whose midnights are not whole UTC hours (+5:30, +8:45, +13:45), scanned and probed."""
    import random

    rnd = random.Random(zone)
    windows = ["day", "week", "month", "24h", "7d", "30d"]
    with db.session_scope() as s:
        users = [_user(s, clock, f"u{i}", f"UUSER{i:04d}") for i in range(6)]
        team, _ = directory.change_members(s, clock, SYSTEM, "team-r", "add",
                                           [SubjectRef(slack_user_id=f"UUSER{i:04d}") for i in range(3)])
        owners: list[Subject | None] = [*users, team, None]
        for i, owner in enumerate(owners):
            m = directory.ensure_meter(s, clock, "profile" if owner else "metadata", f"aip{i:09d}",
                                       owner.id if owner else None).id
            hours = [utc(12, 2) - (h + 1) * timedelta(hours=1) for h in range(46 * 24) if rnd.random() < 0.4]
            _rows(s, clock, m, [(h, rnd.randint(0, 5000), rnd.randint(0, 500), rnd.randint(0, 9),
                                 rnd.randint(0, 90000)) for h in hours])
        for j, owner in enumerate([*users, team]):
            for w in windows:
                _limit(s, owner, ["tokens", "cost_usd", "requests"][j % 3],
                       rnd.randint(1, 400) * {"tokens": 5000, "cost_usd": 90000, "requests": 9}[
                           ["tokens", "cost_usd", "requests"][j % 3]], w)
    tz = ZoneInfo(zone)
    for now in (utc(11, 25, 10, 30), utc(12, 1, 0, 15), utc(11, 30, 23, 59)):
        with db.session_scope() as s:
            hourly = build_digest(s, now, tz, 2, rollup=False)
            rolled = build_digest(s, now, tz, 2)
            monkeypatch.setattr(digest_service, "PROBE_SHARE", 1.0)
            probed = build_digest(s, now, tz, 2)
            monkeypatch.setattr(digest_service, "PROBE_SHARE", 0.25)
        assert hourly.at_risk and hourly.totals.tokens and any(hourly.chart.totals)
        assert rolled == hourly
        assert probed == hourly
