"""No transaction is open while the usage readers and reconcile call AWS (issue 13).

Every AWS client (CloudWatch, CloudWatch Logs, IAM) and the AIP backend is wrapped in a
probe that, before each call, looks at the database from outside the bot:

- SQLite: a second connection takes the writer lock (`BEGIN IMMEDIATE`) with no busy wait —
  it fails while any bot transaction is open, since every one starts with `BEGIN IMMEDIATE`;
- PostgreSQL: `pg_stat_activity` shows no backend of the bot (marked by its application_name)
  inside a transaction, and `pg_locks` no single-key advisory lock (the audit chain's) held by
  one. The two-key advisory lock of `bot/flows/locks.py` is meant to be held across IAM calls:
  it serialises changes to one subject and blocks nothing else.

The jobs run as the scheduler runs them, on both databases. The first tests show that the
probe does see an open transaction, and a reader called inside one.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import create_engine, select, text
from sqlalchemy.pool import NullPool

from bot.aws.access import deny_document, policy_name
from bot.aws.metrics import CloudWatchMetrics
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.db import Database
from bot.flows import access as access_flow
from bot.models import Meter, Usage
from bot.runtime import Services
from bot.services import access as access_rules
from bot.services import directory, usage
from bot.services import reconcile as reconcile_rules
from bot.services.directory import Actor, SubjectRef
from bot.services.reconcile import DENY_MISSING, DENY_STALE, PROFILE_UNRECORDED
from jobs import reconcile, usage_sync
from tests.aips import provision_aip
from tests.harness import make_settings
from tests.integration.test_logs_usage import FakeLogs, invocation

ACCOUNT = "123456789012"
REGION = "us-east-1"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"
GROUP = "/aws/bedrock/modelinvocations"
ADMIN = Actor.slack("UADMIN01")


class Probe:
    """Looks at the bot's database from a connection of its own: is a bot transaction open?"""

    def __init__(self, db: Database, app_name: str) -> None:
        self.db = db
        self.app_name = app_name
        self.calls: Counter[str] = Counter()
        self.violations: list[str] = []
        self._observer = (create_engine(db.url, poolclass=NullPool) if db.dialect == "postgresql"
                          else None)

    def held(self) -> list[str]:
        """What a bot transaction holds right now (empty: nothing)."""
        if self._observer is None:
            conn = sqlite3.connect(str(self.db.engine.url.database), timeout=0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
                return []
            except sqlite3.OperationalError as exc:  # "database is locked"
                return [f"the SQLite writer lock ({exc})"]
            finally:
                conn.close()
        with self._observer.connect() as c:
            open_tx = c.execute(text(
                "SELECT pid, state FROM pg_stat_activity WHERE application_name = :app "
                "AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"), {"app": self.app_name}).all()
            advisory = c.execute(text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE a.application_name = :app AND l.locktype = 'advisory'"
                " AND l.objsubid = 1"),
                {"app": self.app_name}).scalar_one()
        return [f"a transaction (pid {pid}, {state})" for pid, state in open_tx] + \
            ([f"{advisory} advisory lock(s)"] if advisory else [])

    def check(self, call: str) -> None:
        self.calls[call] += 1
        held = self.held()
        if held:
            self.violations.append(f"{call} while the bot held {', '.join(held)}")

    def close(self) -> None:
        if self._observer is not None:
            self._observer.dispose()


class Probed:
    """Any client or adapter whose every method call is checked by the probe first."""

    def __init__(self, target: Any, probe: Probe) -> None:
        self._target = target
        self._probe = probe
        self.before: dict[str, Callable[[], None]] = {}  # method name → run first, once

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def checked(*args: Any, **kwargs: Any) -> Any:
            self._probe.check(name)
            hook = self.before.pop(name, None)
            if hook is not None:
                hook()
            result = attr(*args, **kwargs)
            # A paginator makes its calls later, from `paginate`: probe those too.
            return Probed(result, self._probe) if name == "get_paginator" else result

        return checked


@pytest.fixture
def app_name() -> str:
    return f"bot-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def bot_db(db: Database, app_name: str) -> Iterator[Database]:
    """The bot's own engine on the test database; on PostgreSQL its connections carry a
    marker application_name, so the probe can tell them from everyone else's."""
    mine = Database(db.url if db.dialect == "sqlite" else f"{db.url}&application_name={app_name}")
    yield mine
    mine.dispose()


