"""The continuous usage-stream reader (bot/flows/usage_stream_loop.py) on SQLite and PostgreSQL,
with moto's Kinesis: it reads on the scheduler's leader only, paces GetRecords by the Kinesis
limits, hands over to a new leader from the database's checkpoints without losing or repeating a
call, commits nothing after losing the lease, enforces as soon as pushed usage crosses a limit,
keeps usage_sync off the stream while it reads, and stops on shutdown. Time is a counter the
tests move (`Ticks`), never slept on."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.aws.usage_stream import Page, StreamRecord
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import AwsError
from bot.flows import usage_stream
from bot.flows.usage_stream_loop import IDLE, MIN_GAP, NOT_LEADER_WAIT, READ_RATE, StreamLoop, next_read
from bot.models import Revocation, StreamEvent, Usage
from bot.quantities import Metric, Window, parse_amount
from bot.runtime import Services
from bot.services import directory, leases, ledger, limits, stream_usage
from bot.services.directory import SubjectRef
from handlers.shutdown import GracefulStop
from jobs import usage_sync
from jobs.scheduler import JobRunner
from tests.integration.test_usage_stream import (
    ADMIN,
    ELEVEN,
    HAIKU,
    REGION,
    STREAM,
    _seed_calls,
    event_id,
    put,
    record,
    services_for,
    setup_directory,
    start_stream,
    totals,
)

TTL = timedelta(seconds=90)
NOBODY = "arn:aws:iam::123456789012:user/nobody"


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        kinesis = boto3.client("kinesis", region_name=REGION)
        kinesis.create_stream(StreamName=STREAM, ShardCount=2)
        yield {"kinesis": kinesis, "cloudwatch": boto3.client("cloudwatch", region_name=REGION),
               "iam": boto3.client("iam", region_name=REGION)}


class Ticks:
    """A monotonic clock the test moves; as `wait`, it moves by the wait asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def replica(services: Services, name: str, ticks: Ticks, **kw: Any) -> tuple[JobRunner, StreamLoop]:
    runner = JobRunner(services, holder=f"replica-{name}", lease_ttl=TTL)
    loop = StreamLoop(services, is_leader=runner.is_leader, fence=runner.fence, monotonic=ticks, **kw)
    return runner, loop


def get_records(loop: StreamLoop) -> int:
    return loop.consumer.kinesis.calls["GetRecords"]


def test_pacing_follows_the_kinesis_limits() -> None:
    small = Page([StreamRecord("1", b"x" * 100)], "it", behind_ms=0)
    assert next_read(0.0, small, 2_000) == IDLE  # caught up: once a second
    assert next_read(0.0, Page([], "it", behind_ms=5_000), 2_000) == MIN_GAP  # behind: 5 calls/s
    full = Page([StreamRecord(str(i), b"x") for i in range(3)], "it", behind_ms=0)
    assert next_read(0.0, full, 3) == MIN_GAP  # a full page: there is more
    big = Page([StreamRecord("1", b"x" * (4 * READ_RATE))], "it", behind_ms=1)
    assert next_read(0.0, big, 2_000) == pytest.approx(4.0)  # 8 MiB at 2 MiB/s


