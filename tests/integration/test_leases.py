"""Leases on SQLite and PostgreSQL: one holder at a time, renewal, hand-over on expiry,
release, an atomic acquire when two threads race for the same lease, and the fence that
lets a transaction commit only while its lease is still held."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bot.clock import FixedClock
from bot.db import Database
from bot.models import Lease
from bot.services import leases

T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
TTL = timedelta(seconds=90)


def acquire(db: Database, holder: str, now: datetime, name: str = "scheduler",
            ttl: timedelta = TTL) -> bool:
    with db.session_scope() as s:
        return leases.acquire(s, name, holder, now, ttl)


def holder_of(db: Database, now: datetime, name: str = "scheduler") -> str | None:
    with db.session_scope() as s:
        return leases.holder_of(s, name, now)


def expires_at(db: Database, name: str = "scheduler") -> datetime:
    with db.session_scope() as s:
        return s.execute(select(Lease.expires_at).where(Lease.name == name)).scalar_one()


def test_free_lease_goes_to_the_first_holder_and_not_to_the_second(db: Database) -> None:
    assert holder_of(db, T0) is None
    assert acquire(db, "a", T0)
    assert not acquire(db, "b", T0 + timedelta(seconds=1))
    assert holder_of(db, T0 + timedelta(seconds=1)) == "a"
    assert expires_at(db) == T0 + TTL  # the loser changed nothing


def test_the_holder_renews(db: Database) -> None:
    assert acquire(db, "a", T0)
    later = T0 + timedelta(seconds=60)
    assert acquire(db, "a", later)
    assert expires_at(db) == later + TTL
    # Past the first expiry, the renewal still keeps "b" out.
    assert not acquire(db, "b", T0 + TTL + timedelta(seconds=1))
    assert holder_of(db, T0 + TTL + timedelta(seconds=1)) == "a"


def test_an_expired_lease_passes_to_the_next_holder(db: Database) -> None:
    assert acquire(db, "a", T0)
    assert not acquire(db, "b", T0 + TTL - timedelta(microseconds=1))
    assert holder_of(db, T0 + TTL) is None  # expired exactly at expires_at
    assert acquire(db, "b", T0 + TTL)
    assert holder_of(db, T0 + TTL) == "b"
    assert expires_at(db) == T0 + 2 * TTL
    assert not acquire(db, "a", T0 + TTL + timedelta(seconds=1))  # the old holder is out


def test_release_only_by_the_holder(db: Database) -> None:
    assert acquire(db, "a", T0)
    with db.session_scope() as s:
        assert not leases.release(s, "scheduler", "b")
    assert holder_of(db, T0) == "a"
    with db.session_scope() as s:
        assert leases.release(s, "scheduler", "a")
    assert holder_of(db, T0) is None
    assert acquire(db, "b", T0 + timedelta(seconds=1))  # free at once, no waiting for the ttl
    with db.session_scope() as s:
        assert not leases.release(s, "scheduler", "a")
    assert holder_of(db, T0 + timedelta(seconds=1)) == "b"


def test_leases_are_independent_by_name(db: Database) -> None:
    assert acquire(db, "a", T0, name="scheduler")
    assert acquire(db, "b", T0, name="other")
    assert holder_of(db, T0, "scheduler") == "a"
    assert holder_of(db, T0, "other") == "b"


def test_nothing_is_committed_by_the_service(db: Database) -> None:
    with pytest.raises(RuntimeError), db.session_scope() as s:
        assert leases.acquire(s, "scheduler", "a", T0, TTL)
        raise RuntimeError("roll back")
    assert holder_of(db, T0) is None


def test_bad_arguments_are_refused(db: Database) -> None:
    with db.session_scope() as s:
        with pytest.raises(ValueError):
            leases.acquire(s, "scheduler", "a", T0, timedelta(0))
        with pytest.raises(ValueError):
            leases.acquire(s, "scheduler", "x" * 129, T0, TTL)
        with pytest.raises(ValueError):
            leases.acquire(s, "", "a", T0, TTL)
        with pytest.raises(ValueError):  # naive times never reach the database
            leases.acquire(s, "scheduler", "a", T0.replace(tzinfo=None), TTL)


def test_racing_threads_get_exactly_one_winner(db: Database) -> None:
    """Both threads insert at the same moment; the loser must see the winner's row."""
    for round_no in range(20):
        name = f"race-{round_no}"
        barrier = threading.Barrier(2, timeout=10)
        results: dict[str, bool] = {}
        errors: list[BaseException] = []

        def contend(holder: str, name: str = name, barrier: threading.Barrier = barrier,
                    results: dict[str, bool] = results, errors: list[BaseException] = errors) -> None:
            try:
                with db.session_scope() as s:
                    barrier.wait()
                    results[holder] = leases.acquire(s, name, holder, T0, TTL)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=contend, args=(h,)) for h in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert sorted(results.values()) == [False, True], (round_no, results)
        winner = next(h for h, won in results.items() if won)
        assert holder_of(db, T0, name) == winner


