"""Leases on SQLite and PostgreSQL: one holder at a time, renewal, hand-over on expiry,
release, and an atomic acquire when two threads race for the same lease."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

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
