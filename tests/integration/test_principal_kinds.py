"""Linking every principal kind, revoking with the method each needs, honest outcomes, unlink
and check — on SQLite and PostgreSQL, with moto's IAM."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.aws.enforcement import SESSIONS_POLICY, sessions_document
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput
from bot.flows import access as access_flow
from bot.flows import directory as directory_flow
from bot.models import AuditEvent, Principal, Revocation
from bot.render.enforcement import block_summary, check_text, manual_revoke_message
from bot.runtime import Services
from bot.services import directory
from bot.services.directory import Actor, SubjectRef
from tests.fakes.services import make_services

ACCOUNT, REGION = "123456789012", "us-east-1"
ADMIN = Actor.slack("UADMIN01")
SSO_ROLE = "AWSReservedSSO_Developers_0a1b2c3d4e5f"
SSO_PATH = "/aws-reserved/sso.amazonaws.com/eu-west-1/"
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}]})
ALICE = SubjectRef(name="alice", slack_user_id="UALICE01")
CAROL = SubjectRef(name="carol", slack_user_id="UCAROL01")


def sts(role: str, session: str) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"


@pytest.fixture
def iam() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("iam", region_name=REGION)
        client.create_role(RoleName="data-science", AssumeRolePolicyDocument=TRUST)
        client.create_role(RoleName=SSO_ROLE, Path=SSO_PATH, AssumeRolePolicyDocument=TRUST)
        yield client


def services(db: Database, clock: FixedClock, iam: Any, **env: str) -> Services:
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
    return make_services(db, clock, iam, **env)


def audits(db: Database, action: str) -> list[AuditEvent]:
    with db.session_scope() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_link_records_the_kind_and_refuses_a_whole_sso_role(
        db: Database, clock: FixedClock, iam: Any) -> None:
    s = services(db, clock, iam)
    directory_flow.link(s, ADMIN, ALICE, sts("data-science", "alice"))
    directory_flow.link(s, ADMIN, ALICE, sts(SSO_ROLE, "alice@example.com"))
    directory_flow.link(s, ADMIN, ALICE, f"arn:aws:iam::{ACCOUNT}:user/BedrockAPIKey_abc1")
    with pytest.raises(BadInput, match="link one session instead"):
        directory_flow.link(s, ADMIN, CAROL, f"arn:aws:iam::{ACCOUNT}:role{SSO_PATH}{SSO_ROLE}")
    with db.session_scope() as session:
        kinds = {p.arn: p.kind for p in session.scalars(select(Principal))}
    assert kinds == {sts("data-science", "alice"): "session", sts(SSO_ROLE, "alice@example.com"): "sso",
                     f"arn:aws:iam::{ACCOUNT}:user/BedrockAPIKey_abc1": "apikey"}
    assert [json.loads(e.details)["kind"] for e in audits(db, "principal.link") if e.outcome == "ok"] == [
        "session", "sso", "apikey"]


def test_an_sso_session_with_no_method_is_never_shown_revoked(
        db: Database, clock: FixedClock, iam: Any) -> None:
    s = services(db, clock, iam)
    directory_flow.link(s, ADMIN, ALICE, sts(SSO_ROLE, "alice@example.com"))
    view = access_flow.revoke_manual(s, ADMIN, SubjectRef(name="alice"), "over budget")
    assert not view.blocked and [b.method for b in view.not_blocked] == ["none"]
    reply = block_summary(view)
    assert "NOT blocked" in reply and "Revoked" not in reply
    assert "⚠ alice: SSO session" in reply and "no method configured" in reply
    assert "docs/enforcement.md" in reply
    _, blocks = manual_revoke_message(view, "UADMIN01")
    assert "NOT blocked" in json.dumps(blocks) and "Access revoked" not in json.dumps(blocks)
    [row] = audits(db, "access.revoke")
    assert row.outcome == "error" and json.loads(row.details)["not_blocked"] == {
        sts(SSO_ROLE, "alice@example.com"): view.not_blocked[0].reason}
    assert iam.list_role_policies(RoleName=SSO_ROLE)["PolicyNames"] == []  # never written
    with db.session_scope() as session:  # recorded, so enforce retries once a method is configured
        [rev] = session.scalars(select(Revocation))
        assert rev.state == "active"
        assert rev.enforcement[sts(SSO_ROLE, "alice@example.com")]["blocked"] is False


def test_session_revoke_restore_and_unlink(
        db: Database, clock: FixedClock, iam: Any) -> None:
    role_id = iam.get_role(RoleName="data-science")["Role"]["RoleId"]
    s = services(db, clock, iam)
    directory_flow.link(s, ADMIN, ALICE, sts("data-science", "alice"))
    directory_flow.link(s, ADMIN, CAROL, sts("data-science", "carol"))
    view = access_flow.revoke_manual(s, ADMIN, SubjectRef(name="alice"), "")
    assert view.blocked and [b.method for b in view.blocks] == ["session-deny"]
    assert "⛔ Revoked `alice`: 1 principal(s) blocked" in block_summary(view)

    def held() -> Any:
        raw = iam.get_role_policy(RoleName="data-science", PolicyName=SESSIONS_POLICY)["PolicyDocument"]
        return raw if isinstance(raw, dict) else json.loads(raw)

    assert held() == sessions_document([f"{role_id}:alice"])  # carol untouched
    access_flow.revoke_manual(s, ADMIN, SubjectRef(name="carol"), "")
    assert held() == sessions_document([f"{role_id}:alice", f"{role_id}:carol"])

    access_flow.restore_manual(s, ADMIN, SubjectRef(name="carol"), "")
    assert held() == sessions_document([f"{role_id}:alice"])

    plan = access_flow.unlink(s, ADMIN, SubjectRef(name="alice"), sts("data-science", "alice"))
    assert plan.held_by == ("alice",)
    assert iam.list_role_policies(RoleName="data-science")["PolicyNames"] == []
    [row] = audits(db, "principal.unlink")
    assert json.loads(row.details) == {"arn": sts("data-science", "alice"), "kind": "session",
                                       "deny_removed": True}
    with db.session_scope() as session:
        assert session.scalar(select(Principal).where(Principal.arn == sts("data-science", "alice"))) is None
        [rev] = session.scalars(select(Revocation).where(Revocation.state == "active"))
        assert rev.principals == [] and rev.enforcement == {}
    with pytest.raises(BadInput, match="not linked to alice"):
        access_flow.unlink(s, ADMIN, SubjectRef(name="alice"), sts("data-science", "alice"))


def test_unlink_waits_for_the_subjects_access_lock(
        db: Database, clock: FixedClock, iam: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlink is an access change: while a revoke/restore of the subject holds its lock (on
    another thread, process or replica), unlink does not interleave; it gives up with a reason
    and changes nothing."""
    import threading

    from bot.flows import locks

    s = services(db, clock, iam)
    arn = sts("data-science", "alice")
    directory_flow.link(s, ADMIN, ALICE, arn)
    access_flow.revoke_manual(s, ADMIN, SubjectRef(name="alice"), "")
    with db.session_scope() as session:
        alice_id = directory.get(session, SubjectRef(name="alice")).id
    monkeypatch.setattr(locks, "WAIT", 0.2)
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with locks.subject(db, clock, alice_id):
            taken.set()
            done.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)
        with pytest.raises(locks.Busy):
            access_flow.unlink(s, ADMIN, SubjectRef(name="alice"), arn)
    finally:
        done.set()
        holder.join(10)
    assert iam.list_role_policies(RoleName="data-science")["PolicyNames"] == [SESSIONS_POLICY]
    with db.session_scope() as session:
        assert session.scalar(select(Principal).where(Principal.arn == arn)) is not None
    assert access_flow.unlink(s, ADMIN, SubjectRef(name="alice"), arn).held_by == ("alice",)


