"""The job runner on SQLite and PostgreSQL: only the lease holder runs jobs, a standby takes
over when the leader stops heart-beating, failures are audited and never stop the schedule,
the digest catches up at start-up, and the real BackgroundScheduler starts and stops.

Deterministic tests step the schedule with `tick()` and a FixedClock; no sleeping."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.clock import Clock, FixedClock, utcnow
from bot.config import load_settings
from bot.db import Database
from bot.models import AuditEvent
from bot.runtime import Services
from bot.services import audit, leases
from jobs import registry
from jobs.scheduler import LEASE_NAME, JobRunner

T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # a Wednesday; 09:00 UTC digest already passed
TTL = timedelta(seconds=90)
STEP = timedelta(seconds=10)
NAMES = ("usage_sync", "daily_digest", "reconcile", "expire_requests")


def make_services(db: Database, clock: Clock, **env: str) -> Services:
    settings = load_settings(None, **{"DATABASE_URL": db.url, "BOT_TIMEZONE": "UTC",
                                      "BOT_DIGEST_TIME": "09:00", "BOT_SYNC_SECONDS": "60", **env})
    return Services(settings, db, clock)


@dataclass
class Calls:
    """Fake jobs that record (runner, job, clock time) and may fail."""

    clock: Clock
    log: list[tuple[str, str, datetime]] = field(default_factory=list)

    def jobs(self, who: str, fail: Iterable[str] = (), names: Iterable[str] = NAMES,
             on_run: Callable[[str], None] | None = None) -> dict[str, Callable[[Services], Any]]:
        failing = set(fail)

        def make(name: str) -> Callable[[Services], Any]:
            def run(services: Services) -> None:
                self.log.append((who, name, self.clock()))
                if on_run is not None:
                    on_run(name)
                if name in failing:
                    raise RuntimeError(f"{name} exploded " + "x" * 1000)
            return run

        return {n: make(n) for n in names}

    def by(self, who: str, name: str | None = None) -> list[datetime]:
        return [at for w, n, at in self.log if w == who and (name is None or n == name)]


def runner(db: Database, clock: FixedClock, calls: Calls, who: str, fail: Iterable[str] = (),
           ttl: timedelta = TTL, **env: str) -> JobRunner:
    return JobRunner(make_services(db, clock, **env), holder=f"replica-{who}", lease_ttl=ttl,
                     jobs=calls.jobs(who, fail))


def step(clock: FixedClock, runners: Iterable[JobRunner], delta: timedelta = STEP) -> None:
    clock.advance(seconds=delta.total_seconds())
    for r in runners:
        r.tick()


def audit_rows(db: Database) -> list[AuditEvent]:
    with db.session_scope() as s:
        return list(s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())


# ---- leadership ------------------------------------------------------------------------


def test_only_the_lease_holder_runs_jobs(db: Database) -> None:
    clock = FixedClock(T0)
    calls = Calls(clock)
    a, b = runner(db, clock, calls, "a"), runner(db, clock, calls, "b")
    assert a.tick() == ["usage_sync", "daily_digest", "expire_requests", "reconcile"]
    assert b.tick() == []
    assert a.is_leader() and not b.is_leader()
    for _ in range(2 * 20):  # 20 minutes of ticks, every 30 s
        step(clock, [a, b], timedelta(seconds=30))
    assert calls.by("b") == []
    syncs = calls.by("a", "usage_sync")
    assert len(syncs) == 21  # at start and every 60 s
    assert all(y - x == timedelta(seconds=60) for x, y in itertools.pairwise(syncs))
    assert len(calls.by("a", "expire_requests")) == 5  # at start and every 5 minutes
    assert len(calls.by("a", "reconcile")) == 1  # hourly
    assert len(calls.by("a", "daily_digest")) == 1  # once per day
    with db.session_scope() as s:
        assert leases.holder_of(s, LEASE_NAME, clock()) == "replica-a"


def test_standby_takes_over_within_two_lease_periods(db: Database) -> None:
    clock = FixedClock(T0)
    calls = Calls(clock)
    a, b = runner(db, clock, calls, "a"), runner(db, clock, calls, "b")
    for _ in range(30):
        step(clock, [a, b])
    assert calls.by("b") == [] and calls.by("a")
    last_heartbeat = a.last_heartbeat
    assert last_heartbeat == clock()

    # A dies: nobody calls A.tick() any more. B keeps heart-beating.
    ran: list[str] = []
    for _ in range(100):
        clock.advance(seconds=STEP.total_seconds())
        ran = b.tick()
        if ran:
            break
    first_b = calls.by("b")[0]
    assert first_b - last_heartbeat <= 2 * TTL
    assert first_b >= last_heartbeat + TTL  # never while A's lease was live
    assert not a.is_leader() and b.is_leader()
    assert max(calls.by("a")) < first_b  # never two leaders at once
    # A new leader cannot know when the old one last ran anything: all of it runs now.
    assert ran == ["usage_sync", "daily_digest", "expire_requests", "reconcile"]

    # A comes back (it was only paused): it is a standby now and runs nothing.
    clock.advance(seconds=1)
    assert a.tick() == []
    assert not a.is_leader()
    with db.session_scope() as s:
        assert leases.holder_of(s, LEASE_NAME, clock()) == "replica-b"


def test_shutdown_releases_the_lease_for_an_immediate_takeover(db: Database) -> None:
    clock = FixedClock(T0)
    calls = Calls(clock)
    a, b = runner(db, clock, calls, "a"), runner(db, clock, calls, "b")
    a.tick()
    assert b.tick() == []
    a.shutdown()
    assert not a.is_leader()
    clock.advance(seconds=1)
    assert "usage_sync" in b.tick()
    assert a.tick() == []  # a stopped runner does not take the lease again


# ---- failures --------------------------------------------------------------------------


def test_a_failing_job_is_audited_and_the_schedule_goes_on(db: Database) -> None:
    clock = FixedClock(T0)
    calls = Calls(clock)
    a = runner(db, clock, calls, "a", fail=["usage_sync"])
    assert a.tick() == ["usage_sync", "daily_digest", "expire_requests", "reconcile"]
    rows = audit_rows(db)
    assert [(r.actor, r.action, r.target, r.outcome) for r in rows] == [
        ("system:scheduler", "job.usage_sync", "usage_sync", "error")]
    error = json.loads(rows[0].details)["error"]
    assert error.startswith("RuntimeError: usage_sync exploded ")
    assert len(error) == len("RuntimeError: ") + 300
    assert rows[0].at == T0

    clock.advance(seconds=60)
    assert a.tick() == ["usage_sync"]  # it is tried again when due
    for _ in range(3):
        clock.advance(seconds=60)
        assert a.tick() == ["usage_sync"]
    clock.advance(seconds=60)
    assert a.tick() == ["usage_sync", "expire_requests"]  # and the others still run
    assert [r.action for r in audit_rows(db)] == ["job.usage_sync"] * 6
    with db.session_scope() as s:
        assert audit.verify(s).ok


def test_jobs_are_looked_up_when_they_run(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default table is jobs.registry.JOBS at call time: later registrations are picked
    up, absent ones skipped."""
    clock = FixedClock(T0)
    calls = Calls(clock)
    fakes = calls.jobs("a")
    monkeypatch.setitem(registry.JOBS, "usage_sync", fakes["usage_sync"])
    for name in ("daily_digest", "reconcile", "expire_requests", "flush_outbox"):
        monkeypatch.delitem(registry.JOBS, name, raising=False)
    a = JobRunner(make_services(db, clock), holder="replica-a", lease_ttl=TTL)
    assert a.tick() == ["usage_sync"]
    monkeypatch.setitem(registry.JOBS, "reconcile", fakes["reconcile"])  # registered later
    clock.advance(hours=1)
    assert a.tick() == ["usage_sync", "reconcile"]


