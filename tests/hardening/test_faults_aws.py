"""AWS faults: throttling and timeouts are retried (standard mode, bounded); AccessDenied and
validation errors give a reply naming the AWS error, an `error` audit row and an unchanged
database; IAM and the database disagreeing after a crash is repaired by reconcile.

How faults are injected: tests/hardening/aws_faults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from bot.aws.access import IamAccess
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import AwsError
from bot.models import Revocation, Subject
from jobs import enforce, reconcile
from tests.hardening.aws_faults import Faults, bot_iam_client, iam_error, inject
from tests.hardening.conftest import (
    ACCOUNT,
    ALICE_ARN,
    MODEL,
    World,
    assert_chain_intact,
    audit_events,
    last_audit_id,
    snapshot,
)
from tests.harness import ALICE, reply_text, running_bot


@pytest.fixture
def iam_world(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    """The world, with the IAM client replaced by one built the bot's way."""
    client = bot_iam_client()
    world.bot.services.overrides["iam"] = client
    world.bot.services.__dict__.pop("access", None)  # rebuilt on next use with the new client
    world.iam = client
    return world


# ---- retries --------------------------------------------------------------------------------

def test_bot_clients_use_standard_retries_and_timeouts() -> None:
    cfg = bot_iam_client().meta.config
    assert cfg.retries["mode"] == "standard"
    assert cfg.connect_timeout == 5 and cfg.read_timeout == 20


# botocore reads Config(retries={"max_attempts": 5}) as five *retries*: six calls in all.
ATTEMPTS = 5  # total_max_attempts: the first call and four retries


def test_throttled_calls_are_tried_five_times_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = bot_iam_client()
        client.create_user(UserName="alice")
        faults = inject(client, Faults("PutUserPolicy", lambda: iam_error("Throttling", "Rate exceeded")),
                        monkeypatch)
        with pytest.raises(AwsError):
            IamAccess(client).deny(ALICE_ARN, "alice", None)
        assert faults.attempts == 5


def test_throttling_is_retried_with_backoff_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = bot_iam_client()
        client.create_user(UserName="alice")
        faults = inject(client, Faults("PutUserPolicy", lambda: iam_error("Throttling", "Rate exceeded"),
                                       times=3), monkeypatch)
        result = IamAccess(client).deny(ALICE_ARN, "alice", None)
        assert result.changed
        assert faults.attempts == 4  # three throttled, the fourth went through
        assert len(faults.delays) == 3 and all(0 <= d <= 20 for d in faults.delays)
        assert client.list_user_policies(UserName="alice")["PolicyNames"] == ["bedrock-bot-deny-alice"]


def test_throttling_gives_up_after_bounded_attempts_naming_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = bot_iam_client()
        client.create_user(UserName="alice")
        faults = inject(client, Faults("PutUserPolicy", lambda: iam_error("Throttling", "Rate exceeded")),
                        monkeypatch)
        with pytest.raises(AwsError) as err:
            IamAccess(client).deny(ALICE_ARN, "alice", None)
        assert faults.attempts == ATTEMPTS and len(faults.delays) == ATTEMPTS - 1
        assert err.value.code == "Throttling" and "PutUserPolicy" in str(err.value)


def test_read_timeouts_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = bot_iam_client()
        client.create_user(UserName="alice")
        faults = inject(client, Faults("PutUserPolicy",
                                       lambda: ReadTimeoutError(endpoint_url="https://iam.amazonaws.com/"),
                                       times=2), monkeypatch)
        assert IamAccess(client).deny(ALICE_ARN, "alice", None).changed
        assert faults.attempts == 3


def test_access_denied_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with mock_aws():
        client = bot_iam_client()
        client.create_user(UserName="alice")
        faults = inject(client, Faults("PutUserPolicy", lambda: iam_error("AccessDenied", "no", 403)),
                        monkeypatch)
        with pytest.raises(AwsError) as err:
            IamAccess(client).deny(ALICE_ARN, "alice", None)
        assert faults.attempts == 1 and err.value.code == "AccessDenied"


