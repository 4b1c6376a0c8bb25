"""The job runner on SQLite and PostgreSQL, through APScheduler itself: only the lease holder
runs jobs, a standby takes over within two lease periods, failures are audited and never
stop the schedule, the digest runs on its cron (misfire grace) and is caught up by a new
leader, each job is fenced by the lease, and the real BackgroundScheduler starts and stops.

Time is time-machine's (frozen, moved by the test); the scheduler is APScheduler's job
processing stepped by the test (tests/stepped_scheduler.py) — no sleeping.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import time_machine
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import select

from bot.clock import utcnow
from bot.config import load_settings
from bot.db import Database
from bot.models import AuditEvent
from bot.runtime import Services
from bot.services import audit, leases
from jobs import registry
from jobs.scheduler import HEARTBEAT, LEASE_NAME, JobRunner
from tests.stepped_scheduler import SteppedScheduler, stepped

T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # a Wednesday; 09:00 UTC digest already passed
TTL = timedelta(seconds=90)
STEP = timedelta(seconds=10)
NAMES = ("usage_sync", "daily_digest", "reconcile", "expire_requests")
ALL_DUE = sorted(NAMES)


@pytest.fixture
def now() -> Iterator[time_machine.Traveller]:
    """The wall clock, frozen at T0: APScheduler and `services.clock` (utcnow) both read it."""
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def make_services(db: Database, **env: str) -> Services:
    settings = load_settings(None, **{"DATABASE_URL": db.url, "BOT_TIMEZONE": "UTC",
                                      "BOT_DIGEST_TIME": "09:00", "BOT_SYNC_SECONDS": "60", **env})
    return Services(settings, db, utcnow)


@dataclass
class Calls:
    """Fake jobs that record (runner, job, clock time) and may fail."""

    log: list[tuple[str, str, datetime]] = field(default_factory=list)

    def jobs(self, who: str, fail: Iterable[str] = (), names: Iterable[str] = NAMES,
             on_run: Callable[[str], None] | None = None) -> dict[str, Callable[[Services], Any]]:
        failing = set(fail)

        def make(name: str) -> Callable[[Services], Any]:
            def run(services: Services) -> None:
                self.log.append((who, name, services.clock()))
                if on_run is not None:
                    on_run(name)
                if name in failing:
                    raise RuntimeError(f"{name} exploded " + "x" * 1000)
            return run

        return {n: make(n) for n in names}

    def by(self, who: str, name: str | None = None) -> list[datetime]:
        return [at for w, n, at in self.log if w == who and (name is None or n == name)]

    def ran(self, run: Callable[[], None]) -> list[str]:
        """The jobs (sorted) that `run()` ran."""
        mark = len(self.log)
        run()
        return sorted(n for _w, n, _at in self.log[mark:])


def started(db: Database, calls: Calls, who: str, fail: Iterable[str] = (), ttl: timedelta = TTL,
            **env: str) -> JobRunner:
    runner = JobRunner(make_services(db, **env), holder=f"replica-{who}", lease_ttl=ttl,
                       jobs=calls.jobs(who, fail), make_scheduler=SteppedScheduler)
    runner.start()
    return runner


def pend(*runners: JobRunner) -> None:
    for r in runners:
        stepped(r).run_pending()


def step(now: time_machine.Traveller, runners: Iterable[JobRunner], delta: timedelta = STEP) -> None:
    now.shift(delta)
    pend(*runners)


def audit_rows(db: Database) -> list[AuditEvent]:
    with db.session_scope() as s:
        return list(s.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars())


def elsewhere(fn: Callable[[], Any]) -> Any:
    """Run `fn` on another thread (another replica: no fence of ours, its own connection)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join(timeout=30)
    assert result, "the other replica did not finish"
    return result[0]


# ---- leadership ------------------------------------------------------------------------


