"""Reconcile against a real database (SQLite and PostgreSQL), moto's IAM and the local AIP
registry: deny policies removed outside the bot come back and the alert channel says so, stale
denies (an IAM write whose database commit failed) come off, recorded AIPs missing in AWS are
marked MISSING, bot-managed AIPs unknown to the database are reported and never deleted, one
principal's AWS error does not stop the others, and a clean run posts nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from sqlalchemy import delete, select

from bot.aws.access import IamAccess, deny_document, policy_name
from bot.aws.enforcement import SESSIONS_POLICY
from bot.aws.local_registry import LocalInferenceProfile
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import AwsError
from bot.flows import access as access_flow
from bot.models import AuditEvent, Principal, Profile, Revocation
from bot.render.reconcile import reconcile_message
from bot.services import audit, directory
from bot.services.directory import Actor, SubjectRef
from bot.services.reconcile import (
    DENY_MISSING,
    DENY_STALE,
    DENY_UNKNOWN,
    IAM_ERROR,
    NOT_BLOCKABLE,
    PROFILE_FOUND,
    PROFILE_MISSING,
    PROFILE_UNRECORDED,
    PROFILES_ERROR,
    Drift,
    ReconcileReport,
)
from jobs import reconcile as job
from tests.aips import provision_aip
from tests.harness import ALERTS, ALICE, BOB, Harness, reply_text, running_bot

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"
ADMIN = Actor.slack("UADMIN01")
CAROL = "UCAROL01"


def arn_of(user: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{user}"


@dataclass
class World:
    bot: Harness
    db: Database
    clock: FixedClock
    iam: Any  # the boto3 IAM client (moto)
    backend: LocalProfiles

    @property
    def access(self) -> IamAccess:
        return self.bot.services.access

    def user(self, name: str, slack_id: str) -> str:
        """An IAM user linked to a user subject."""
        self.iam.create_user(UserName=name)
        with self.db.session_scope() as s:
            directory.bootstrap_admins(s, self.clock, ["UADMIN01"])
            directory.link_principal(s, self.clock, ADMIN, SubjectRef(name=name, slack_user_id=slack_id),
                                     arn_of(name))
        return arn_of(name)

    def revoke(self, name: str) -> None:
        """Through the access flow; its announcement is cleared so tests see reconcile's alone."""
        access_flow.revoke_manual(self.bot.services, ADMIN, SubjectRef(name=name), "test")
        self.bot.slack.clear()

    def policies(self, user: str) -> list[str]:
        return list(self.iam.list_user_policies(UserName=user)["PolicyNames"])

    def put_by_hand(self, user: str, subject: str) -> None:
        self.iam.put_user_policy(UserName=user, PolicyName=policy_name(subject),
                                 PolicyDocument=json.dumps(deny_document(None)))

    def provision(self, name: str) -> Profile:
        made = provision_aip(self.db, self.clock, self.backend, REGION, ADMIN, SubjectRef(name=name), HAIKU)
        with self.db.session_scope() as s:
            return s.scalars(select(Profile).where(Profile.arn == made.arn)).one()

    def run(self) -> ReconcileReport:
        out = job.run(self.bot.services)
        assert out.ok and out.value is not None, out.message
        return out.value

    def alerts(self) -> list[dict[str, Any]]:
        return [c.args for c in self.bot.slack.calls("chat.postMessage") if c.args.get("channel") == ALERTS]

    def audit_rows(self, prefix: str = "reconcile.") -> list[AuditEvent]:
        with self.db.session_scope() as s:
            return [e for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))
                    if e.action.startswith(prefix)]

    def verify(self) -> None:
        with self.db.session_scope() as s:
            result = audit.verify(s)
        assert result.ok, result.reason


