"""Leases: one row per name (`scheduler`), held by one replica until `expires_at`.

A lease is taken when it is free, expired, or already ours (which renews it), in one
`INSERT … ON CONFLICT DO UPDATE … WHERE` statement, so two replicas racing for it cannot
both win on SQLite or PostgreSQL: on PostgreSQL the loser's insert waits on the winner's
row and then re-checks the WHERE against the committed row; SQLite serialises writers.

Pure functions on a Session: they flush nothing of their own and never commit — the
caller's `session_scope()` does. Times are aware UTC, as everywhere.

Fencing: work done on behalf of a lease holder (the scheduler's jobs) runs inside
`fenced(Fence(...))`. `Database.session_scope()` then calls `Fence.check()` right before
each commit: in the same transaction it reads the lease row (`FOR SHARE` on PostgreSQL, so
a takeover's update waits for this commit; SQLite's writer lock already serialises) and
raises `LeaseLost` — the transaction rolls back — unless the row still names the holder
and has not expired by the fence's clock. So a job that outlives its lease, or whose
replica was replaced meanwhile, commits nothing from then on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.models import Lease

NAME_MAX = 64
HOLDER_MAX = 128


def _insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(Lease)
    if dialect == "sqlite":
        return sqlite.insert(Lease)
    raise NotImplementedError(f"leases need SQLite or PostgreSQL, not {dialect}")


def _check(name: str, holder: str, now: datetime | None = None) -> None:
    if now is not None and now.tzinfo is None:
        raise ValueError("lease times must be aware (UTC)")
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"lease name must be 1..{NAME_MAX} characters")
    if not holder or len(holder) > HOLDER_MAX:
        raise ValueError(f"lease holder must be 1..{HOLDER_MAX} characters")


def acquire(session: Session, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew `name` for `holder` until `now + ttl`; True when `holder` has it now.

    Succeeds when nobody holds the lease, when it expired (`expires_at <= now`), or when
    `holder` already holds it (renewal). Otherwise the row is left alone and False returned.
    """
    _check(name, holder, now)
    if ttl <= timedelta(0):
        raise ValueError("lease ttl must be positive")
    expires = now + ttl
    stmt = _insert(session).values(name=name, holder=holder, expires_at=expires)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Lease.name],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
        where=or_(Lease.holder == holder, Lease.expires_at <= now),
    )
    session.execute(stmt)
    # A column query, not an entity: the identity map may hold a stale Lease object.
    current = session.execute(select(Lease.holder).where(Lease.name == name)).scalar_one_or_none()
    return current == holder


def release(session: Session, name: str, holder: str) -> bool:
    """Give the lease up so another replica can take it at once; only if `holder` has it."""
    _check(name, holder)
    result: Any = session.execute(
        delete(Lease).where(Lease.name == name, Lease.holder == holder),
        execution_options={"synchronize_session": False},
    )
    return bool(result.rowcount)


def holder_of(session: Session, name: str, now: datetime) -> str | None:
    """Who holds `name` at `now`, or None when it is free or expired."""
    if now.tzinfo is None:
        raise ValueError("lease times must be aware (UTC)")
    return session.execute(
        select(Lease.holder).where(Lease.name == name, Lease.expires_at > now)
    ).scalar_one_or_none()


# ---- fencing ------------------------------------------------------------------------------


class LeaseLost(RuntimeError):
    """A fenced transaction was rolled back: its lease is no longer held by its holder."""


@dataclass(frozen=True)
class Fence:
    """The lease `name` must still be `holder`'s, unexpired by `clock`, at every commit."""

    name: str
    holder: str
    clock: Clock

    def check(self, session: Session) -> None:
        """Raise LeaseLost unless the lease is still ours; call it inside the transaction
        that is about to commit, so the answer holds until that commit."""
        now = self.clock()
        _check(self.name, self.holder, now)
        held = session.execute(
            select(Lease.holder)
            .where(Lease.name == self.name, Lease.holder == self.holder, Lease.expires_at > now)
            .with_for_update(read=True)  # FOR SHARE: several fenced jobs may commit at once
        ).scalar_one_or_none()
        if held is None:
            raise LeaseLost(f"the {self.name} lease is no longer held by {self.holder}; "
                            "this transaction was rolled back")


_FENCE: ContextVar[Fence | None] = ContextVar("lease_fence", default=None)


@contextmanager
def fenced(fence: Fence) -> Iterator[Fence]:
    """Every `session_scope()` commit in this block (this thread or task) checks `fence`."""
    token = _FENCE.set(fence)
    try:
        yield fence
    finally:
        _FENCE.reset(token)


def current_fence() -> Fence | None:
    return _FENCE.get()
