"""Access changes to one subject from two processes at once, on PostgreSQL: revoke vs
restore, revoke vs revoke, an approval click vs a revoke, an alarm vs a restore — 50 rounds.
After every round the database and IAM agree (an active revocation ⇔ the deny policy is on
the user) and the subject holds at most one active manual revocation.

Each process builds its own Services (its own engine and pool) against one private schema and
one moto server, as two replicas would. About 20 s. Skipped without PostgreSQL (a failure when
CI sets REQUIRE_POSTGRES=1).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import delete, select

from bot.clock import FixedClock
from bot.config import load_settings
from bot.db import Database
from bot.errors import BotError
from bot.migrate import upgrade
from bot.models import LimitException, Revocation
from bot.quantities import Metric, Window, parse_amount
from bot.runtime import Services
from bot.services import directory, limits, restore_requests
from bot.services.directory import Actor, SubjectRef
from tests.conftest import PG_BASE, _pg_reachable, drop_pg_schema, new_pg_schema_url

ROUNDS = 50
ADMINS = ("UADMIN01", "UADMIN02")
ALICE = SubjectRef(name="alice", slack_user_id="UALICE01")
ARN = "arn:aws:iam::123456789012:user/alice"
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
# Who does what in a round: process 0's move, process 1's move.
SCENARIOS = (("restore", "revoke"), ("revoke", "revoke"), ("approve", "revoke"), ("restore", "alarm"))


def _services(url: str, aws: str) -> Services:
    os.environ["AWS_ENDPOINT_URL"] = aws
    settings = load_settings(None, DATABASE_URL=url, BOT_PROFILES_BACKEND="local", BOT_TIMEZONE="UTC",
                             AWS_REGION="us-east-1")
    return Services(settings, Database(url), FixedClock(NOW), overrides={"account_id": "123456789012"})


def _move(s: Services, move: str, me: str, limit_id: int, request_id: int | None) -> None:
    from bot.flows import access, approvals

    try:
        if move == "revoke":
            access.revoke_manual(s, Actor.slack(me), ALICE, "race")
        elif move == "restore":
            access.restore_manual(s, Actor.slack(me), ALICE, "race")
        elif move == "approve" and request_id is not None:
            approvals.decide(s, Actor.slack(me), request_id, "approve")
        elif move == "alarm":
            _alarm(s, limit_id)
    except BotError:
        pass  # "already revoked", "not revoked": a loser's answer, not a failure


def _alarm(s: Services, limit_id: int) -> None:
    from bot.flows import access
    from bot.models import Limit
    from bot.services.events import should_revoke

    def wanted(session: Any) -> bool:
        limit = session.get(Limit, limit_id)
        return limit is not None and should_revoke(session, s.clock, limit)

    with s.db.session_scope() as session:
        subject_id = directory.get(session, ALICE).id
    access.revoke_automatic(s, Actor("sns:race"), subject_id, "alarm", "alarm race", limit_id,
                            (NOW, NOW + timedelta(days=1)), wanted)


def _worker(index: int, url: str, aws: str, limit_id: int, barrier: Any, requests: Any,
            errors: Any) -> None:
    s = _services(url, aws)
    me = ADMINS[index]
    for n in range(ROUNDS):
        barrier.wait()  # the parent has set the round up
        try:
            move = SCENARIOS[n % len(SCENARIOS)][index]
            _move(s, move, me, limit_id, requests[n])
        except Exception as exc:  # anything but a refusal is a failure of the test
            errors.append(f"round {n} process {index}: {type(exc).__name__}: {exc}")
        barrier.wait()  # the parent checks the round
    s.db.dispose()


def _state(db: Database, iam: Any) -> tuple[int, int, bool]:
    with db.session_scope() as session:
        revs = session.scalars(select(Revocation).where(Revocation.state == "active")).all()
        active, manual = len(revs), sum(r.reason == "manual" for r in revs)
    names = iam.list_user_policies(UserName="alice")["PolicyNames"]
    return active, manual, "bedrock-bot-deny-alice" in names


def _setup_round(s: Services, n: int, iam: Any) -> int | None:
    """Every round starts from alice revoked by an alarm-style limit revocation, with a restore
    request pending when an approval is part of the round."""
    from bot.flows import access

    with s.db.session_scope() as session:
        limit_id = limits.list_limits(session, ALICE)[0].id
    for rev in _active(s):
        access.lift(s, Actor.slack(ADMINS[0]), rev, "reset")
    with s.db.session_scope() as session:  # an approval's exception would hold off the next alarm
        session.execute(delete(LimitException))
    _alarm(s, limit_id)
    if SCENARIOS[n % len(SCENARIOS)][0] != "approve":
        return None
    with s.db.session_scope() as session:
        rev_id = _active(s)[0]
        req, _ = restore_requests.create(session, s.clock, Actor.slack(ALICE.slack_user_id or ""), rev_id,
                                         "race", timedelta(hours=1))
        return req.id


def _active(s: Services) -> list[int]:
    with s.db.session_scope() as session:
        return list(session.scalars(select(Revocation.id).where(Revocation.state == "active")))


@pytest.fixture
def world() -> Any:
    if not _pg_reachable():
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but not reachable at {PG_BASE}")
        pytest.skip("PostgreSQL not reachable")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url, schema = new_pg_schema_url()
    try:
        yield url, f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        drop_pg_schema(schema)


def test_two_processes_racing_on_one_subject_leave_database_and_iam_in_agreement(
        world: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url, aws = world
    upgrade(url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    s = _services(url, aws)
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=aws)
    iam.create_user(UserName="alice")
    clock = FixedClock(NOW)
    with s.db.session_scope() as session:
        directory.bootstrap_admins(session, clock, list(ADMINS))
        directory.link_principal(session, clock, Actor.slack(ADMINS[0]), ALICE, ARN)
        limit, _ = limits.set_limit(session, clock, Actor.slack(ADMINS[0]), ALICE, parse_amount("1M"),
                                    Window.DAY, Metric.TOKENS, (80,), "revoke", False)
    ctx = mp.get_context("spawn")
    barrier, manager = ctx.Barrier(3), ctx.Manager()
    requests, errors = manager.list([None] * ROUNDS), manager.list()
    procs = [ctx.Process(target=_worker, args=(i, url, aws, limit.id, barrier, requests, errors))
             for i in range(2)]
    for p in procs:
        p.start()
    disagreements = []
    try:
        for n in range(ROUNDS):
            requests[n] = _setup_round(s, n, iam)
            barrier.wait(timeout=60)  # go
            barrier.wait(timeout=60)  # both done
            active, manual, deny = _state(s.db, iam)
            if (active > 0) != deny or manual > 1:
                disagreements.append((n, SCENARIOS[n % len(SCENARIOS)], active, manual, deny))
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        s.db.dispose()
    assert list(errors) == []
    assert disagreements == []