@contextmanager
def world_for(db: Database, clock: FixedClock, **extra: str) -> Iterator[World]:
    with mock_aws(), running_bot(db, clock, **extra) as bot:
        iam = boto3.client("iam", region_name=REGION)
        backend = LocalProfiles(db, REGION, ACCOUNT, clock)
        bot.services.overrides.update(iam=iam, profiles=backend)
        yield World(bot, db, clock, iam, backend)


@pytest.fixture
def world(db: Database, clock: FixedClock) -> Iterator[World]:
    with world_for(db, clock) as w:
        yield w


def kinds(report: ReconcileReport) -> list[tuple[str, str | None, str]]:
    return [(d.kind, d.subject, d.action_taken) for d in report.drifts]


# ---------------------------------------------------------------- deny policies


def test_deny_removed_outside_the_bot_is_put_back_and_announced(world: World) -> None:
    world.user("alice", ALICE)
    world.revoke("alice")
    assert world.policies("alice") == ["bedrock-bot-deny-alice"]
    world.iam.delete_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")  # by hand

    report = world.run()

    assert world.policies("alice") == ["bedrock-bot-deny-alice"]
    doc = world.iam.get_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")["PolicyDocument"]
    assert doc["Statement"][0]["Effect"] == "Deny" and doc["Statement"][0]["Resource"] == "*"
    assert kinds(report) == [(DENY_MISSING, "alice", "restored")]
    assert report.drifts[0].target == arn_of("alice")
    [alert] = world.alerts()
    said = reply_text(alert)
    assert "alice" in said and "restored" in said and "Deny policy missing" in said, said
    rows = world.audit_rows()
    assert [(r.action, r.actor, r.target, r.outcome) for r in rows] == [
        ("reconcile.deny_missing", "system:reconcile", "user:alice", "ok")]
    assert json.loads(rows[0].details)["principal"] == arn_of("alice")
    world.verify()

    world.bot.slack.clear()  # the next run finds nothing: no post, no audit row
    assert world.run().drifts == []
    assert world.alerts() == [] and len(world.audit_rows()) == 1


def test_restore_whose_commit_failed_is_repaired(world: World) -> None:
    """A restore's IAM delete went through, its database change did not: still active."""
    world.user("alice", ALICE)
    world.revoke("alice")
    world.access.allow(arn_of("alice"), "alice")  # the IAM half of a restore, nothing recorded
    assert world.policies("alice") == []

    report = world.run()
    assert kinds(report) == [(DENY_MISSING, "alice", "restored")]
    assert world.policies("alice") == ["bedrock-bot-deny-alice"]
    world.verify()


def test_revoke_whose_commit_failed_is_undone(world: World) -> None:
    """IAM put went through, the database commit did not: bob must not stay denied."""
    world.user("alice", ALICE)
    world.user("bob", BOB)
    world.revoke("alice")
    world.access.deny(arn_of("bob"), "bob", None)  # the IAM half of a revoke, nothing recorded
    assert world.policies("bob") == ["bedrock-bot-deny-bob"]

    report = world.run()
    assert kinds(report) == [(DENY_STALE, "bob", "removed")]
    assert world.policies("bob") == []
    assert world.policies("alice") == ["bedrock-bot-deny-alice"]  # alice's is right: untouched
    said = reply_text(world.alerts()[0])
    assert "bob" in said and "removed" in said and "without an active revocation" in said, said
    assert [r.action for r in world.audit_rows()] == ["reconcile.deny_stale"]
    world.verify()


def test_stale_deny_put_by_hand_is_removed_and_others_kept(world: World) -> None:
    world.user("alice", ALICE)
    world.user("bob", BOB)
    world.iam.put_user_policy(UserName="bob", PolicyName="own-policy",
                              PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                  {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}))
    world.put_by_hand("bob", "bob")  # bob's own deny, no revocation
    world.put_by_hand("bob", "alice")  # alice's deny on bob's principal, alice not revoked either
    world.put_by_hand("bob", "ghost")  # a subject the database does not know

    report = world.run()

    assert sorted(kinds(report)) == [
        (DENY_STALE, "alice", "removed"), (DENY_STALE, "bob", "removed"),
        (DENY_UNKNOWN, None, "reported (left in place)")]
    assert sorted(world.policies("bob")) == ["bedrock-bot-deny-ghost", "own-policy"]
    world.verify()