@pytest.fixture
def probe(bot_db: Database, app_name: str) -> Iterator[Probe]:
    p = Probe(bot_db, app_name)
    yield p
    p.close()


@dataclass
class World:
    db: Database
    clock: FixedClock
    services: Services
    cloudwatch: Any  # moto, unprobed: for the test's own set-up
    iam: Any
    logs: FakeLogs
    registry: LocalProfiles


@pytest.fixture
def world(bot_db: Database, clock: FixedClock, probe: Probe) -> Iterator[World]:
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        iam = boto3.client("iam", region_name=REGION)
        logs = FakeLogs()
        registry = LocalProfiles(bot_db, REGION, ACCOUNT, clock)
        settings = make_settings(bot_db.url, "http://127.0.0.1:9", BOT_INVOCATION_LOG_GROUP=GROUP,
                                 BOT_METADATA_KEYS="userId", BOT_ALERT_CHANNEL="")
        services = Services(settings, bot_db, clock, overrides={
            "account_id": ACCOUNT, "cloudwatch": Probed(cloudwatch, probe), "iam": Probed(iam, probe),
            "logs": Probed(logs, probe), "profiles": Probed(registry, probe)})
        with bot_db.session_scope() as s:
            directory.bootstrap_admins(s, clock, ["UADMIN01"])
        yield World(bot_db, clock, services, cloudwatch, iam, logs, registry)


def ledger(db: Database) -> dict[tuple[str, str], int]:
    """(meter kind, key) → input tokens over all hours."""
    with db.session_scope() as s:
        rows = s.execute(select(Meter.kind, Meter.key, Usage.input_tokens)
                         .join(Meter, Meter.id == Usage.meter_id)).all()
    out: Counter[tuple[str, str]] = Counter()
    for kind, key, tokens in rows:
        out[(kind, key)] += tokens
    return dict(out)


# ---- the probe itself ---------------------------------------------------------------------------


def test_the_probe_sees_an_open_transaction(bot_db: Database, probe: Probe) -> None:
    assert probe.held() == []
    with bot_db.session_scope() as s:
        s.execute(select(1))
        assert probe.held() != []
    assert probe.held() == []


def test_a_reader_called_inside_a_transaction_is_caught(world: World, probe: Probe) -> None:
    """The shape before issue 13 (the CloudWatch calls inside the sync's transaction) fails."""
    metrics = CloudWatchMetrics(Probed(world.cloudwatch, probe))
    with world.db.session_scope() as s:
        plan = usage.plan_sync(s, world.clock)
        usage.read_metrics(plan, metrics)
    assert probe.calls["list_metrics"] == 1
    assert len(probe.violations) == 1 and "list_metrics while the bot held" in probe.violations[0]


# ---- the readers and reconcile ------------------------------------------------------------------


def test_usage_sync_calls_cloudwatch_logs_and_bedrock_with_no_transaction_open(
        world: World, probe: Probe) -> None:
    alice_arn = f"arn:aws:iam::{ACCOUNT}:user/alice"
    with world.db.session_scope() as s:
        directory.link_principal(s, world.clock, ADMIN, SubjectRef(name="alice"), alice_arn)
    aip = provision_aip(world.db, world.clock, world.registry, REGION, ADMIN, SubjectRef(name="alice"), HAIKU)
    carol = world.registry.create("carol-console", HAIKU_ARN, {"user": "carol"}, "", "")  # to adopt
    at = world.clock() - timedelta(minutes=20)
    for pid, tokens in ((aip.profile_id, 700), (carol.id, 300)):
        world.cloudwatch.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at,
             "Value": value} for name, value in (("InputTokenCount", tokens), ("Invocations", 1))])
    world.logs.put(at, invocation(at, alice_arn, HAIKU, 50, 5))

    first = usage_sync.run(world.services, then_enforce=False)
    world.clock.advance(minutes=1)
    second = usage_sync.run(world.services, then_enforce=False)  # the steady state: no backfill

    assert first.ok and second.ok, (first.message, second.message)
    assert (first.value.backfilled, first.value.adopted, second.value.backfilled) == (2, 1, 0)
    assert ledger(world.db) == {("profile", aip.profile_id): 700, ("profile", carol.id): 300,
                                ("principal", alice_arn): 50}
    for called in ("list_application", "tags_of", "list_metrics", "get_metric_data", "start_query",
                   "get_query_results"):
        assert probe.calls[called] >= 1, (called, probe.calls)
    assert probe.violations == []