def test_default_holder_names_host_process_and_instance(db: Database) -> None:
    services = make_services(db, FixedClock(T0))
    one, two = JobRunner(services), JobRunner(services)
    assert re.fullmatch(r".+:\d+:[0-9a-f]{6}", one.holder)
    assert one.holder != two.holder


# ---- the digest ------------------------------------------------------------------------


def test_digest_runs_at_start_up_when_its_time_has_passed(db: Database) -> None:
    clock = FixedClock(T0)  # 10:30, digest at 09:00
    calls = Calls(clock)
    # A long lease, so the hours skipped between ticks do not cost the leadership (a leader
    # that regains the lease catches the digest up, which is a different test).
    a = runner(db, clock, calls, "a", ttl=timedelta(days=2))
    assert "daily_digest" in a.tick()
    clock.advance(hours=12)
    assert "daily_digest" not in a.tick()  # 22:30 the same day
    clock.advance(hours=10)
    assert "daily_digest" not in a.tick()  # 08:30 the next day
    clock.advance(minutes=30)
    assert "daily_digest" in a.tick()  # 09:00
    assert calls.by("a", "daily_digest") == [T0, datetime(2026, 11, 26, 9, 0, tzinfo=UTC)]


def test_digest_waits_for_its_time_in_the_configured_zone(db: Database) -> None:
    clock = FixedClock(datetime(2026, 11, 25, 13, 0, tzinfo=UTC))  # 08:00 in New York
    calls = Calls(clock)
    a = runner(db, clock, calls, "a", BOT_TIMEZONE="America/New_York")
    assert "daily_digest" not in a.tick()
    for _ in range(60):  # tick every minute for an hour
        step(clock, [a], timedelta(minutes=1))
    assert calls.by("a", "daily_digest") == [datetime(2026, 11, 25, 14, 0, tzinfo=UTC)]  # 09:00 EST