def test_throttled_revoke_from_slack_succeeds_after_retries(iam_world: World,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    w = iam_world
    faults = inject(w.iam, Faults("PutUserPolicy", lambda: iam_error("Throttling", "Rate exceeded"),
                                  times=2), monkeypatch)
    assert "Revoked" in reply_text(w.bot.command("revoke alice runaway job"))
    assert faults.attempts == 3
    assert w.policies() == ["bedrock-bot-deny-alice"]


# ---- errors that are not retried: a clear reply, an error row, nothing changed ---------------------

DENIED = ("AccessDenied", "User: arn:aws:iam::123456789012:user/bot is not authorized to perform: "
          "iam:PutUserPolicy", 403)
REVOKE_REPLY_BUG = (
    "bot/services/access.py:129-146 (revoke) now records the revocation as active even when IAM "
    "refused every deny (apply_deny collects the AwsError in `failed`; the audit row is `error`), "
    "and handlers/commands.py:205 (do_revoke) still answers '⛔ Revoked `alice` on 1 IAM "
    "principal(s).' and announces 'Access revoked' — the reply does not name AccessDenied/Throttling "
    "although nobody is denied (DESIGN §7: a clear message naming the AWS error)")
HALF_WRITTEN = (
    "bot/services/access.py:129-146 (revoke) keeps an active revocation although IAM refused the "
    "deny (the next enforce run retries it via reassert): the database says revoked while IAM says "
    "not — DESIGN §7 and the issue ask for no half-written state (no revocation row); if "
    "record-and-retry is the intended design, change §7/docs and this test")


def test_access_denied_on_revoke_is_named_in_the_reply(iam_world: World,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    w = iam_world
    mark = last_audit_id(w.db)
    inject(w.iam, Faults("PutUserPolicy", lambda: iam_error(*DENIED)), monkeypatch)
    text = reply_text(w.bot.command("revoke alice too much"))
    rows = audit_events(w.db, mark)
    assert [(e.action, e.outcome, e.actor) for e in rows][-1] == ("access.revoke", "error", "slack:UADMIN01")
    assert "AccessDenied" in rows[-1].details
    assert "Traceback" not in text
    assert "AccessDenied" in text and "PutUserPolicy" in text
    assert not any("Access revoked" in reply_text(c.args) for c in w.bot.slack.calls("chat.postMessage"))


def test_access_denied_on_revoke_changes_nothing(iam_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = iam_world
    before = snapshot(w.db)
    inject(w.iam, Faults("PutUserPolicy", lambda: iam_error(*DENIED)), monkeypatch)
    w.bot.command("revoke alice too much")
    assert w.policies() == []
    assert snapshot(w.db) == before


def test_throttling_exhausted_on_revoke_is_named_in_the_reply(iam_world: World,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    w = iam_world
    mark = last_audit_id(w.db)
    faults = inject(w.iam, Faults("PutUserPolicy", lambda: iam_error("Throttling", "Rate exceeded")),
                    monkeypatch)
    text = reply_text(w.bot.command("revoke alice"))
    assert faults.attempts == ATTEMPTS
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)] == [("access.revoke", "error")]
    assert "Throttling" in text


def test_a_failed_revoke_converges_once_iam_answers(iam_world: World,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Two principals, IAM refuses the user's deny. The role's deny, written first, is taken
    off again at once (a person's revoke is all or nothing), so IAM and the database agree
    right away — and still after the next enforce and reconcile runs once IAM answers."""
    w = iam_world
    w.iam.create_role(RoleName="alice-ci", AssumeRolePolicyDocument="{}")
    w.bot.command(f"link <@{ALICE}|alice> arn:aws:iam::{ACCOUNT}:role/alice-ci")
    faults = inject(w.iam, Faults("PutUserPolicy", lambda: iam_error(*DENIED)), monkeypatch)
    w.bot.command("revoke alice")
    assert w.iam.list_role_policies(RoleName="alice-ci")["PolicyNames"] == []
    with w.db.session_scope() as s:
        assert s.scalars(select(Revocation.state)).all() == []
    faults.times = 0  # IAM answers again
    enforce.run(w.bot.services)
    reconcile.run(w.bot.services)
    roles = w.iam.list_role_policies(RoleName="alice-ci")["PolicyNames"]
    with w.db.session_scope() as s:
        revoked = s.scalars(select(Revocation.state)).all() == ["active"]
    expected = ["bedrock-bot-deny-alice"] if revoked else []
    assert (w.policies(), roles) == (expected, expected)
    assert_chain_intact(w.db)


def test_access_denied_on_restore(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    w.bot.command("revoke alice")
    client = bot_iam_client()
    w.bot.services.overrides["iam"] = client
    w.bot.services.__dict__.pop("access", None)
    before, mark = snapshot(w.db), last_audit_id(w.db)
    inject(client, Faults("DeleteUserPolicy", lambda: iam_error("AccessDenied", "no delete", 403)),
           monkeypatch)
    text = reply_text(w.bot.command("restore alice"))
    assert "AccessDenied" in text and "DeleteUserPolicy" in text
    assert snapshot(w.db) == before
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)][-1] == ("access.restore", "error")
    assert w.policies() == ["bedrock-bot-deny-alice"]
    assert_chain_intact(w.db)


def test_validation_error_on_provision(db: Database, clock: FixedClock) -> None:
    with mock_aws(), running_bot(db, clock, BOT_PROFILES_BACKEND="aws") as bot:
        bedrock = boto3.client("bedrock", region_name="us-east-1")
        sts = boto3.client("sts", region_name="us-east-1")
        bot.services.overrides.update(bedrock=bedrock, sts=sts)
        before, mark = snapshot(db), last_audit_id(db)
        with Stubber(bedrock) as stub:
            stub.add_client_error(
                "create_inference_profile", service_error_code="ValidationException",
                service_message="1 validation error detected: Value at 'modelSource' failed to satisfy "
                                "constraint", http_status_code=400)
            text = reply_text(bot.command(f"provision <@{ALICE}|alice> {MODEL}"))
            stub.assert_no_pending_responses()
        assert "ValidationException" in text and "CreateInferenceProfile" in text
        assert snapshot(db) == before  # not even the subject alice, created in the same transaction
        with db.session_scope() as s:
            assert s.scalars(select(Subject)).all() == []
        rows = audit_events(db, mark)
        assert [(e.action, e.outcome) for e in rows] == [("profile.provision", "error")]
        assert_chain_intact(db)


# ---- IAM succeeded, the database commit did not ------------------------------------------------------

@pytest.fixture
def failing_commit(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """arm(action): the next commit of a transaction that queued an audit row for `action`
    (e.g. the one recording a revocation) raises as if the connection dropped at COMMIT.
    Without `action`, the very next commit does."""
    state: dict[str, Any] = {"armed": False, "action": None}
    real = Session.commit

    def commit(self: Session) -> None:
        queued = {p.action for p in self.info.get("audit_pending", [])}
        if state["armed"] and (state["action"] is None or state["action"] in queued):
            state["armed"] = False
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        real(self)

    def arm(action: str | None = None) -> None:
        state.update(armed=True, action=action)

    monkeypatch.setattr(Session, "commit", commit)
    return arm


def test_revoke_commit_fails_after_iam_then_reconcile_removes_stale_deny(
        world: World, failing_commit: Callable[..., None]) -> None:
    w = world
    before = snapshot(w.db)
    failing_commit("access.revoke")  # the transaction that records the revocation
    text = reply_text(w.bot.command("revoke alice"))
    assert text.startswith("⚠️") and "Traceback" not in text and "OperationalError" not in text
    assert w.policies() == ["bedrock-bot-deny-alice"]  # IAM has it, the database does not
    assert snapshot(w.db) == before

    out = reconcile.run(w.bot.services)
    assert out.ok and out.value is not None
    assert [(d.kind, d.target, d.action_taken) for d in out.value.drifts] == [
        ("deny_stale", ALICE_ARN, "removed")]
    assert w.policies() == []
    assert [e.action for e in audit_events(w.db)][-1] == "reconcile.deny_stale"
    assert_chain_intact(w.db)


def test_restore_commit_fails_after_iam_then_reconcile_puts_deny_back(
        world: World, failing_commit: Callable[..., None]) -> None:
    w = world
    w.bot.command("revoke alice")
    assert w.policies() == ["bedrock-bot-deny-alice"]
    failing_commit("access.restore")  # the transaction that records the restore
    assert reply_text(w.bot.command("restore alice")).startswith("⚠️")
    assert w.policies() == []  # IAM lifted it, the database still says revoked
    with w.db.session_scope() as s:
        assert s.scalars(select(Revocation.state)).all() == ["active"]

    out = reconcile.run(w.bot.services)
    assert out.ok and out.value is not None
    assert [(d.kind, d.action_taken) for d in out.value.drifts] == [("deny_missing", "restored")]
    assert w.policies() == ["bedrock-bot-deny-alice"]
    assert_chain_intact(w.db)


def test_commit_failure_leaves_an_error_audit_row(world: World, failing_commit: Callable[..., None]) -> None:
    mark = last_audit_id(world.db)
    failing_commit()
    world.bot.command("revoke alice")
    assert [(e.action, e.outcome) for e in audit_events(world.db, mark)] == [("access.revoke", "error")]
