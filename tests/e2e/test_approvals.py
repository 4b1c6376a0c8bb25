"""Restore approvals through App.dispatch with signed block_actions / view_submission payloads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent, LimitException, Profile, RestoreRequest
from bot.services import audit
from jobs import expire_requests, usage_sync
from tests.fakes.signing import event_body
from tests.harness import ADMIN, ALERTS, ALICE, BOB, Harness, reply_text, running_bot

ADMIN2 = "UADMIN02"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def _button(bot: Harness, user: str, action_id: str, value: str, response: str) -> dict[str, Any]:
    return {"type": "block_actions", "user": {"id": user, "username": user.lower(), "team_id": "T0001"},
            "api_app_id": "A0001", "token": "x", "trigger_id": f"trig-{user}-{action_id}",
            "team": {"id": "T0001", "domain": "t"}, "channel": {"id": ALERTS, "name": "alerts"},
            "container": {"type": "message", "message_ts": "1.1", "channel_id": ALERTS},
            "response_url": bot.slack.response_url(response),
            "actions": [{"action_id": action_id, "block_id": "b", "value": value, "type": "button",
                         "action_ts": "1.2", "text": {"type": "plain_text", "text": "x"}}]}


def click(bot: Harness, user: str, action_id: str, value: str) -> str:
    """Click a button; return what the clicker was told ephemerally ('' if nothing).

    The answer is read once the listener has finished, so '' means no reply was sent at all."""
    name = f"click-{user}-{action_id}-{len(bot.slack.calls())}"
    resp = bot.action(_button(bot, user, action_id, value, name))
    assert resp.status == 200, resp.body
    bot.settle()
    told = bot.slack.calls(f"response_url:{name}")
    assert len(told) <= 1, told
    return reply_text(told[0].args) if told else ""


def submit(bot: Harness, user: str, callback_id: str, metadata: str, reason: str) -> Any:
    payload = {"type": "view_submission", "team": {"id": "T0001", "domain": "t"},
               "user": {"id": user, "username": user.lower(), "team_id": "T0001"},
               "api_app_id": "A0001", "token": "x", "trigger_id": "t", "response_urls": [],
               "view": {"id": "V1", "team_id": "T0001", "type": "modal", "callback_id": callback_id,
                        "private_metadata": metadata, "hash": "h", "blocks": [],
                        "state": {"values": {"reason": {"reason_input": {
                            "type": "plain_text_input", "value": reason}}}}}}
    return bot.action(payload)


@pytest.fixture
def world(db: Database, clock: FixedClock) -> Iterator[tuple[Harness, Any]]:
    with mock_aws(), running_bot(db, clock) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        bot.services.overrides.update(iam=iam, cloudwatch=boto3.client("cloudwatch", region_name="us-east-1"))
        iam.create_user(UserName="alice")
        bot.command(f"admins add <@{ADMIN2}> approver")
        bot.command(f"provision <@{ALICE}|alice> {MODEL}")
        bot.command(f"link <@{ALICE}|alice> arn:aws:iam::123456789012:user/alice")
        yield bot, iam


def _policies(iam: Any) -> list[str]:
    return list(iam.list_user_policies(UserName="alice")["PolicyNames"])


def _request_alice(bot: Harness) -> int:
    """alice clicks Request restore on the revocation and submits the modal."""
    bot.slack.clear()
    assert click(bot, ALICE, "request_restore", "1") == ""
    modal = bot.slack.wait_for("views.open")[0].args["view"]
    assert modal["callback_id"] == "restore_request_modal" and modal["private_metadata"] == "1"
    assert submit(bot, ALICE, "restore_request_modal", "1", "customer demo at 3pm").status == 200
    bot.settle()  # the request is posted and alice told before the caller clears the fake Slack
    post = bot.slack.wait_for("chat.postMessage", count=2)
    request_post = next(c for c in post if c.args["channel"] == ALERTS)
    text = reply_text(request_post.args)
    assert "Restore request" in text and "customer demo at 3pm" in text
    actions = next(b for b in request_post.args["blocks"] if b["type"] == "actions")
    assert [e["action_id"] for e in actions["elements"]] == [
        "approve_request", "approve_request_24h", "deny_request"]
    assert all("confirm" in e for e in actions["elements"])
    return int(actions["elements"][0]["value"])


def test_request_four_eyes_approve_once(world: tuple[Harness, Any], db: Database) -> None:
    bot, iam = world
    bot.slack.clear()
    assert "Revoked" in reply_text(bot.command("revoke alice runaway notebook"))
    alert = next(c for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS)
    assert "Request restore" in reply_text(alert.args)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]

    req_id = _request_alice(bot)
    assert "needs the approver role" in click(bot, ALICE, "approve_request", str(req_id))
    bot.command(f"admins add <@{ALICE}> approver")  # even an approver cannot approve her own
    assert "four eyes" in click(bot, ALICE, "approve_request", str(req_id))
    assert "needs the approver role" in click(bot, BOB, "approve_request", str(req_id))
    assert _policies(iam) == ["bedrock-bot-deny-alice"]

    bot.slack.clear()
    assert click(bot, ADMIN, "approve_request", str(req_id)) == ""
    assert _policies(iam) == []
    update = bot.slack.wait_for("chat.update")[0].args
    assert "Approved" in reply_text(update) and ADMIN in reply_text(update)
    assert not any(b["type"] == "actions" for b in update["blocks"])  # buttons gone
    dms = [c for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == f"D{ALICE}"]
    assert any("approved" in reply_text(c.args) for c in dms)

    again = click(bot, ADMIN2, "approve_request", str(req_id))
    assert "already approved" in again
    assert len(bot.slack.calls("chat.update")) == 1

    with db.session_scope() as s:
        events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        assert audit.verify(s).ok
    denied = [(e.action, e.actor) for e in events if e.outcome == "denied"]
    assert ("request.approve", f"slack:{ALICE}") in denied and ("request.approve", f"slack:{BOB}") in denied
    assert [e.action for e in events].count("access.restore") == 1


def test_deny_with_reason(world: tuple[Harness, Any], db: Database) -> None:
    bot, iam = world
    bot.command("revoke alice")
    req_id = _request_alice(bot)
    bot.slack.clear()
    assert "needs the approver role" in click(bot, BOB, "deny_request", str(req_id))
    assert bot.slack.calls("views.open") == []
    click(bot, ADMIN, "deny_request", str(req_id))
    modal = bot.slack.wait_for("views.open")[0].args["view"]
    assert modal["callback_id"] == "deny_request_modal"
    empty = submit(bot, ADMIN, "deny_request_modal", str(req_id), "  ")
    assert json.loads(empty.body)["response_action"] == "errors"
    assert submit(bot, ADMIN, "deny_request_modal", str(req_id), "over budget <!channel>").status == 200
    update = bot.slack.wait_for("chat.update")[0].args
    assert "Denied" in reply_text(update)
    assert "<!channel>" not in json.dumps(update)  # escaped, cannot ping
    dm = bot.slack.wait_for("chat.postMessage")[0].args
    assert dm["channel"] == f"D{ALICE}" and "over budget" in reply_text(dm)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]


def test_approve_for_24h_then_enforce_again(world: tuple[Harness, Any], db: Database,
                                            clock: FixedClock) -> None:
    bot, iam = world
    cw = bot.services.overrides["cloudwatch"]
    bot.command("limit alice 1M/month")
    with db.session_scope() as s:
        pid = s.scalars(select(Profile.profile_id)).one()
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[{
        "MetricName": "InputTokenCount", "Dimensions": [{"Name": "ModelId", "Value": pid}],
        "Timestamp": clock() - timedelta(minutes=10), "Value": 2_000_000, "Unit": "Count"}])
    usage_sync.run(bot.services)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]

    req_id = _request_alice(bot)
    click(bot, ADMIN, "approve_request_24h", str(req_id))
    assert _policies(iam) == []
    with db.session_scope() as s:
        exc = s.scalars(select(LimitException)).one()
        assert exc.expires_at == clock() + timedelta(hours=24)
    clock.advance(hours=23)
    usage_sync.run(bot.services)
    assert _policies(iam) == []  # the exception holds
    clock.advance(hours=2)
    usage_sync.run(bot.services)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]  # still over: revoked again


def test_slash_restore_by_non_admin_files_a_request(world: tuple[Harness, Any], db: Database,
                                                    clock: FixedClock) -> None:
    bot, _ = world
    bot.command("revoke alice")
    bot.slack.clear()
    assert "with the admins" in reply_text(bot.command("restore alice need it for the demo", user=ALICE))
    assert "already have" in reply_text(bot.command("restore alice again", user=ALICE))
    assert "only the people affected" in reply_text(bot.command("restore alice me too", user=BOB))
    with db.session_scope() as s:
        req = s.scalars(select(RestoreRequest)).one()
        assert req.reason == "need it for the demo" and req.channel == ALERTS and req.ts
    clock.advance(hours=73)
    bot.slack.clear()
    assert [r.status for r in expire_requests.run(bot.services).value or []] == ["expired"]
    assert "Expired" in reply_text(bot.slack.wait_for("chat.update")[0].args)


def test_app_home_shows_status_and_button(world: tuple[Harness, Any]) -> None:
    bot, _ = world
    bot.command("revoke alice")
    bot.slack.clear()
    resp = bot.dispatch(event_body({"type": "app_home_opened", "user": ALICE, "tab": "home",
                                    "channel": "D1", "event_ts": "1.1"}))
    assert resp.status == 200
    view = bot.slack.wait_for("views.publish")[0].args
    assert view["user_id"] == ALICE
    text = json.dumps(view["view"])
    assert "Revoked" in text and "request_restore" in text and "Your Bedrock usage" in text
