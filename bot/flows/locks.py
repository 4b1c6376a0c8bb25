"""One access change per subject at a time, across threads, processes and replicas.

Held across plan → IAM → record, so a revoke and a restore of the same subject (a person,
enforce, an alarm, an approval click — on any replica) cannot interleave and leave the
database saying one thing and IAM another.

- PostgreSQL: a session advisory lock on a connection of its own (outside every
  transaction, so it is not the audit chain's lock and holds no row); released when the
  block ends, or by PostgreSQL if the process dies.
- SQLite: a row in `leases` (`access:<subject id>`), taken with the same race-free upsert
  as the scheduler's lease and expiring after LEASE_TTL if its holder died.

Re-entrant per thread: a flow that already holds a subject's lock may call another flow
that takes it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from uuid import uuid4

from sqlalchemy import text

from bot.clock import Clock
from bot.db import Database
from bot.errors import BotError
from bot.services import leases

NAMESPACE = 0x62626163  # "bbac": pg_advisory_lock(namespace, subject id)
LEASE_TTL = timedelta(minutes=2)  # longer than any plan → IAM → record (IAM retries included)
WAIT = 30.0  # seconds before giving up with a clear reason
_held = threading.local()


class Busy(BotError):
    """Another access change to the same subject did not finish in time."""

    outcome = "error"


def _holding() -> set[int]:
    if not hasattr(_held, "ids"):
        _held.ids = set()
    ids: set[int] = _held.ids
    return ids


@contextmanager
def subject(db: Database, clock: Clock, subject_id: int) -> Iterator[None]:
    held = _holding()
    if subject_id in held:
        yield
        return
    lock = _advisory if db.dialect == "postgresql" else _lease
    with lock(db, clock, subject_id):
        held.add(subject_id)
        try:
            yield
        finally:
            held.discard(subject_id)


@contextmanager
def _advisory(db: Database, clock: Clock, subject_id: int) -> Iterator[None]:
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text(f"SET lock_timeout = '{int(WAIT * 1000)}ms'"))
        try:
            conn.execute(text("SELECT pg_advisory_lock(:ns, :id)"), {"ns": NAMESPACE, "id": subject_id})
        except Exception as exc:
            raise Busy("another change to this subject's access is still running; try again") from exc
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:ns, :id)"), {"ns": NAMESPACE, "id": subject_id})
            conn.execute(text("RESET lock_timeout"))  # the pooled connection goes back as it came


@contextmanager
def _lease(db: Database, clock: Clock, subject_id: int) -> Iterator[None]:
    name, holder = f"access:{subject_id}", f"{os.getpid()}:{uuid4().hex[:12]}"
    deadline = time.monotonic() + WAIT
    while True:
        with db.session_scope() as session:
            if leases.acquire(session, name, holder, clock(), LEASE_TTL):
                break
        if time.monotonic() > deadline:
            raise Busy("another change to this subject's access is still running; try again")
        time.sleep(0.02)  # the holder is waiting on IAM (seconds); polling costs a row read
    try:
        yield
    finally:
        with db.session_scope() as session:
            leases.release(session, name, holder)