def test_only_the_lease_holder_runs_jobs(db: Database, now: time_machine.Traveller) -> None:
    calls = Calls()
    a = started(db, calls, "a")
    b = started(db, calls, "b")
    assert calls.ran(partial(pend, a)) == ALL_DUE  # a new leader runs everything at once
    assert calls.ran(partial(pend, b)) == []
    assert a.is_leader() and not b.is_leader()
    for _ in range(2 * 20):  # 20 minutes, stepped every 30 s
        step(now, [a, b], timedelta(seconds=30))
    assert calls.by("b") == []
    syncs = calls.by("a", "usage_sync")
    assert len(syncs) == 21  # at start and every 60 s
    assert all(y - x == timedelta(seconds=60) for x, y in itertools.pairwise(syncs))
    assert len(calls.by("a", "expire_requests")) == 5  # at start and every 5 minutes
    assert len(calls.by("a", "reconcile")) == 1  # hourly
    assert len(calls.by("a", "daily_digest")) == 1  # once per day
    assert a.last_heartbeat == utcnow()  # renewed every 30 s
    with db.session_scope() as s:
        assert leases.holder_of(s, LEASE_NAME, utcnow()) == "replica-a"


def test_standby_takes_over_within_two_lease_periods(db: Database, now: time_machine.Traveller) -> None:
    calls = Calls()
    a, b = started(db, calls, "a"), started(db, calls, "b")
    pend(a, b)
    for _ in range(30):
        step(now, [a, b])
    assert calls.by("b") == [] and calls.by("a")
    last_heartbeat = a.last_heartbeat
    assert last_heartbeat == utcnow()

    # A dies: nobody steps A's scheduler any more. B's keeps running.
    ran: list[str] = []
    for _ in range(100):
        ran = calls.ran(partial(step, now, [b]))
        if ran:
            break
    first_b = calls.by("b")[0]
    assert first_b - last_heartbeat <= 2 * TTL
    assert first_b >= last_heartbeat + TTL  # never while A's lease was live
    assert not a.is_leader() and b.is_leader()
    assert max(calls.by("a")) < first_b  # never two leaders at once
    # A new leader cannot know when the old one last ran anything: all of it runs now.
    assert ran == ALL_DUE

    # A comes back (it was only paused): its overdue jobs fire, but it is a standby now.
    now.shift(timedelta(seconds=1))
    assert calls.ran(partial(pend, a)) == []
    assert not a.is_leader()
    with db.session_scope() as s:
        assert leases.holder_of(s, LEASE_NAME, utcnow()) == "replica-b"


def test_shutdown_releases_the_lease_for_an_immediate_takeover(db: Database,
                                                               now: time_machine.Traveller) -> None:
    calls = Calls()
    a, b = started(db, calls, "a"), started(db, calls, "b")
    pend(a, b)
    a.shutdown()
    assert not a.is_leader() and not a.running and a.scheduler is None
    # B's next heartbeat (not the ttl) takes over, and B runs everything at once.
    assert calls.ran(partial(step, now, [b], a.heartbeat_every)) == ALL_DUE
    assert b.is_leader()
    assert not a.heartbeat()  # a stopped runner does not take the lease again


# ---- failures --------------------------------------------------------------------------


def test_a_failing_job_is_audited_and_the_schedule_goes_on(db: Database, now: time_machine.Traveller) -> None:
    calls = Calls()
    a = started(db, calls, "a", fail=["usage_sync"])
    assert calls.ran(partial(pend, a)) == ALL_DUE
    rows = audit_rows(db)
    assert [(r.actor, r.action, r.target, r.outcome) for r in rows] == [
        ("system:scheduler", "job.usage_sync", "usage_sync", "error")]
    error = json.loads(rows[0].details)["error"]
    assert error.startswith("RuntimeError: usage_sync exploded ")
    assert len(error) == len("RuntimeError: ") + 300
    assert rows[0].at == T0

    minute = timedelta(seconds=60)
    for _ in range(4):  # it is tried again when due
        assert calls.ran(partial(step, now, [a], minute)) == ["usage_sync"]
    assert calls.ran(partial(step, now, [a], minute)) == ["expire_requests", "usage_sync"]
    assert a.running and a.is_leader()
    assert [r.action for r in audit_rows(db)] == ["job.usage_sync"] * 6
    with db.session_scope() as s:
        assert audit.verify(s).ok


