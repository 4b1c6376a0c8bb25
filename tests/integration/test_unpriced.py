"""A call to a model without a price is counted in tokens and flagged as unpriced — never a
silent $0 — in the ledger (AIP sync and invocation logs), the usage report, limits and the digest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import Usage
from bot.quantities import Metric, Window, parse_amount
from bot.render.digest import digest_blocks, digest_text
from bot.render.usage import limit_line, usage_blocks, usage_text
from bot.services import directory, limits
from bot.services.digest import build_digest
from bot.services.directory import SubjectRef
from bot.services.usage import report
from tests.integration import test_logs_usage as logs_t
from tests.integration.test_logs_usage import FakeLogs, invocation
from tests.integration.test_usage_sync import ADMIN, HAIKU, T0, cw, provision, put, sync

__all__ = ["cw"]  # the moto CloudWatch fixture, shared with test_usage_sync
NEW_MODEL = "acme.brand-new-model-v1:0"  # in no price table
UTC = ZoneInfo("UTC")


def _ledger(db: Database) -> list[tuple[int, int, int, int, int]]:
    with db.session_scope() as s:
        return sorted(s.execute(select(Usage.input_tokens + Usage.output_tokens, Usage.requests,
                                       Usage.cost_micro_usd, Usage.unpriced_tokens,
                                       Usage.unpriced_requests)).tuples())


def test_an_aip_on_an_unpriced_model_is_counted_and_flagged(db: Database, clock: FixedClock,
                                                            cw: Any) -> None:
    priced = provision(db, clock, "alice", HAIKU)
    unpriced = provision(db, clock, "alice", NEW_MODEL)
    put(cw, priced, T0 - timedelta(minutes=25), inp=1000, out=200, calls=2)
    put(cw, unpriced, T0 - timedelta(minutes=25), inp=4000, out=1000, calls=3)
    sync(db, clock, cw)

    assert _ledger(db) == [(1200, 2, 500, 0, 0), (5000, 3, 0, 5000, 3)]
    with db.session_scope() as s:
        limits.set_limit(s, clock, ADMIN, SubjectRef(name="alice"), parse_amount("$10"), Window.DAY,
                         Metric.COST, (80, 90), "notify", False)
    with db.session_scope() as s:
        r = report(s, clock, UTC, 0, ADMIN, SubjectRef(name="alice"), "today")
    assert (r.totals.tokens, r.totals.cost_micro_usd) == (6200, 500)
    assert (r.totals.unpriced_tokens, r.totals.unpriced_requests) == (5000, 3)
    assert r.unpriced_models == (NEW_MODEL,)
    cost_limit = r.limits[0]
    assert cost_limit.used == 500 and cost_limit.unpriced_tokens == 5000

    text = str(usage_blocks(r, UTC))
    assert "5k tokens in 3 requests went to models without a price" in text
    assert NEW_MODEL in text
    assert "unpriced tokens not in the cost" in limit_line(cost_limit, UTC)
    assert usage_text(r).endswith("(+5k unpriced tokens)")


def test_a_priced_report_says_nothing_about_prices(db: Database, clock: FixedClock, cw: Any) -> None:
    priced = provision(db, clock, "alice", HAIKU)
    put(cw, priced, T0 - timedelta(minutes=25), inp=1000, out=200, calls=2)
    sync(db, clock, cw)
    with db.session_scope() as s:
        r = report(s, clock, UTC, 0, ADMIN, SubjectRef(name="alice"), "today")
    assert r.totals.unpriced_tokens == 0 and r.unpriced_models == ()
    assert "without a price" not in str(usage_blocks(r, UTC)) and "unpriced" not in usage_text(r)


def test_invocation_logs_flag_unpriced_calls_but_keep_priced_ones_priced(db: Database,
                                                                         clock: FixedClock) -> None:
    logs = FakeLogs()
    logs_t.setup(db, clock)
    at = T0 - timedelta(minutes=25)
    logs.put(at, invocation(at, logs_t.ALICE_USER, HAIKU, 1000, 200))
    logs.put(at, invocation(at, logs_t.ALICE_USER, NEW_MODEL, 300, 100, cache_read=50))
    logs_t.sync(db, clock, logs)
    # one principal meter and hour: priced Haiku's cost, the new model's 450 tokens flagged
    assert _ledger(db) == [(1600, 2, 500, 450, 1)]
    with db.session_scope() as s:
        r = report(s, clock, UTC, 0, ADMIN, SubjectRef(name="alice"), "today")
    assert r.unpriced_models == ()  # a log meter keeps no model per hour: counted, not named
    assert "450 tokens in 1 request went to models without a price:" in str(usage_blocks(r, UTC))


def test_the_digest_flags_yesterdays_unpriced_calls(db: Database, clock: FixedClock, cw: Any) -> None:
    unpriced = provision(db, clock, "alice", NEW_MODEL)
    put(cw, unpriced, T0 - timedelta(minutes=25), inp=4000, out=1000, calls=3)
    sync(db, clock, cw)
    clock.advance(days=1)  # the digest is about yesterday
    with db.session_scope() as s:
        directory.ensure_user(s, clock, ADMIN, SubjectRef(name="bob"))
        data = build_digest(s, clock(), UTC, 0)
    assert data.unpriced is not None and (data.unpriced.tokens, data.unpriced.requests) == (5000, 3)
    assert data.unpriced.models == (NEW_MODEL,)
    _, blocks = digest_blocks(data, UTC)
    assert "went to models without a price" in str(blocks) and NEW_MODEL in str(blocks)
    assert "$0.00" in digest_text(data)  # the estimate is what it is, and the flag says why
