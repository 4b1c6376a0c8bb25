"""The hash chain: appends, verification, and tampering caught (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy import delete, select, text, update

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent
from bot.services import audit


def _fill(db: Database, clock: FixedClock, n: int = 5) -> None:
    for i in range(n):
        with db.session_scope() as s:
            audit.record(s, clock, "slack:U1", "test.action", f"user:u{i}", {"i": i, "ü": "✓"})
        clock.advance(seconds=1)


def test_chain_verifies(db: Database, clock: FixedClock) -> None:
    _fill(db, clock)
    with db.session_scope() as s:
        result = audit.verify(s)
    assert result.ok and result.rows == 5


def test_edited_row_is_named(db: Database, clock: FixedClock) -> None:
    _fill(db, clock)
    with db.session_scope() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 3).values(outcome="denied"))
    with db.session_scope() as s:
        result = audit.verify(s)
    assert not result.ok and result.broken_id == 3


def test_edited_details_is_caught(db: Database, clock: FixedClock) -> None:
    _fill(db, clock)
    with db.session_scope() as s:
        s.execute(text("UPDATE audit_events SET details = :d WHERE id = 2"), {"d": '{"i":99}'})
    with db.session_scope() as s:
        assert audit.verify(s).broken_id == 2


def test_deleted_row_is_named(db: Database, clock: FixedClock) -> None:
    _fill(db, clock)
    with db.session_scope() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == 2))
    with db.session_scope() as s:
        result = audit.verify(s)
    assert not result.ok and result.broken_id == 3 and "missing" in result.reason


def test_rehashed_row_still_breaks_the_next(db: Database, clock: FixedClock) -> None:
    """Recomputing the edited row's own hash moves the break to its successor."""
    _fill(db, clock)
    with db.session_scope() as s:
        ev = s.get(AuditEvent, 2)
        assert ev is not None
        ev.actor = "slack:UEVIL"
        ev.hash = audit.chain_hash(ev.prev_hash, audit.canonical(
            ev.id, ev.at, ev.actor, ev.action, ev.target, ev.details, ev.outcome))
    with db.session_scope() as s:
        assert audit.verify(s).broken_id == 3


def test_rollback_leaves_no_row(db: Database, clock: FixedClock) -> None:
    try:
        with db.session_scope() as s:
            audit.record(s, clock, "slack:U1", "x", "y")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with db.session_scope() as s:
        assert s.scalar(select(AuditEvent.id)) is None


def test_concurrent_appends_keep_one_chain(db: Database, clock: FixedClock) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(10):
                with db.session_scope() as s:
                    audit.record(s, clock, f"system:w{k}", "race", f"t{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with db.session_scope() as s:
        result = audit.verify(s)
    assert result.ok and result.rows == 40


def test_rows_appended_together_keep_their_text_and_instants(db: Database) -> None:
    """Several rows in one append (on PostgreSQL one JSON statement): `at` with and without
    microseconds, quotes, backslashes, newlines and non-ASCII come back exactly as hashed."""
    ats = [datetime(2026, 11, 25, 10, 30, 0, 123456, tzinfo=UTC), datetime(2026, 11, 25, 10, 31, tzinfo=UTC)]
    with db.session_scope() as s:
        for i, at in enumerate(ats):
            audit.record(s, lambda at=at: at, 'slack:U"1\\', "test.action", f"line\n{i} ü ✓",
                         {"quote": '"', "tab": "\t", "emoji": "🧾"})
    with db.session_scope() as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [r.at for r in rows] == ats
        assert [r.target for r in rows] == ["line\n0 ü ✓", "line\n1 ü ✓"]
        assert rows[0].actor == 'slack:U"1\\' and rows[1].prev_hash == rows[0].hash
        assert audit.verify(s).ok