def test_jobs_are_looked_up_when_they_run(db: Database, now: time_machine.Traveller,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The default table is jobs.registry.JOBS at call time: later registrations are picked
    up, absent ones skipped."""
    calls = Calls()
    fakes = calls.jobs("a")
    monkeypatch.setitem(registry.JOBS, "usage_sync", fakes["usage_sync"])
    for name in ("daily_digest", "reconcile", "expire_requests", "flush_outbox"):
        monkeypatch.delitem(registry.JOBS, name, raising=False)
    a = JobRunner(make_services(db), holder="replica-a", lease_ttl=timedelta(days=1),
                  make_scheduler=SteppedScheduler)
    a.start()
    assert calls.ran(partial(pend, a)) == ["usage_sync"]
    monkeypatch.setitem(registry.JOBS, "reconcile", fakes["reconcile"])  # registered later
    assert calls.ran(partial(step, now, [a], timedelta(hours=1))) == ["reconcile", "usage_sync"]


def test_default_holder_names_host_process_and_instance(db: Database) -> None:
    services = make_services(db)
    one, two = JobRunner(services), JobRunner(services)
    assert re.fullmatch(r".+:\d+:[0-9a-f]{6}", one.holder)
    assert one.holder != two.holder
    assert one.lease_ttl == timedelta(seconds=90)
    with pytest.raises(ValueError):
        JobRunner(services, lease_ttl=timedelta(0))


# ---- the digest ------------------------------------------------------------------------


def test_digest_runs_at_start_up_when_its_time_has_passed(db: Database, now: time_machine.Traveller) -> None:
    calls = Calls()  # 10:30, digest at 09:00
    # A long lease, so the hours skipped in one step do not cost the leadership (a leader
    # that regains the lease catches the digest up, which is a different test).
    a = started(db, calls, "a", ttl=timedelta(days=2))
    assert "daily_digest" in calls.ran(partial(pend, a))
    assert "daily_digest" not in calls.ran(partial(step, now, [a], timedelta(hours=12)))  # 22:30
    assert "daily_digest" not in calls.ran(partial(step, now, [a], timedelta(hours=10)))  # 08:30 next day
    assert "daily_digest" in calls.ran(partial(step, now, [a], timedelta(minutes=30)))  # 09:00
    assert calls.by("a", "daily_digest") == [T0, datetime(2026, 11, 26, 9, 0, tzinfo=UTC)]


def test_digest_waits_for_its_time_in_the_configured_zone(db: Database, now: time_machine.Traveller) -> None:
    now.move_to(datetime(2026, 11, 25, 13, 0, tzinfo=UTC))  # 08:00 in New York
    calls = Calls()
    a = started(db, calls, "a", BOT_TIMEZONE="America/New_York")
    assert "daily_digest" not in calls.ran(partial(pend, a))
    for _ in range(60):  # every minute for an hour
        step(now, [a], timedelta(minutes=1))
    assert calls.by("a", "daily_digest") == [datetime(2026, 11, 25, 14, 0, tzinfo=UTC)]  # 09:00 EST


def test_a_late_digest_runs_within_its_misfire_grace_only(db: Database, now: time_machine.Traveller) -> None:
    """A leader that could not fire at 09:00 (the process stalled) still posts at 11:00,
    once; past the six hours of grace that day's cron run is dropped (a new leader's
    catch-up is the other way a late digest goes out)."""
    now.move_to(datetime(2026, 11, 25, 8, 0, tzinfo=UTC))
    calls = Calls()
    a = started(db, calls, "a", ttl=timedelta(days=3))
    pend(a)
    step(now, [a], timedelta(hours=3))  # 11:00, two hours late
    step(now, [a], timedelta(hours=1))
    assert calls.by("a", "daily_digest") == [datetime(2026, 11, 25, 11, 0, tzinfo=UTC)]
    step(now, [a], timedelta(hours=28))  # 16:00 the next day: seven hours late
    step(now, [a], timedelta(hours=17))  # 09:00 the day after
    assert calls.by("a", "daily_digest") == [datetime(2026, 11, 25, 11, 0, tzinfo=UTC),
                                             datetime(2026, 11, 27, 9, 0, tzinfo=UTC)]
    assert a.is_leader()


def test_new_leader_catches_up_a_digest_the_dead_leader_missed(db: Database,
                                                               now: time_machine.Traveller) -> None:
    now.move_to(datetime(2026, 11, 25, 8, 58, tzinfo=UTC))
    calls = Calls()
    a, b = started(db, calls, "a"), started(db, calls, "b")
    pend(a, b)
    for _ in range(11):  # to 08:59:50: A renewed at 08:59:30, so its lease runs to 09:01:00
        step(now, [a, b])
    # A dies before 09:00. B's cron fires at 09:00 while B is a standby, so does nothing;
    # B takes the lease at 09:01:00 and catches the digest up at once.
    for _ in range(30):
        step(now, [b])
    assert calls.by("a", "daily_digest") == []
    assert calls.by("b", "daily_digest") == [datetime(2026, 11, 25, 9, 1, tzinfo=UTC)]
    assert calls.by("b", "daily_digest")[0] <= datetime(2026, 11, 25, 9, 0, tzinfo=UTC) + 2 * TTL


# ---- fencing ---------------------------------------------------------------------------


def _write(services: Services, target: str) -> None:
    with services.db.session_scope() as s:
        audit.record(s, services.clock, "test", "test.write", target, {})


def _writes(db: Database) -> list[str]:
    return [r.target for r in audit_rows(db) if r.action == "test.write"]


def test_a_job_that_lost_the_lease_to_another_replica_commits_nothing_more(
        db: Database, now: time_machine.Traveller) -> None:
    b = JobRunner(make_services(db), holder="replica-b", lease_ttl=TTL)

    def long_sync(services: Services) -> None:
        _write(services, "before")  # committed: the lease is ours
        now.shift(TTL + timedelta(seconds=1))  # the job runs on past its lease…
        assert elsewhere(b.heartbeat)  # …and another replica takes over
        _write(services, "after")

    a = JobRunner(make_services(db), holder="replica-a", lease_ttl=TTL,
                  jobs={"usage_sync": long_sync}, make_scheduler=SteppedScheduler)
    a.start()
    pend(a)
    assert _writes(db) == ["before"]
    failure = [r for r in audit_rows(db) if r.action == "job.usage_sync"]
    assert [(r.actor, r.outcome) for r in failure] == [("system:scheduler", "error")]
    error = json.loads(failure[0].details)["error"]
    assert error.startswith("LeaseLost: the scheduler lease is no longer held by replica-a")
    assert not a.is_leader() and b.is_leader()
    assert leases.current_fence() is None  # the fence ends with the job


def test_a_job_that_outlives_its_lease_commits_nothing(db: Database, now: time_machine.Traveller) -> None:
    """Nobody took over yet, but the lease expired during the transaction (the process
    stalled): the commit is refused and the whole transaction rolls back."""
    runs: list[datetime] = []

    def sync(services: Services) -> None:
        runs.append(utcnow())
        with services.db.session_scope() as s:
            audit.record(s, services.clock, "test", "test.write", f"run-{len(runs)}", {})
            if len(runs) == 1:
                now.shift(TTL)  # stalled until expires_at <= now: expired

    a = JobRunner(make_services(db), holder="replica-a", lease_ttl=TTL,
                  jobs={"usage_sync": sync}, make_scheduler=SteppedScheduler)
    a.start()
    pend(a)
    # The scheduler went on: the overdue heartbeat took the lease again, and as a new
    # leader it ran the job again at once, which committed.
    assert runs == [T0, T0 + TTL]
    assert _writes(db) == ["run-2"]
    assert [r.action for r in audit_rows(db)] == ["job.usage_sync", "test.write"]
    assert a.is_leader()


def test_the_heartbeat_keeps_the_lease_through_a_long_job(db: Database, now: time_machine.Traveller) -> None:
    """Jobs run on a thread pool beside the heartbeat: a job running for more than the ttl
    on a live leader keeps the lease and commits."""
    release, running = threading.Event(), threading.Event()
    executed: queue.Queue[str] = queue.Queue()

    def long_sync(services: Services) -> None:
        running.set()
        assert release.wait(timeout=30)
        _write(services, "long")

    pool = partial(SteppedScheduler, executors={"default": ThreadPoolExecutor(4)})
    a = JobRunner(make_services(db), holder="replica-a", lease_ttl=TTL,
                  jobs={"usage_sync": long_sync}, make_scheduler=pool)
    a.start()
    scheduler = stepped(a)

    def on_executed(event: JobExecutionEvent) -> None:
        executed.put(event.job_id)

    scheduler.add_listener(on_executed, EVENT_JOB_EXECUTED)
    try:
        pend(a)
        assert running.wait(timeout=30)
        for _ in range(4):  # two minutes: past the 90 s ttl of the first heartbeat
            step(now, [a], a.heartbeat_every)
            assert _next(executed, HEARTBEAT)
        assert a.last_heartbeat == utcnow() and a.is_leader()
        release.set()
        assert _next(executed, "usage_sync")
        assert _writes(db) == ["long"]
        assert not [r for r in audit_rows(db) if r.action.startswith("job.")]
    finally:
        release.set()
        a.shutdown()


def _next(events: queue.Queue[str], job_id: str) -> bool:
    """Wait (bounded) until `job_id` has been executed; other jobs' events are skipped."""
    while True:
        if events.get(timeout=30) == job_id:
            return True


