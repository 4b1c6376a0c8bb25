"""The replay cache's batch claim (`replay.claim_many`, what concurrent acks share through the
gate's group commit) on both databases: one answer per signature in order, a signature new in
the batch is first only once, and one already stored is a replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine.default import CACHE_HIT

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


def test_a_batch_longer_than_one_statement_is_answered_whole(db: Database) -> None:
    """Past MAX_ROWS rows the claim goes in several statements, with the same answers."""
    many = [sig(f"{i:x}"[-1]) + f"{i:04d}" for i in range(replay.MAX_ROWS * 2 + 5)]
    with db.quick.begin() as conn:
        assert replay.claim(conn, many[100], EXPIRES)
    with db.quick.begin() as conn:
        answers = replay.claim_many(conn, [(s, EXPIRES) for s in [*many, many[0]]])
    assert answers == [i != 100 for i in range(len(many))] + [False]
    with db.session_scope() as s:
        assert s.execute(select(func.count()).select_from(SlackSignature)).scalar_one() == len(many)


def test_the_claim_statement_is_compiled_once(db: Database) -> None:
    """An ON CONFLICT insert built with SQLAlchemy's dialect `insert` has no cache key and was
    compiled again for every ack; the claim must come from the compiled cache after its first use."""
    hits = []

    @event.listens_for(db.quick, "after_cursor_execute")
    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.startswith("INSERT INTO slack_signatures"):
            hits.append(context.cache_hit)

    for c in "abc":
        with db.quick.begin() as conn:
            replay.claim(conn, sig(c), EXPIRES)
    event.remove(db.quick, "after_cursor_execute", seen)
    assert len(hits) == 3
    assert hits[1:] == [CACHE_HIT, CACHE_HIT]
