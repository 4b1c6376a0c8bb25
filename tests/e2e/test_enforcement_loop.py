"""Issue 3's loop from signed Slack requests against moto: limit → usage over → enforce →
deny policy on the IAM user → alert + DM → admin restore → policy gone, all audited."""

from __future__ import annotations

from datetime import timedelta

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent, Profile
from bot.services import audit
from jobs import usage_sync
from tests.harness import ALERTS, ALICE, BOB, reply_text, running_bot

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ALICE_ARN = "arn:aws:iam::123456789012:user/alice"


def _policies(iam: object) -> list[str]:
    return list(iam.list_user_policies(UserName="alice")["PolicyNames"])  # type: ignore[attr-defined]


def _traffic(cw: object, pid: str, at: object, tokens: int) -> None:
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[  # type: ignore[attr-defined]
        {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}],
         "Timestamp": at, "Value": value, "Unit": "Count"}
        for name, value in (("InputTokenCount", tokens), ("OutputTokenCount", tokens // 10),
                            ("Invocations", 10))])


def test_limit_breach_revoke_alert_restore(db: Database, clock: FixedClock) -> None:
    with mock_aws(), running_bot(db, clock) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        bot.services.overrides.update(iam=iam, cloudwatch=cw)
        iam.create_user(UserName="alice")

        bot.command(f"provision <@{ALICE}|alice> {MODEL}")
        bot.command(f"link <@{ALICE}|alice> {ALICE_ARN}")
        assert "needs the admin role" in reply_text(bot.command("limit alice 1M/day", user=BOB))
        assert "1M tokens/day" in reply_text(bot.command("limit alice 1M/day warn=50"))
        assert "1M" in reply_text(bot.command("limits alice"))

        with db.session_scope() as s:
            pid = s.scalars(select(Profile.profile_id)).one()
        _traffic(cw, pid, clock() - timedelta(minutes=20), 1_200_000)
        bot.slack.clear()
        assert usage_sync.run(bot.services).ok

        assert _policies(iam) == ["bedrock-bot-deny-alice"]
        doc = iam.get_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")
        statement = doc["PolicyDocument"]["Statement"][0]
        assert statement["Effect"] == "Deny" and statement["Resource"] == "*"
        posts = bot.slack.calls("chat.postMessage")
        alert = [c for c in posts if c.args["channel"] == ALERTS]
        dm = [c for c in posts if c.args["channel"] == f"D{ALICE}"]
        assert any("Access revoked" in reply_text(c.args) for c in alert)
        assert any("Request restore" in reply_text(c.args) for c in alert)
        assert any("Access revoked" in reply_text(c.args) for c in dm)
        # straight from 0 to 120%: one revocation message, not a 50% warning before it
        assert not any("50% of a limit" in reply_text(c.args) for c in alert)

        # a second run for the same breach does nothing again
        bot.slack.clear()
        assert usage_sync.run(bot.services).ok
        assert bot.slack.calls("chat.postMessage") == []

        status = reply_text(bot.command("usage today", user=ALICE))
        assert "Revoked" in status and "limit" in status, status
        # a non-admin's restore files a request for approval instead of restoring
        assert "with the admins" in reply_text(bot.command("restore alice please", user=ALICE))
        assert _policies(iam) == ["bedrock-bot-deny-alice"]
        assert "Restored" in reply_text(bot.command("restore alice approved in standup"))
        assert _policies(iam) == []
        # the restore holds for the rest of the window even though alice is still over
        assert usage_sync.run(bot.services).ok
        assert _policies(iam) == []

    with db.session_scope() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
        assert audit.verify(s).ok
    for expected in ("limit.set", "access.revoke", "limit.exception", "access.restore"):
        assert expected in actions, actions
    assert actions.index("access.revoke") < actions.index("access.restore")


@pytest.mark.parametrize("text", ["revoke nobody", "limit ghost 5M/week", "restore alice"])
def test_refusals_change_nothing(db: Database, clock: FixedClock, text: str) -> None:
    with mock_aws(), running_bot(db, clock) as bot:
        bot.services.overrides["iam"] = boto3.client("iam", region_name="us-east-1")
        reply = reply_text(bot.command(text))
        assert reply.startswith("⚠️") and ("no subject" in reply or "not revoked" in reply), reply
    with db.session_scope() as s:
        outcomes = [e.outcome for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert outcomes[-1] == "denied"