def test_stale_deny_on_a_principal_known_only_from_a_revocation(world: World) -> None:
    """An unlinked principal is still reached through `revocations.principals`."""
    bob_arn = world.user("bob", BOB)
    world.revoke("bob")
    access_flow.restore_manual(world.bot.services, ADMIN, SubjectRef(name="bob"), "")
    with world.db.session_scope() as s:
        s.execute(delete(Principal).where(Principal.arn == bob_arn))
    world.put_by_hand("bob", "bob")

    report = world.run()
    assert kinds(report) == [(DENY_STALE, "bob", "removed")]
    assert world.policies("bob") == []


def test_aws_error_on_one_principal_does_not_stop_the_others(world: World) -> None:
    world.user("alice", ALICE)
    world.user("bob", BOB)
    world.user("carol", CAROL)
    world.revoke("alice")
    world.revoke("bob")
    for name in ("alice", "bob"):
        world.iam.delete_user_policy(UserName=name, PolicyName=policy_name(name))
    world.put_by_hand("carol", "carol")

    def refuse_alice(params: dict[str, Any], **_: Any) -> None:
        if params.get("UserName") == "alice":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not for alice"}},
                              "GetUserPolicy")

    world.iam.meta.events.register("provide-client-params.iam.*", refuse_alice)
    try:
        report = world.run()
    finally:
        world.iam.meta.events.unregister("provide-client-params.iam.*", refuse_alice)

    assert kinds(report) == [(IAM_ERROR, "alice", "failed: AccessDenied"),
                             (DENY_MISSING, "bob", "restored"), (DENY_STALE, "carol", "removed")]
    assert [d.target for d in report.failures] == [arn_of("alice")]  # reported once, not twice
    assert world.policies("bob") == ["bedrock-bot-deny-bob"] and world.policies("carol") == []
    assert world.policies("alice") == []
    outcomes = [(r.target, r.outcome) for r in world.audit_rows()]
    assert outcomes == [("user:alice", "error"), ("user:bob", "ok"), ("user:carol", "ok")]
    said = reply_text(world.alerts()[0])
    assert "failed: AccessDenied" in said and "tries again" in said, said
    world.verify()

    world.bot.slack.clear()  # IAM lets the bot in again: the next run finishes the job
    assert kinds(world.run()) == [(DENY_MISSING, "alice", "restored")]
    assert world.policies("alice") == ["bedrock-bot-deny-alice"]


