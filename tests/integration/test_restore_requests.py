"""Restore requests at the service level: races, expiry, who may ask."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput, Denied
from bot.flows import access as access_flow
from bot.flows import approvals
from bot.models import AuditEvent, RestoreRequest
from bot.services import audit, directory, restore_requests
from bot.services.directory import Actor, SubjectRef
from tests.fakes.services import make_services

ADMINS = ["UADMIN01", "UADMIN02", "UADMIN03", "UADMIN04"]
ALICE = SubjectRef(name="alice", slack_user_id="UALICE01")


@pytest.fixture
def revoked(db: Database, clock: FixedClock) -> Any:
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        iam.create_user(UserName="alice")
        services = make_services(db, clock, iam)
        with db.session_scope() as s:
            directory.bootstrap_admins(s, clock, ADMINS)
            directory.link_principal(s, clock, Actor.slack(ADMINS[0]), ALICE,
                                     "arn:aws:iam::123456789012:user/alice")
        rev = access_flow.revoke_manual(services, Actor.slack(ADMINS[0]), ALICE, "test")
        with db.session_scope() as s:
            req, created = restore_requests.create(s, clock, Actor.slack("UALICE01"), rev.id, "please",
                                           timedelta(hours=72))
        assert created
        yield services, iam, req.id


def test_concurrent_decisions_resolve_once(db: Database, clock: FixedClock, revoked: Any) -> None:
    services, iam, req_id = revoked
    barrier = threading.Barrier(len(ADMINS))
    results: list[bool] = []
    errors: list[BaseException] = []

    def decide(admin: str) -> None:
        try:
            barrier.wait()
            results.append(approvals.decide(services, Actor.slack(admin), req_id, "approve") is None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(a,)) for a in ADMINS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [False, False, False, True]
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == []
    with db.session_scope() as s:
        actions = [(e.action, e.outcome) for e in s.scalars(select(AuditEvent))]
        assert actions.count(("request.approve", "ok")) == 1 and actions.count(("access.restore", "ok")) == 1
        assert actions.count(("request.approve", "denied")) == 3  # each losing click is audited too
        assert audit.verify(s).ok


def test_expired_request_cannot_be_decided(db: Database, clock: FixedClock, revoked: Any) -> None:
    services, _, req_id = revoked
    clock.advance(hours=73)
    note = approvals.decide(services, Actor.slack(ADMINS[1]), req_id, "approve")
    assert note is not None and note.startswith("Nothing to do")
    with db.session_scope() as s:
        assert [r.status for r in restore_requests.expire(s, clock)] == ["expired"]
        assert s.scalars(select(RestoreRequest.status)).one() == "expired"


def test_who_may_ask_and_bad_reasons(db: Database, clock: FixedClock, revoked: Any) -> None:
    _, _, req_id = revoked
    with db.session_scope() as s:
        rev_id = s.get(RestoreRequest, req_id).revocation_id  # type: ignore[union-attr]
    with pytest.raises(Denied), db.session_scope() as s:
        restore_requests.create(s, clock, Actor.slack("UMALLORY1"), rev_id, "me too", timedelta(hours=1))
    with pytest.raises(BadInput), db.session_scope() as s:
        restore_requests.create(s, clock, Actor.slack("UALICE01"), rev_id, "   ", timedelta(hours=1))
    with db.session_scope() as s:
        _, created = restore_requests.create(s, clock, Actor.slack("UALICE01"), rev_id, "again",
                                             timedelta(hours=1))
    assert created is False