# ---- fencing: Database.session_scope() commits only while the fence's lease is held ----------


def _fenced_write(db: Database, fence: leases.Fence, name: str = "probe") -> None:
    """A write (another lease row stands in for any row) in a transaction fenced by `fence`."""
    with leases.fenced(fence), db.session_scope() as s:
        assert leases.acquire(s, name, "writer", T0, TTL)


def test_a_fenced_commit_goes_through_while_the_lease_is_held(db: Database) -> None:
    assert acquire(db, "a", T0)
    _fenced_write(db, leases.Fence("scheduler", "a", FixedClock(T0 + TTL - timedelta(microseconds=1))))
    assert holder_of(db, T0, "probe") == "writer"
    assert leases.current_fence() is None


@pytest.mark.parametrize("case", ["taken over", "expired", "released", "never held"])
def test_a_fenced_commit_is_rolled_back_once_the_lease_is_lost(db: Database, case: str) -> None:
    at = T0 + timedelta(seconds=10)
    if case != "never held":
        assert acquire(db, "a", T0)
    if case == "taken over":
        assert acquire(db, "b", T0 + TTL)
    elif case == "expired":
        at = T0 + TTL  # expires_at <= now, nobody else has it yet
    elif case == "released":
        with db.session_scope() as s:
            assert leases.release(s, "scheduler", "a")
    with pytest.raises(leases.LeaseLost, match="the scheduler lease is no longer held by a"):
        _fenced_write(db, leases.Fence("scheduler", "a", FixedClock(at)))
    assert holder_of(db, T0, "probe") is None  # nothing of the transaction was committed
    assert leases.current_fence() is None
    with db.session_scope() as s:  # outside the fence, commits are as before
        assert leases.acquire(s, "probe", "writer", T0, TTL)
    assert holder_of(db, T0, "probe") == "writer"


def test_the_fence_is_per_thread(db: Database) -> None:
    """Another thread (the heartbeat, a Slack request) is not fenced by a job's lease."""
    assert acquire(db, "b", T0)
    fence = leases.Fence("scheduler", "a", FixedClock(T0))
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with db.session_scope() as s:
                leases.acquire(s, "probe", "writer", T0, TTL)
        except BaseException as exc:
            errors.append(exc)

    with leases.fenced(fence):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=30)
    assert not errors and holder_of(db, T0, "probe") == "writer"


def test_a_takeover_waits_for_a_fenced_commit_in_flight(db: Database) -> None:
    """PostgreSQL: the fence reads the lease row FOR SHARE, so a takeover cannot slip in
    between the check and the commit — it waits, and the old holder's last commit lands
    before the new holder's lease. (SQLite: the writer lock serialises both already.)"""
    if db.dialect != "postgresql":
        pytest.skip("SQLite's BEGIN IMMEDIATE serialises the check, the commit and the takeover")
    assert acquire(db, "a", T0)
    fence = leases.Fence("scheduler", "a", FixedClock(T0 + TTL - timedelta(seconds=1)))
    checked, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_commit(_session: Session) -> None:  # runs inside commit(), after the fence check
        if leases.current_fence() is fence:
            checked.set()
            assert go.wait(timeout=30)

    def job() -> None:
        try:
            _fenced_write(db, fence)
        except BaseException as exc:
            errors.append(exc)

    event.listen(db.factory, "before_commit", hold_commit)
    thread = threading.Thread(target=job)
    try:
        thread.start()
        assert checked.wait(timeout=30)
        # B's clock says A's lease has expired; B still cannot take it while A commits.
        with pytest.raises(OperationalError, match="lock"), db.session_scope() as s:
            s.execute(text("SET LOCAL lock_timeout = '200ms'"))
            leases.acquire(s, "scheduler", "b", T0 + TTL, TTL)
        go.set()
        thread.join(timeout=30)
    finally:
        go.set()
        event.remove(db.factory, "before_commit", hold_commit)
    assert not errors, errors
    assert holder_of(db, T0, "probe") == "writer"  # A's commit landed…
    assert acquire(db, "b", T0 + TTL)  # …and then B took over
