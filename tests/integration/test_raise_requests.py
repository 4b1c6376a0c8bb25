"""Raise requests and temporary raises on both databases: decided once, four eyes, the
effective amount, expiry, and the admin grant."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput, Denied, NotFound
from bot.flows import limits as limits_flow
from bot.flows import raises as raise_flow
from bot.models import AuditEvent, Limit, LimitRaise, Meter, RaiseRequest
from bot.quantities import Amount, Metric, Window
from bot.services import audit, directory, ledger, limits, raise_requests, raises
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow
from bot.services.limit_usage import limit_status
from tests.fakes.services import make_services

ADMINS = ["UADMIN01", "UADMIN02", "UADMIN03", "UADMIN04"]
ALICE_ID = "UALICE01"
ALICE = SubjectRef(name="alice", slack_user_id=ALICE_ID)
TZ = ZoneInfo("UTC")


def _use(db: Database, clock: FixedClock, tokens: int) -> None:
    """Ledger usage for alice in the current hour (as a sync would record it)."""
    with db.session_scope() as s:
        subject = directory.get(s, ALICE)
        meter = s.scalar(select(Meter).where(Meter.subject_id == subject.id))
        if meter is None:
            meter = Meter(kind="principal", key="arn:aws:iam::123456789012:user/alice", subject_id=subject.id,
                          created_at=clock())
            s.add(meter)
            s.flush()
        hour = clock().replace(minute=0, second=0, microsecond=0)
        ledger.add(s, [LedgerRow(meter.id, hour, input_tokens=tokens)], clock())


@pytest.fixture
def world(db: Database, clock: FixedClock) -> Any:
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="alice")
        services = make_services(db, clock, iam)
        with db.session_scope() as s:
            directory.bootstrap_admins(s, clock, ADMINS)
            directory.link_principal(s, clock, Actor.slack(ADMINS[0]), ALICE,
                                     "arn:aws:iam::123456789012:user/alice")
        for window in (Window.DAY, Window.MONTH):
            limits_flow.set_limit(services, Actor.slack(ADMINS[0]), ALICE, Amount(1_000_000 if window == "day"
                                  else 10_000_000, False), window, Metric.TOKENS, (80, 90), "revoke", False)
        yield services, iam


def _file(db: Database, clock: FixedClock, amount: int = 1_000_000) -> int:
    with db.session_scope() as s:
        limit_id = raise_requests.own_limit(s, clock, TZ, 0, Actor.slack(ALICE_ID), Amount(amount, False),
                                            Metric.TOKENS, None)
        req, created = raise_requests.create(s, clock, Actor.slack(ALICE_ID), limit_id, Amount(amount, False),
                                             timedelta(hours=24), "launch", timedelta(hours=72))
    assert created
    return req.id


def test_concurrent_decisions_resolve_once(db: Database, clock: FixedClock, world: Any) -> None:
    services, _ = world
    req_id = _file(db, clock)
    barrier = threading.Barrier(len(ADMINS))
    results: list[bool] = []
    errors: list[BaseException] = []

    def decide(admin: str) -> None:
        try:
            barrier.wait()
            results.append(raise_flow.decide(services, Actor.slack(admin), req_id, "approve") is None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(a,)) for a in ADMINS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [False, False, False, True]
    with db.session_scope() as s:
        assert len(s.scalars(select(LimitRaise)).all()) == 1
        actions = [e.action for e in s.scalars(select(AuditEvent))]
        assert actions.count("raise_request.approve") == 1 and actions.count("limit.raise") == 1
        assert audit.verify(s).ok


def test_concurrent_conditional_update_without_the_lock(db: Database, clock: FixedClock, world: Any) -> None:
    """The service alone (no subject lock): two transactions, one decision, one raise."""
    if db.dialect != "postgresql":
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE); the race needs PostgreSQL")
    req_id = _file(db, clock)
    barrier = threading.Barrier(2)
    changed: list[bool] = []

    def decide(admin: str, decision: str) -> None:
        with db.session_scope() as s:
            barrier.wait()
            d = raise_requests.decide(s, clock, TZ, 0, Actor.slack(admin), req_id, decision)
            changed.append(d.changed)

    threads = [threading.Thread(target=decide, args=a) for a in ((ADMINS[1], "approve"), (ADMINS[2], "deny"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(changed) == [False, True]
    with db.session_scope() as s:
        req = s.get(RaiseRequest, req_id)
        assert req is not None and req.status in ("approved", "denied")
        assert len(s.scalars(select(LimitRaise)).all()) == (1 if req.status == "approved" else 0)


def test_four_eyes_and_who_may_ask(db: Database, clock: FixedClock, world: Any) -> None:
    services, _ = world
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, [ALICE_ID])
    req_id = _file(db, clock)
    with pytest.raises(Denied, match="four eyes"):
        raise_flow.decide(services, Actor.slack(ALICE_ID), req_id, "approve")
    with pytest.raises(Denied, match="only the people"):
        raise_flow.check_can_ask(services, Actor.slack(ADMINS[1]), 1)
    with pytest.raises(NotFound, match="no cost_usd limit"):
        raise_flow.request_more(services, Actor.slack(ALICE_ID), Amount(5_000_000, True), Metric.COST, None,
                                None, "more dollars")
    with pytest.raises(NotFound, match="have no limits"):
        raise_flow.request_more(services, Actor.slack("UNOBODY1"), Amount(5, False), Metric.TOKENS, None,
                                None, "x")


def test_nearest_window_effective_amount_and_expiry(db: Database, clock: FixedClock, world: Any) -> None:
    services, _ = world
    _use(db, clock, 900_000)  # 90% of the day, 9% of the month: the day is nearest its limit
    req_id = _file(db, clock)
    assert raise_flow.decide(services, Actor.slack(ADMINS[1]), req_id, "approve_half") is None
    with db.session_scope() as s:
        grant = s.scalars(select(LimitRaise)).one()
        limit = s.get(Limit, grant.limit_id)
        assert limit is not None and limit.window == "day" and grant.amount == 500_000
        assert grant.expires_at == clock() + timedelta(hours=24)
        status = limit_status(s, limit, directory.get(s, ALICE), clock(), TZ, 0)
        assert (status.amount, status.raised, status.base_amount) == (1_500_000, 500_000, 1_000_000)
        listed = next(v for v in limits.list_limits(s, ALICE, clock()) if v.window == "day")
        assert [r.amount for r in listed.raises] == [500_000]
    clock.advance(hours=24)
    with db.session_scope() as s:
        limit = s.get(Limit, grant.limit_id)
        assert limit is not None and raises.effective_amount(s, limit, clock()) == 1_000_000
    assert [r.amount for r in limits_flow.close_expired_raises(services)] == [500_000]
    assert limits_flow.close_expired_raises(services) == []  # closed once


def test_admin_grant(db: Database, clock: FixedClock, world: Any) -> None:
    services, _ = world
    admin = Actor.slack(ADMINS[0])
    out = limits_flow.grant_raise(services, admin, ALICE, Amount(1_000_000, False), Window.DAY, Metric.TOKENS,
                                  None, "launch")
    assert out.grant.expires_at == datetime(2026, 11, 26, tzinfo=UTC)  # until the day ends
    with pytest.raises(NotFound, match="no tokens/week limit"):
        limits_flow.grant_raise(services, admin, ALICE, Amount(1, False), Window.WEEK, Metric.TOKENS,
                                None, "x")
    with pytest.raises(Denied, match="needs the admin role"):
        limits_flow.grant_raise(services, Actor.slack(ALICE_ID), ALICE, Amount(1, False), Window.DAY,
                                Metric.TOKENS, None, "x")
    with pytest.raises(BadInput, match="reason"):
        limits_flow.grant_raise(services, admin, ALICE, Amount(1, False), Window.DAY, Metric.TOKENS,
                                None, " ")