def test_put_refused_is_a_failed_restore(world: World) -> None:
    world.user("alice", ALICE)
    world.revoke("alice")
    world.iam.delete_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")

    def refuse_put(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutUserPolicy")

    world.iam.meta.events.register("provide-client-params.iam.PutUserPolicy", refuse_put)
    try:
        report = world.run()
    finally:
        world.iam.meta.events.unregister("provide-client-params.iam.PutUserPolicy", refuse_put)
    assert kinds(report) == [(DENY_MISSING, "alice", "failed: AccessDenied")]
    assert [(r.action, r.outcome) for r in world.audit_rows()] == [("reconcile.deny_missing", "error")]
    world.verify()


def test_principal_deleted_in_iam_is_reported(world: World) -> None:
    world.user("alice", ALICE)
    world.user("bob", BOB)
    world.revoke("alice")
    world.iam.delete_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")
    world.iam.delete_user(UserName="alice")
    world.put_by_hand("bob", "bob")
    world.iam.delete_user_policy(UserName="bob", PolicyName="bedrock-bot-deny-bob")
    world.iam.delete_user(UserName="bob")

    report = world.run()
    # IAM answers "no such policy" for a user that is gone; the put then names the real cause.
    assert kinds(report) == [(DENY_MISSING, "alice", "failed: NoSuchEntity"),
                             (IAM_ERROR, None, "failed: NoSuchEntity")]
    world.verify()


def test_dry_run_reports_without_touching_iam(db: Database, clock: FixedClock) -> None:
    with world_for(db, clock, BOT_DRY_RUN="1") as world:
        world.user("alice", ALICE)
        world.user("bob", BOB)
        world.revoke("alice")  # a revocation made while dry: nothing in IAM
        world.put_by_hand("bob", "bob")

        report = world.run()
        assert kinds(report) == [(DENY_MISSING, "alice", "would be restored (dry run)"),
                                 (DENY_STALE, "bob", "would be removed (dry run)")]
        assert world.policies("alice") == [] and world.policies("bob") == ["bedrock-bot-deny-bob"]
        assert "IAM was not changed" in reply_text(world.alerts()[0])


# ---------------------------------------------------------------- inference profiles


def test_profile_deleted_in_aws_is_marked_missing_never_deleted(world: World) -> None:
    made = world.provision("alice")
    with world.db.session_scope() as s:
        kept = s.get(LocalInferenceProfile, made.profile_id)
        assert kept is not None
        s.expunge(kept)
    world.backend.delete(made.arn)  # deleted in the console

    report = world.run()
    assert kinds(report) == [(PROFILE_MISSING, "alice", "marked MISSING")]
    with world.db.session_scope() as s:
        row = s.scalars(select(Profile).where(Profile.arn == made.arn)).one()
        assert row.status == "MISSING"
    said = reply_text(world.alerts()[0])
    assert made.arn in said and "marked MISSING" in said, said
    assert [(r.action, r.target) for r in world.audit_rows()] == [("reconcile.profile_missing", "user:alice")]

    world.bot.slack.clear()  # reported once, not every hour
    assert world.run().drifts == [] and world.alerts() == []

    with world.db.session_scope() as s:  # it comes back (restored from a backup, say)
        s.merge(kept)
    assert kinds(world.run()) == [(PROFILE_FOUND, "alice", "marked ACTIVE")]
    with world.db.session_scope() as s:
        assert s.scalars(select(Profile.status).where(Profile.arn == made.arn)).one() == "ACTIVE"
    world.verify()


def test_unrecorded_managed_profile_is_reported_not_deleted(world: World) -> None:
    world.provision("alice")  # recorded: fine
    orphan = world.backend.create("orphan-haiku", HAIKU_ARN, {"managed-by": "bedrock-bot"}, "", "")
    tagged = world.backend.create("carol-haiku", HAIKU_ARN, {"managed-by": "bedrock-bot", "user": "carol"},
                                  "", "")
    world.backend.create("console-haiku", HAIKU_ARN, {"user": "dave"}, "", "")  # usage sync adopts it
    world.backend.create("untagged", HAIKU_ARN, {}, "", "")  # nobody's: ignored

    report = world.run()

    assert kinds(report) == [(PROFILE_UNRECORDED, "carol", "reported (not deleted)"),
                             (PROFILE_UNRECORDED, None, "reported (not deleted)")]  # by name
    assert [d.target for d in report.drifts] == [tagged.arn, orphan.arn]
    assert "usage sync adopts it (user=carol)" in report.drifts[0].detail
    assert "nothing adopts it" in report.drifts[1].detail
    assert world.backend.get(orphan.arn) is not None and world.backend.get(tagged.arn) is not None
    with world.db.session_scope() as s:
        assert s.scalars(select(Profile.arn).where(Profile.arn == orphan.arn)).first() is None
    said = reply_text(world.alerts()[0])
    assert orphan.arn in said and "not deleted" in said, said
    assert [r.action for r in world.audit_rows()] == ["reconcile.profile_unrecorded"] * 2
    world.verify()


def test_profile_list_failure_is_reported_and_iam_still_checked(world: World) -> None:
    world.user("alice", ALICE)
    world.revoke("alice")
    world.iam.delete_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")
    world.provision("alice")

    class Down:
        def list_application(self) -> list[Any]:
            raise AwsError("ListInferenceProfiles", "ThrottlingException", "slow down")

    world.bot.services.overrides["profiles"] = Down()
    world.bot.services.__dict__.pop("profiles", None)  # drop the cached backend
    report = world.run()
    assert kinds(report) == [(DENY_MISSING, "alice", "restored"),
                             (PROFILES_ERROR, None, "failed: ThrottlingException")]
    with world.db.session_scope() as s:  # nothing marked MISSING on a failed list
        assert s.scalars(select(Profile.status)).all() == ["ACTIVE"]


# ---------------------------------------------------------------- clean runs and rendering


def test_no_drift_no_post(world: World) -> None:
    world.user("alice", ALICE)
    world.user("bob", BOB)
    world.revoke("alice")
    world.provision("alice")
    world.bot.slack.clear()

    report = world.run()

    assert report.drifts == []
    assert report.revoked_subjects == 1 and report.principals_checked == 2 and report.profiles_listed == 1
    assert world.bot.slack.calls("chat.postMessage") == []
    assert world.audit_rows() == []
    with world.db.session_scope() as s:
        rev = s.scalars(select(Revocation)).one()
        assert rev.principals == [arn_of("alice")]
    world.verify()


def test_message_stays_within_slack_limits() -> None:
    assert reconcile_message(ReconcileReport()) is None
    drifts = [Drift(DENY_STALE, f"user{i:04d}", arn_of(f"user{i:04d}") + "x" * 100, "removed")
              for i in range(500)]
    drifts += [Drift(kind, "s", "t", "failed: AccessDenied", "<@U123> & `x`") for kind in
               (DENY_MISSING, IAM_ERROR, PROFILE_MISSING, PROFILE_UNRECORDED, "something_new")]
    message = reconcile_message(ReconcileReport(drifts=drifts))
    assert message is not None
    text, blocks = message
    assert 2 <= len(blocks) <= 50 and len(text) <= 3000
    for block in blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    flat = json.dumps(blocks)
    assert "more (`/bedrock audit`)" in flat and "something_new" in flat
    assert "<@U123>" not in flat and "&lt;@U123&gt;" in flat  # no pings from AWS-side text


def _session_world(world: World, role: str, path: str = "/") -> str:
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}}]})
    world.iam.create_role(RoleName=role, Path=path, AssumeRolePolicyDocument=trust)
    arn = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/alice"
    with world.db.session_scope() as s:
        directory.bootstrap_admins(s, world.clock, ["UADMIN01"])
        directory.link_principal(s, world.clock, ADMIN, SubjectRef(name="alice", slack_user_id=ALICE), arn)
    return arn


def test_a_session_entry_removed_by_hand_is_put_back(world: World) -> None:
    arn = _session_world(world, "data-science")
    world.revoke("alice")
    world.iam.delete_role_policy(RoleName="data-science", PolicyName=SESSIONS_POLICY)
    report = world.run()
    assert kinds(report) == [(DENY_MISSING, "alice", "restored")]
    assert report.drifts[0].target == arn
    assert world.iam.list_role_policies(RoleName="data-science")["PolicyNames"] == [SESSIONS_POLICY]
    assert world.run().drifts == []  # in place now: nothing more
    world.verify()


def test_an_sso_session_no_method_can_block_is_reported_each_run(world: World) -> None:
    _session_world(world, "AWSReservedSSO_Dev_0a1b", "/aws-reserved/sso.amazonaws.com/")
    world.revoke("alice")
    for _ in range(2):
        report = world.run()
        assert kinds(report) == [(NOT_BLOCKABLE, "alice", "reported")]
    assert world.iam.list_role_policies(RoleName="AWSReservedSSO_Dev_0a1b")["PolicyNames"] == []
