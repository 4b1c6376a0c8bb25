"""Signed slash commands through the real Bolt App.dispatch, against local AIPs and moto."""

from __future__ import annotations

import time
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
from tests.fakes.signing import slash_command_body
from tests.harness import ADMIN, ALERTS, ALICE, BOB, SECRET, reply_text, running_bot

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def test_provision_then_usage_from_cloudwatch(db: Database, clock: FixedClock) -> None:
    with mock_aws(), running_bot(db, clock) as bot:
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        bot.services.overrides["cloudwatch"] = cw

        reply = bot.command(f"provision <@{ALICE}|alice> {MODEL} cost-center=ml")
        text = reply_text(reply)
        assert "application-inference-profile/" in text, text
        with db.session_scope() as s:
            profile = s.scalars(select(Profile)).one()
            assert profile.tags == {"user": "alice", "managed-by": "bedrock-bot",
                                    "cost-center": "ml"}
            pid = profile.profile_id
        assert profile.arn in text
        assert bot.slack.wait_for("chat.postMessage")[0].args["channel"] == ALERTS

        hour = clock().replace(minute=0, second=0, microsecond=0)
        for name, value in (("InputTokenCount", 12_000), ("OutputTokenCount", 3_400),
                            ("Invocations", 7)):
            cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[{
                "MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}],
                "Timestamp": hour + timedelta(minutes=5), "Value": value, "Unit": "Count"}])
        assert usage_sync.run(bot.services).ok

        text = reply_text(bot.command(f"usage <@{ALICE}|alice> today"))
        assert "12k" in text and "3.4k" in text, text

        # alice may see her own usage; bob (not an admin) may not see alice's
        assert "12k" in reply_text(bot.command("usage today", user=ALICE))
        refused = reply_text(bot.command(f"usage <@{ALICE}>", user=BOB))
        assert "your own usage" in refused and "12k" not in refused

    with db.session_scope() as s:
        denied = s.scalars(select(AuditEvent).where(AuditEvent.outcome == "denied")).all()
        assert [e.action for e in denied] == ["usage.view"]
        assert denied[0].actor == f"slack:{BOB}"
        assert audit.verify(s).ok


def test_non_admin_cannot_provision(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock) as bot:
        text = reply_text(bot.command(f"provision <@{BOB}|bob> {MODEL}", user=BOB))
        assert "needs the admin role" in text
    with db.session_scope() as s:
        assert s.scalars(select(Profile)).all() == []
        ev = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert ev is not None and ev.outcome == "denied" and ev.action == "profile.provision"


def test_bad_text_gets_reason_and_usage(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock) as bot:
        text = reply_text(bot.command("provision <@UALICE01|alice> not/a model!"))
        assert "Usage: `/bedrock provision" in text
        text = reply_text(bot.command("teleport me"))
        assert "unknown subcommand" in text and "/bedrock help" in text


def test_team_link_profiles_admins(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock) as bot:
        assert "added to" in reply_text(bot.command(f"team team-eng add <@{ALICE}|alice> <@{BOB}|bob>"))
        assert "Linked" in reply_text(bot.command(
            f"link <@{ALICE}|alice> arn:aws:iam::123456789012:user/alice"))
        bot.command(f"provision team-eng {MODEL}")
        listed = reply_text(bot.command("profiles team-eng"))
        assert "team-eng" in listed and "application-inference-profile/" in listed
        assert "is now approver" in reply_text(bot.command(f"admins add <@{BOB}> approver"))
        assert "needs the owner role" in reply_text(bot.command(f"admins add <@{ALICE}>", user=BOB))
        assert "approver" in reply_text(bot.command("admins", user=ALICE))
        # team members may see their team's usage
        assert "Bedrock usage: team-eng" in reply_text(bot.command("usage team-eng", user=ALICE))


@pytest.mark.parametrize("case", ["forged", "unsigned", "stale"])
def test_bad_signatures_get_401_and_run_nothing(db: Database, clock: FixedClock, case: str) -> None:
    with running_bot(db, clock) as bot:
        body = slash_command_body(f"provision <@{ALICE}|alice> {MODEL}", user_id=ADMIN,
                                  response_url=bot.slack.response_url("x"))
        from tests.fakes.signing import signed_headers
        headers = signed_headers(SECRET, body)
        if case == "forged":
            headers = signed_headers("wrong-secret", body)
        elif case == "unsigned":
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        else:
            headers = signed_headers(SECRET, body, int(time.time()) - 301)
        assert bot.dispatch(body, headers=headers).status == 401
        bot.settle()  # had a listener started, it would have finished by now
        assert bot.slack.calls() == []  # no reply, no announcement
    with db.session_scope() as s:
        assert s.scalars(select(Profile)).all() == []
        assert [e.action for e in s.scalars(select(AuditEvent))] == ["admins.bootstrap"]


def test_audit_and_meter_commands(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock, BOT_METADATA_KEYS="userId") as bot:
        assert "now counts for" in reply_text(bot.command(f"meter userId=u-123 <@{ALICE}|alice>"))
        assert "needs the admin role" in reply_text(bot.command(f"meter userId=u-9 <@{BOB}|bob>", user=BOB))
        text = reply_text(bot.command("audit alice 5"))
        assert "meter.map" in text and "subject.create" in text
        assert "needs the admin role" in reply_text(bot.command("audit", user=BOB))
        assert "meter.map" in reply_text(bot.command("audit"))