def test_only_the_leader_reads_and_counts_each_call_once(db: Database, clock: FixedClock,
                                                         aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    start_stream(db, clock)
    ticks = Ticks()
    a_runner, a = replica(services_for(db, clock, aws), "a", ticks)
    b_runner, b = replica(services_for(db, clock, aws), "b", ticks)
    assert a_runner.heartbeat() and not b_runner.heartbeat()
    _seed_calls(aws, aip, 3)  # 3 records on alice's AIP, 3 on her IAM user

    assert b.step() == NOT_LEADER_WAIT and get_records(b) == 0
    wait = a.step()
    assert a.totals.counted == 6 and totals(db, "alice").requests == 6
    assert get_records(a) == 2 and wait == pytest.approx(IDLE)  # one read per shard, caught up

    # Nothing is due yet: a step before the idle wait reads nothing.
    a.step()
    assert get_records(a) == 2
    ticks.advance(IDLE)
    _seed_calls(aws, aip, 1)
    a.step()
    assert get_records(a) == 4 and totals(db, "alice").requests == 8
    assert get_records(b) == 0 and b.totals.records == 0


def test_a_backlog_is_read_at_most_five_times_a_second_per_shard(db: Database, clock: FixedClock,
                                                                 aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    start_stream(db, clock)
    ticks = Ticks()
    runner, loop = replica(services_for(db, clock, aws), "a", ticks, page_records=1)
    assert runner.heartbeat()
    _seed_calls(aws, aip, 12)  # 12 records over 2 shards, read one record a call

    reads: list[tuple[float, int]] = []  # (when, GetRecords calls made then)
    for _ in range(500):
        if loop.totals.records >= 12:
            break
        before, at = get_records(loop), ticks.now
        wait = loop.step()
        reads.append((at, get_records(loop) - before))
        ticks.advance(wait)
    assert totals(db, "alice").requests == 24
    # In any one second, at most 5 GetRecords per shard (2 shards), and no call was refused.
    for start, _ in reads:
        assert sum(n for t, n in reads if start <= t < start + 1.0 - 1e-9) <= 10
    assert loop.totals.throttled == 0 and len(reads) < 60


def test_a_new_leader_takes_over_from_the_checkpoint_and_the_old_one_commits_nothing(
        db: Database, clock: FixedClock, aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    start_stream(db, clock)
    ticks = Ticks()
    a_runner, a = replica(services_for(db, clock, aws), "a", ticks)
    b_runner, b = replica(services_for(db, clock, aws), "b", ticks)
    assert a_runner.heartbeat()
    _seed_calls(aws, aip, 2)
    a.step()
    assert totals(db, "alice").requests == 4

    # A reads its next page, then stalls past its lease; B takes over before A commits.
    _seed_calls(aws, aip, 3)
    real_read = a.consumer.kinesis.read

    def stalled(iterator: str, limit: int = 10_000) -> Page:
        page = real_read(iterator, limit)
        clock.at += TTL + timedelta(seconds=1)
        assert contextvars.Context().run(b_runner.heartbeat)  # outside A's fence, as in B's process
        return page

    a.consumer.kinesis.read = stalled  # type: ignore[method-assign]
    ticks.advance(IDLE)
    assert a.step() == NOT_LEADER_WAIT  # LeaseLost at its first commit: it stops reading
    assert totals(db, "alice").requests == 4 and a.last_round is None
    a.consumer.kinesis.read = real_read  # type: ignore[method-assign]

    b.step()  # from the database's checkpoints: the 3 new records, once
    assert totals(db, "alice").requests == 4 + 6
    assert a.step() == NOT_LEADER_WAIT  # A is a standby now
    ticks.advance(IDLE)
    _seed_calls(aws, aip, 1)
    b.step()
    assert totals(db, "alice").requests == 4 + 6 + 2


def test_pushed_usage_over_a_limit_is_enforced_after_the_round(db: Database, clock: FixedClock,
                                                               aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    aws["iam"].create_user(UserName="alice")
    with db.session_scope() as s:
        limits.set_limit(s, clock, ADMIN, SubjectRef(name="alice"), parse_amount("10k"), Window.DAY,
                         Metric.TOKENS, (80, 90), "revoke", False)
    start_stream(db, clock)
    ticks = Ticks()
    runner, loop = replica(services_for(db, clock, aws), "a", ticks, enforce_gap=2.0)
    assert runner.heartbeat()
    at = ELEVEN + timedelta(minutes=5)

    put(aws, [(event_id(), record(at, HAIKU, arn=NOBODY, inp=50_000))], at)
    put(aws, [(event_id(), record(at, HAIKU, inp=1, out=0, metadata={"userId": "u-carol"}))], at)
    loop.step()
    assert loop.totals.counted == 1 and loop.enforce_runs == 0  # carol has no limit: no enforce

    ticks.advance(IDLE)
    put(aws, [(event_id(), record(at, aip, inp=4_000, out=0, cache_read=7_000))], at)
    loop.step()
    assert loop.enforce_runs == 1
    with db.session_scope() as s:
        revoked = s.scalar(select(Revocation).where(Revocation.state == "active"))
        assert revoked is not None and revoked.reason == "limit"
    policies = aws["iam"].list_user_policies(UserName="alice")["PolicyNames"]
    assert any(p.startswith("bedrock-bot-deny") for p in policies)

    # Another limited call within ENFORCE_GAP waits for the gap, then enforce runs again.
    ticks.advance(IDLE)
    put(aws, [(event_id(), record(at, aip, inp=1, out=0))], at)
    wait = loop.step()
    assert loop.enforce_runs == 1 and 0 < wait <= loop.enforce_gap == 2.0
    ticks.advance(wait)
    loop.step()
    assert loop.enforce_runs == 2


def test_usage_sync_leaves_the_stream_to_the_running_loop(db: Database, clock: FixedClock,
                                                          aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    start_stream(db, clock)
    ticks = Ticks()
    services = services_for(db, clock, aws)
    runner, loop = replica(services, "a", ticks)
    assert runner.heartbeat()
    seen: list[int] = []

    def wait(seconds: float) -> bool:
        # While the loop runs, a usage sync on this replica does not read the stream.
        _seed_calls(aws, aip, 1)
        usage_sync.run(services, discover=False, then_enforce=False)
        seen.append(usage_stream.consumer_for(services).kinesis.calls["GetRecords"])
        ticks.advance(seconds)
        return len(seen) == 2

    _seed_calls(aws, aip, 1)
    loop.wait = wait
    loop.run()
    assert seen == [0, 0]
    assert totals(db, "alice").requests == 2 + 2  # the loop's two rounds; the last record waits
    assert not usage_stream.continuous_reading(services)

    usage_sync.run(services, discover=False, then_enforce=False)  # alone (run-job): reads it
    assert totals(db, "alice").requests == 6


def test_shutdown_stops_the_loop_and_then_releases_the_lease(db: Database, clock: FixedClock,
                                                              aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    start_stream(db, clock)
    services = services_for(db, clock, aws)
    runner = JobRunner(services, holder="replica-a", lease_ttl=TTL)
    assert runner.heartbeat()
    stop = threading.Event()
    rounds = threading.Event()
    loop = StreamLoop(services, is_leader=runner.is_leader, fence=runner.fence, stop=stop)
    real_step = loop.step

    def step() -> float:
        try:
            return real_step()
        finally:
            rounds.set()

    loop.step = step  # type: ignore[method-assign]
    _seed_calls(aws, aip, 2)
    thread = threading.Thread(target=loop.run, daemon=True)
    background = _Background(services, runner, stop, thread)
    thread.start()
    assert rounds.wait(timeout=30)  # the first round ran; the loop now waits on `stop`
    assert usage_stream.continuous_reading(services)

    GracefulStop(within=3600, exit_now=_no_exit).finish(None, background)

    assert not thread.is_alive() and not usage_stream.continuous_reading(services)
    assert totals(db, "alice").requests == 4
    with db.session_scope() as s:
        assert leases.holder_of(s, "scheduler", clock()) is None  # released after the loop ended


def _no_exit(code: int) -> None:
    raise AssertionError(f"exit {code}")


class _Background:
    def __init__(self, services: Services, runner: JobRunner, stop: threading.Event,
                 stream_thread: threading.Thread) -> None:
        self.services, self.runner, self.stop = services, runner, stop
        self.stream_thread: threading.Thread | None = stream_thread
        self.thread: threading.Thread | None = None



def test_ledger_add_adds_every_column_to_existing_hours(db: Database, clock: FixedClock) -> None:
    """`ledger.add` (one unnest statement on PostgreSQL, an executemany on SQLite): new rows are
    inserted, existing (meter, hour) rows get every column added, other hours are left alone."""
    now = clock()
    with db.session_scope() as s:
        m1 = directory.ensure_meter(s, clock, "metadata", "userId=a", None).id
        m2 = directory.ensure_meter(s, clock, "metadata", "userId=b", None).id
        ledger.add(s, [ledger.LedgerRow(m1, ELEVEN, 1, 2, 3, 4, 5, 6, 7, 8),
                       ledger.LedgerRow(m2, ELEVEN - timedelta(hours=1), 10, 0, 0, 0, 1, 0, 0, 0)], now)
    with db.session_scope() as s:
        assert ledger.add(s, [ledger.LedgerRow(m1, ELEVEN, 10, 20, 30, 40, 50, 60, 70, 80),
                              ledger.LedgerRow(m2, ELEVEN, 5, 0, 0, 0, 1, 9, 0, 0)], now) == 2
    with db.session_scope() as s:
        rows = {(u.meter_id, u.hour): (u.input_tokens, u.output_tokens, u.cache_read_tokens,
                                       u.cache_write_tokens, u.requests, u.cost_micro_usd,
                                       u.unpriced_tokens, u.unpriced_requests)
                for u in s.scalars(select(Usage))}
    assert rows == {(m1, ELEVEN): (11, 22, 33, 44, 55, 66, 77, 88),
                    (m2, ELEVEN - timedelta(hours=1)): (10, 0, 0, 0, 1, 0, 0, 0),
                    (m2, ELEVEN): (5, 0, 0, 0, 1, 9, 0, 0)}


def test_event_ids_are_recorded_once_per_batch_statement(db: Database, clock: FixedClock) -> None:
    with db.session_scope() as s:
        assert stream_usage._first_seen(s, ["e1", "e2"], clock()) == {"e1", "e2"}
    with db.session_scope() as s:
        assert stream_usage._first_seen(s, ["e2", "e3", "e1"], clock()) == {"e3"}
        assert stream_usage._first_seen(s, [], clock()) == set()
    with db.session_scope() as s:
        seen = {e.event_id: e.seen_at for e in s.scalars(select(StreamEvent))}
    assert seen == {"e1": clock(), "e2": clock(), "e3": clock()}


def test_a_failing_round_backs_off_and_reading_resumes(db: Database, clock: FixedClock,
                                                        aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    start_stream(db, clock)
    ticks = Ticks()
    runner, loop = replica(services_for(db, clock, aws), "a", ticks)
    assert runner.heartbeat()
    real_shards = loop.consumer.kinesis.shards

    def down() -> list[Any]:
        raise AwsError("ListShards", "InternalFailure", "Kinesis is down")

    loop.consumer.kinesis.shards = down  # type: ignore[method-assign]
    assert [loop.step() for _ in range(3)] == [1.0, 2.0, 4.0]
    assert not loop.reading()
    loop.consumer.kinesis.shards = real_shards  # type: ignore[method-assign]
    _seed_calls(aws, aip, 1)
    assert loop.step() == pytest.approx(IDLE) and totals(db, "alice").requests == 2 and loop.reading()


def test_limits_covering_follow_subjects_and_their_teams(db: Database, clock: FixedClock) -> None:
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        directory.change_members(s, clock, ADMIN, "team-ml", "add", [SubjectRef(name="carol")])
        carol = directory.ensure_meter(s, clock, "metadata", "userId=u-carol",
                                       directory.get(s, SubjectRef(name="carol")).id).id
        dave = directory.ensure_meter(s, clock, "metadata", "userId=u-dave",
                                      directory.ensure_user(s, clock, ADMIN, SubjectRef(name="dave")).id).id
        nobody = directory.ensure_meter(s, clock, "profile", "p-unknown", None).id
    with db.session_scope() as s:
        assert stream_usage.limits_covering(s, [carol, dave, nobody]) == set()
        team, _ = limits.set_limit(s, clock, ADMIN, SubjectRef(name="team-ml"), parse_amount("1M"),
                                   Window.DAY, Metric.TOKENS, (80,), "revoke", False)
        own, _ = limits.set_limit(s, clock, ADMIN, SubjectRef(name="dave"), parse_amount("1M"), Window.DAY,
                                  Metric.TOKENS, (80,), "revoke", False)
    with db.session_scope() as s:
        assert stream_usage.limits_covering(s, [carol]) == {team.id}
        assert stream_usage.limits_covering(s, [carol, dave, nobody]) == {team.id, own.id}


def test_enforce_for_some_limits_checks_only_those(db: Database, clock: FixedClock) -> None:
    from zoneinfo import ZoneInfo

    from bot.services import enforce as rules

    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        for name in ("dave", "erin"):
            directory.ensure_user(s, clock, ADMIN, SubjectRef(name=name))
        made = [limits.set_limit(s, clock, ADMIN, SubjectRef(name=n), parse_amount("1M"), Window.DAY,
                                 Metric.TOKENS, (80,), "revoke", False)[0] for n in ("dave", "erin")]
    utc = ZoneInfo("UTC")
    with db.session_scope() as s:
        assert rules.evaluate(s, clock, utc, 0).checked == 2
        some = rules.evaluate(s, clock, utc, 0, only={made[1].id})
        assert some.checked == 1 and some.breaches == [] and some.warnings == []


def test_serve_background_reads_the_stream_on_the_leader_and_stops(db: Database, clock: FixedClock,
                                                                   aws: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """handlers/server.py `Background`: with BOT_USAGE_STREAM set and the scheduler on, a reader
    thread runs on the leader; `shutdown()` stops it before the lease is released."""
    from handlers.server import Background

    aip = setup_directory(db, clock)
    start_stream(db, clock)
    services = services_for(db, clock, aws)
    _seed_calls(aws, aip, 2)
    first_round = threading.Event()
    real_round = StreamLoop.round

    def round_(self: StreamLoop) -> float:
        try:
            return real_round(self)
        finally:
            first_round.set()

    monkeypatch.setattr(StreamLoop, "round", round_)
    background = Background(services)
    background.runner = JobRunner(services, holder="replica-a", lease_ttl=TTL, jobs={})
    background.start()
    try:
        assert background.stream is not None and background.stream_thread is not None
        assert first_round.wait(timeout=30)
        assert totals(db, "alice").requests == 4
    finally:
        background.shutdown()
    assert not background.stream_thread.is_alive()
    assert not usage_stream.continuous_reading(services)

    no_scheduler = Background(services, scheduler=False)
    no_scheduler.start()
    assert no_scheduler.stream is None and no_scheduler.stream_thread is None  # never the leader
    no_scheduler.shutdown()