def test_check_names_kind_method_and_what_is_missing(
        db: Database, clock: FixedClock, iam: Any) -> None:
    s = services(db, clock, iam)
    directory_flow.link(s, ADMIN, ALICE, sts(SSO_ROLE, "alice@example.com"))
    directory_flow.link(s, ADMIN, ALICE, f"arn:aws:iam::{ACCOUNT}:user/alice")
    directory_flow.link(s, ADMIN, CAROL, sts("data-science", "carol"))
    [alice] = access_flow.check(s, ADMIN, SubjectRef(name="alice"))
    assert not alice.blockable
    assert [(m.kind, m.method, m.would_block) for _, m in alice.methods] == [
        ("user", "inline-deny", True), ("sso", "none", False)]
    text = check_text([alice])
    assert "would NOT be fully blocked" in text and "missing: no method configured" in text
    tagged = services(db, clock, iam, BOT_SSO_METHOD="tags")
    everyone = access_flow.check(tagged, ADMIN, None)
    assert [(c.subject, c.blockable) for c in everyone] == [("alice", True), ("carol", True)]
    with pytest.raises(Exception, match="admin"):
        access_flow.check(s, Actor.slack("UCAROL01"), SubjectRef(name="alice"))


def test_reassert_blocks_a_session_linked_after_the_revoke_and_reports_unblockable_once(
        db: Database, clock: FixedClock, iam: Any) -> None:
    role_id = iam.get_role(RoleName="data-science")["Role"]["RoleId"]
    s = services(db, clock, iam)
    directory_flow.link(s, ADMIN, ALICE, sts(SSO_ROLE, "alice@example.com"))
    directory_flow.link(s, ADMIN, ALICE, f"arn:aws:iam::{ACCOUNT}:user/alice")
    iam.create_user(UserName="alice")
    access_flow.revoke_manual(s, ADMIN, SubjectRef(name="alice"), "")
    directory_flow.link(s, ADMIN, ALICE, sts("data-science", "alice"))
    assert access_flow.reassert(s) == ["alice"]
    raw = iam.get_role_policy(RoleName="data-science", PolicyName=SESSIONS_POLICY)["PolicyDocument"]
    assert (raw if isinstance(raw, dict) else json.loads(raw)) == sessions_document([f"{role_id}:alice"])
    assert access_flow.reassert(s) == []
    # the SSO session was reported by the revoke itself; re-assert does not repeat it each run
    assert not [e for e in audits(db, "access.reassert") if "not_blocked" in json.loads(e.details)]
    with db.session_scope() as session:
        [rev] = session.scalars(select(Revocation))
        assert rev.enforcement[sts("data-science", "alice")] == {
            "kind": "session", "method": "session-deny", "blocked": True}
