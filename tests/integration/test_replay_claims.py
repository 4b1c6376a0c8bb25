"""The replay cache's batch claim (`replay.claim_many`, what concurrent acks share through the
gate's group commit) on both databases: one answer per signature in order, a signature new in
the batch is first only once, and one already stored is a replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.db import Database
from bot.models import SlackSignature
from bot.services import replay

EXPIRES = datetime(2026, 12, 3, 12, 5, tzinfo=UTC)


def sig(c: str) -> str:
    return "v0=" + c * 64


def test_a_batch_answers_each_claim_in_order(db: Database) -> None:
    with db.quick.begin() as conn:
        assert replay.claim(conn, sig("a"), EXPIRES)
    with db.quick.begin() as conn:
        answers = replay.claim_many(conn, [(sig("b"), EXPIRES), (sig("a"), EXPIRES), (sig("b"), EXPIRES),
                                           (sig("c"), EXPIRES + timedelta(minutes=1))])
    assert answers == [True, False, False, True]
    with db.session_scope() as s:
        stored = dict(s.execute(select(SlackSignature.digest, SlackSignature.expires_at)).tuples().all())
        assert s.execute(select(func.count()).select_from(SlackSignature)).scalar_one() == 3
    assert stored[replay.digest(sig("c"))] == EXPIRES + timedelta(minutes=1)
    with db.quick.begin() as conn:  # every one of them is now a replay
        assert replay.claim_many(conn, [(sig(c), EXPIRES) for c in "abc"]) == [False, False, False]