def test_reconcile_calls_iam_and_bedrock_with_no_transaction_open(world: World, probe: Probe) -> None:
    for name, slack_id in (("alice", "UALICE01"), ("bob", "UBOB0001")):
        world.iam.create_user(UserName=name)
        with world.db.session_scope() as s:
            directory.link_principal(s, world.clock, ADMIN, SubjectRef(name=name, slack_user_id=slack_id),
                                     f"arn:aws:iam::{ACCOUNT}:user/{name}")
    access_flow.revoke_manual(world.services, ADMIN, SubjectRef(name="alice"), "test")
    world.iam.delete_user_policy(UserName="alice", PolicyName=policy_name("alice"))  # by hand
    world.iam.put_user_policy(UserName="bob", PolicyName=policy_name("bob"),  # no revocation
                              PolicyDocument=json.dumps(deny_document(None)))
    provision_aip(world.db, world.clock, world.registry, REGION, ADMIN, SubjectRef(name="alice"), HAIKU)
    world.registry.create("orphan", HAIKU_ARN, {"managed-by": "bedrock-bot"}, "", "")
    probe.calls.clear()
    probe.violations.clear()  # the revoke above is the access flow's, not reconcile's

    out = reconcile.run(world.services)

    assert out.ok, out.message
    assert sorted(d.kind for d in out.value.drifts) == sorted([DENY_MISSING, DENY_STALE, PROFILE_UNRECORDED])
    assert world.iam.list_user_policies(UserName="alice")["PolicyNames"] == [policy_name("alice")]
    assert world.iam.list_user_policies(UserName="bob")["PolicyNames"] == []
    for called in ("get_user_policy", "paginate", "put_user_policy", "delete_user_policy",
                   "list_application", "tags_of"):
        assert probe.calls[called] >= 1, (called, probe.calls)
    assert probe.violations == []


def test_a_restore_committed_while_iam_is_written_wins(
        world: World, probe: Probe, monkeypatch: pytest.MonkeyPatch) -> None:
    """The revocation state is re-read, each time in a short transaction of its own, before
    and after reconcile puts a deny back; a restore that commits in between (while the put is
    on its way to IAM) wins: the deny comes off again and no drift is reported."""
    world.iam.create_user(UserName="alice")
    with world.db.session_scope() as s:
        directory.link_principal(s, world.clock, ADMIN, SubjectRef(name="alice"),
                                 f"arn:aws:iam::{ACCOUNT}:user/alice")
    access_flow.revoke_manual(world.services, ADMIN, SubjectRef(name="alice"), "test")
    world.iam.delete_user_policy(UserName="alice", PolicyName=policy_name("alice"))
    seen: list[tuple[bool, bool]] = []
    real = reconcile_rules.still_revoked

    def still_revoked(session: Any, subject_id: int, lock: bool) -> bool:
        seen.append((lock, real(session, subject_id, lock)))
        return seen[-1][1]

    monkeypatch.setattr(reconcile_rules, "still_revoked", still_revoked)
    world.services.overrides["iam"].before["put_user_policy"] = lambda: restore_elsewhere(world)
    probe.calls.clear()

    out = reconcile.run(world.services)

    assert out.ok, out.message
    assert seen == [(True, True), (True, False)]  # before the put, after it
    assert out.value.drifts == []
    assert world.iam.list_user_policies(UserName="alice")["PolicyNames"] == []
    assert probe.calls["put_user_policy"] == 1 and probe.calls["delete_user_policy"] == 1
    assert probe.violations == []


def restore_elsewhere(world: World) -> None:
    """What a restore commits first (the revocation lifted); its own IAM delete comes later."""
    with world.db.session_scope() as s:
        for rev in access_rules.active(s, directory.get(s, SubjectRef(name="alice")).id):
            rev.state = "restored"
