"""One active revocation per cause, enforced by the database itself (partial unique indexes),
so no race in the code above it can record a subject revoked twice."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from bot.clock import FixedClock
from bot.db import Database
from bot.models import Revocation
from bot.quantities import Metric, Window, parse_amount
from bot.services import directory, limits
from bot.services.directory import Actor, SubjectRef

ADMIN = Actor.slack("UADMIN01")
ALICE = SubjectRef(name="alice", slack_user_id="UALICE01")


def _revocation(subject_id: int, clock: FixedClock, reason: str, limit_id: int | None = None,
                state: str = "active") -> Revocation:
    return Revocation(subject_id=subject_id, reason=reason, limit_id=limit_id, state=state,
                      revoked_by="test", revoked_at=clock(), principals=[])


def _setup(db: Database, clock: FixedClock) -> tuple[int, int]:
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        subject = directory.ensure_user(s, clock, ADMIN, ALICE)
        limit, _ = limits.set_limit(s, clock, ADMIN, ALICE, parse_amount("1M"), Window.DAY, Metric.TOKENS,
                                    (80,), "revoke", False)
        return subject.id, limit.id


def test_a_second_active_manual_revocation_is_refused(db: Database, clock: FixedClock) -> None:
    subject_id, _ = _setup(db, clock)
    with db.session_scope() as s:
        s.add(_revocation(subject_id, clock, "manual"))
    with pytest.raises(IntegrityError), db.session_scope() as s:
        s.add(_revocation(subject_id, clock, "manual"))
    with db.session_scope() as s:  # a restored one does not count
        s.add(_revocation(subject_id, clock, "manual", state="restored"))


def test_a_limit_holds_one_active_revocation_whichever_cause(db: Database, clock: FixedClock) -> None:
    subject_id, limit_id = _setup(db, clock)
    with db.session_scope() as s:
        s.add(_revocation(subject_id, clock, "limit", limit_id))
        s.add(_revocation(subject_id, clock, "manual"))  # another cause: allowed
    with pytest.raises(IntegrityError), db.session_scope() as s:
        s.add(_revocation(subject_id, clock, "alarm", limit_id))