def test_new_leader_catches_up_a_digest_the_dead_leader_missed(db: Database) -> None:
    clock = FixedClock(datetime(2026, 11, 25, 8, 58, tzinfo=UTC))
    calls = Calls(clock)
    a, b = runner(db, clock, calls, "a"), runner(db, clock, calls, "b")
    a.tick()
    b.tick()
    assert calls.by("a", "daily_digest") == []  # A dies at 08:58, before the digest
    for _ in range(30):
        step(clock, [b])
    assert len(calls.by("b", "daily_digest")) == 1
    assert calls.by("b", "daily_digest")[0] <= datetime(2026, 11, 25, 9, 0, tzinfo=UTC) + 2 * TTL


# ---- the real BackgroundScheduler ------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float = 1.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_background_scheduler_runs_jobs_and_shuts_down(db: Database) -> None:
    seen: set[str] = set()
    done = threading.Event()

    def on_run(name: str) -> None:
        seen.add(name)
        if {"usage_sync", "expire_requests", "daily_digest"} <= seen:
            done.set()

    calls = Calls(utcnow)
    services = make_services(db, utcnow, BOT_DIGEST_TIME="00:00")  # the digest time has passed
    # A lease long enough that a loaded CI machine never loses it between heartbeats.
    a = JobRunner(services, holder="replica-a", lease_ttl=timedelta(seconds=3),
                  jobs=calls.jobs("a", fail=["usage_sync"], on_run=on_run))
    a.start()
    try:
        assert a.running and a.is_leader()
        with pytest.raises(RuntimeError):
            a.tick()
        assert done.wait(timeout=10), seen
        first = a.last_heartbeat
        assert first is not None
        assert wait_until(lambda: a.last_heartbeat is not None and a.last_heartbeat > first, timeout=10)
        # The failure was audited and did not stop the scheduler.
        assert wait_until(lambda: any(r.action == "job.usage_sync" for r in audit_rows(db)), timeout=10)
        assert a.running and a.is_leader()
    finally:
        a.shutdown()
    assert not a.running and not a.is_leader()
    with db.session_scope() as s:
        assert leases.holder_of(s, LEASE_NAME, utcnow()) is None
