"""SQLite transactions in one process (bot/db.py): readers neither take nor wait for the write
lock and cannot write; writers queue on the process's gate instead of in SQLite's busy handler,
and the gate is given back however a transaction ends. PostgreSQL has none of this (MVCC readers
never block), so these tests are SQLite's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bot import db as db_module
from bot.db import Database, reading
from bot.migrate import upgrade
from bot.models import Lease

WAIT = 5.0  # generous bound on a thread handing over; the tests never wait it out when passing


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Database]:
    """A file database whose busy handler gives up after 50 ms, so that any wait in SQLite's
    busy handler (rather than on the gate, or not at all) fails the test instead of hiding."""
    url = f"sqlite:///{tmp_path}/bot.db"
    upgrade(url)
    database = Database(url, connect_args={"timeout": 0.05})
    yield database
    database.dispose()


def _lease_count(database: Database, read_only: bool) -> int:
    with database.session_scope(read_only=read_only) as s:
        return int(s.execute(select(func.count()).select_from(Lease)).scalar_one())


def _add_lease(s: Session, name: str) -> None:
    s.add(Lease(name=name, holder="t", expires_at=datetime(2026, 1, 1, tzinfo=UTC)))
    s.flush()


class _Writer(threading.Thread):
    """Opens a write transaction, adds a row, then holds it open until told to commit."""

    def __init__(self, database: Database, name: str) -> None:
        super().__init__(daemon=True)
        self.database, self.lease = database, name
        self.holding, self.go, self.error = threading.Event(), threading.Event(), None

    def run(self) -> None:
        try:
            with self.database.session_scope() as s:
                _add_lease(s, self.lease)
                self.holding.set()
                self.go.wait(WAIT)
        except Exception as exc:  # reported to the test
            self.error = exc
            self.holding.set()


def test_a_reader_is_not_held_up_by_an_open_write_and_sees_the_last_commit(tight: Database) -> None:
    writer = _Writer(tight, "held")
    writer.start()
    assert writer.holding.wait(WAIT) and writer.error is None
    try:
        # A writer would queue behind it (and then see the row); a reader goes on at once and
        # sees the last commit.
        assert _lease_count(tight, read_only=True) == 0
    finally:
        writer.go.set()
        writer.join(WAIT)
    assert writer.error is None
    assert _lease_count(tight, read_only=True) == 1


def test_a_read_only_transaction_cannot_write(sqlite_db: Database) -> None:
    with pytest.raises(OperationalError, match="readonly"), sqlite_db.session_scope(read_only=True) as s:
        _add_lease(s, "sneaky")
    # The connection it used writes again in a write transaction (query_only is switched back).
    with sqlite_db.session_scope() as s:
        _add_lease(s, "fine")
    assert _lease_count(sqlite_db, read_only=True) == 1


def test_a_second_writer_waits_on_the_gate_not_in_the_busy_handler(
        tight: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    waiting = threading.Event()
    real = db_module._gate(str(tight.engine.url.database))

    class Watched:
        """The same lock; says when a writer starts waiting for it."""

        def acquire(self, timeout: float = -1) -> bool:
            if real.locked():
                waiting.set()
            return real.acquire(timeout=timeout)

        def release(self) -> None:
            real.release()

    first = _Writer(tight, "first")
    first.start()
    assert first.holding.wait(WAIT) and first.error is None
    monkeypatch.setattr(db_module, "_gate", lambda _url: Watched())
    second = _Writer(tight, "second")
    second.start()
    # The second writer is queued on the gate while the first holds the lock far longer than the
    # 50 ms busy timeout; when the first commits, the second goes through.
    assert waiting.wait(WAIT), "the second writer never waited on the gate"
    first.go.set()
    first.join(WAIT)
    assert second.holding.wait(WAIT)
    second.go.set()
    second.join(WAIT)
    assert (first.error, second.error) == (None, None)
    assert _lease_count(tight, read_only=True) == 2


def test_the_gate_is_given_back_after_commit_rollback_and_a_failed_statement(sqlite_db: Database) -> None:
    gate = db_module._gate(str(sqlite_db.engine.url.database))
    with sqlite_db.session_scope() as s:
        _add_lease(s, "a")
        assert gate.locked()
    assert not gate.locked()
    with pytest.raises(RuntimeError), sqlite_db.session_scope() as s:
        _add_lease(s, "b")
        raise RuntimeError("the block failed: rolled back")
    assert not gate.locked()
    with pytest.raises(Exception), sqlite_db.session_scope() as s:  # noqa: B017 (the driver's)
        _add_lease(s, "a")  # the same primary key: IntegrityError on flush
    assert not gate.locked()
    with reading(), sqlite_db.engine.connect() as conn:
        conn.execute(select(func.count()).select_from(Lease))
        assert not gate.locked()
    assert _lease_count(sqlite_db, read_only=False) == 1