# ---- the real BackgroundScheduler ------------------------------------------------------


def test_background_scheduler_runs_jobs_and_shuts_down(db: Database) -> None:
    """Wall-clock time, real threads; waits are bounded waits on what the scheduler reports."""
    executed: dict[str, int] = {}
    changed = threading.Condition()

    def on_executed(event: JobExecutionEvent) -> None:
        with changed:
            executed[event.job_id] = executed.get(event.job_id, 0) + 1
            changed.notify_all()

    def count(job_id: str) -> int:
        with changed:
            return executed.get(job_id, 0)

    def wait_for(job_id: str, at_least: int) -> bool:
        with changed:
            return changed.wait_for(lambda: executed.get(job_id, 0) >= at_least, timeout=30)

    def background(**options: Any) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(**options)
        scheduler.add_listener(on_executed, EVENT_JOB_EXECUTED)
        return scheduler

    calls = Calls()
    services = make_services(db, BOT_DIGEST_TIME="00:00")  # the digest time has passed
    # A lease long enough that a loaded CI machine never loses it between heartbeats.
    a = JobRunner(services, holder="replica-a", lease_ttl=timedelta(seconds=3),
                  jobs=calls.jobs("a", fail=["usage_sync"]), make_scheduler=background)
    a.start()
    try:
        assert a.running and a.is_leader()
        with pytest.raises(RuntimeError):
            a.start()
        # A new leader runs its interval jobs and the digest catch-up at once.
        for job_id in ("usage_sync", "expire_requests", "reconcile", "daily_digest_catch_up"):
            assert wait_for(job_id, 1), executed
        assert sorted(n for _w, n, _at in calls.log) == ALL_DUE
        # The failure was audited (before its job counted as executed), the scheduler goes on.
        assert [(r.action, r.outcome) for r in audit_rows(db)] == [("job.usage_sync", "error")]
        beats = count(HEARTBEAT)
        first = a.last_heartbeat
        assert first is not None
        assert wait_for(HEARTBEAT, beats + 2)  # renewed by the scheduler's own heartbeat job
        assert a.last_heartbeat is not None and a.last_heartbeat > first
        assert a.running and a.is_leader()
    finally:
        a.shutdown()
    assert not a.running and not a.is_leader()
    with db.session_scope() as s:
        assert leases.holder_of(s, LEASE_NAME, utcnow()) is None
