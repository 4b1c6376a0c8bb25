"""Ask for more before the wall, through signed Slack payloads: warning → Request more →
modal → request → another approver approves → no revoke between the old and the raised
limit → the raise expires (injected clock) → revoked. Also the admin grant and grace."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import LimitRaise, Profile, RaiseRequest
from bot.render.approvals import home_view
from bot.render.digest import digest_blocks
from bot.services import home
from bot.services.digest import build_digest
from bot.services.directory import Actor
from jobs import expire_requests, usage_sync
from tests.e2e.test_approvals import ADMIN2, MODEL, click
from tests.harness import ADMIN, ALERTS, ALICE, BOB, Harness, reply_text, running_bot

UTC_ZONE = ZoneInfo("UTC")


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


def _use(bot: Harness, db: Database, clock: FixedClock, tokens: int) -> None:
    with db.session_scope() as s:
        pid = s.scalars(select(Profile.profile_id)).one()
    bot.services.overrides["cloudwatch"].put_metric_data(Namespace="AWS/Bedrock", MetricData=[{
        "MetricName": "InputTokenCount", "Dimensions": [{"Name": "ModelId", "Value": pid}],
        "Timestamp": clock() - timedelta(minutes=5), "Value": tokens, "Unit": "Count"}])


def submit_more(bot: Harness, user: str, limit_id: str, amount: str, duration: str, reason: str) -> Any:
    values = {"amount": {"amount_input": {"type": "plain_text_input", "value": amount}},
              "duration": {"duration_input": {"type": "static_select",
                                              "selected_option": {"value": duration}}},
              "reason": {"reason_input": {"type": "plain_text_input", "value": reason}}}
    payload = {"type": "view_submission", "team": {"id": "T0001", "domain": "t"},
               "user": {"id": user, "username": user.lower(), "team_id": "T0001"},
               "api_app_id": "A0001", "token": "x", "trigger_id": "t", "response_urls": [],
               "view": {"id": "V1", "team_id": "T0001", "type": "modal",
                        "callback_id": "raise_request_modal",
                        "private_metadata": limit_id, "hash": "h", "blocks": [], "state": {"values": values}}}
    return bot.action(payload)


def test_warning_button_modal_approve_then_expire(world: tuple[Harness, Any], db: Database,
                                                  clock: FixedClock) -> None:
    bot, iam = world
    bot.command("limit alice 1M/month")
    _use(bot, db, clock, 850_000)
    bot.slack.clear()
    usage_sync.run(bot.services)
    dm = next(c for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == f"D{ALICE}")
    assert "80% of a limit" in reply_text(dm.args)
    button = next(e for b in dm.args["blocks"] if b["type"] == "actions" for e in b["elements"])
    assert button["action_id"] == "request_more"
    limit_id = button["value"]

    bot.slack.clear()
    assert "only the people" in click(bot, BOB, "request_more", limit_id)
    assert click(bot, ALICE, "request_more", limit_id) == ""
    modal = bot.slack.wait_for("views.open")[0].args["view"]
    assert modal["callback_id"] == "raise_request_modal" and modal["private_metadata"] == limit_id
    bad = submit_more(bot, ALICE, limit_id, "lots", "24h", "launch")
    assert "amount" in json.loads(bad.body)["errors"]
    bad = submit_more(bot, ALICE, limit_id, "1M", "forever", " ")
    assert set(json.loads(bad.body)["errors"]) == {"duration", "reason"}
    assert submit_more(bot, ALICE, limit_id, "1M", "24h", "launch load test").status == 200
    bot.settle()
    post = next(c for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS)
    assert "Raise request" in reply_text(post.args) and "launch load test" in reply_text(post.args)
    actions = next(b for b in post.args["blocks"] if b["type"] == "actions")
    assert [e["action_id"] for e in actions["elements"]] == [
        "approve_raise", "approve_raise_half", "deny_raise"]
    assert all("confirm" in e for e in actions["elements"])
    req_id = actions["elements"][0]["value"]

    assert "needs the approver role" in click(bot, ALICE, "approve_raise", req_id)
    bot.slack.clear()
    assert click(bot, ADMIN2, "approve_raise", req_id) == ""
    assert "already approved" in click(bot, ADMIN, "deny_raise", req_id)
    assert "Approved +1M" in reply_text(bot.slack.wait_for("chat.update")[0].args)
    assert any("approved" in reply_text(c.args) for c in bot.slack.calls("chat.postMessage")
               if c.args["channel"] == f"D{ALICE}")
    listed = reply_text(bot.command("limits alice"))
    assert f"1M tokens/month (+1M until Thu 26 Nov 10:30 UTC, approved by <@{ADMIN2}>)" in listed

    _use(bot, db, clock, 650_000)  # 1.5M: over the old limit, under the raised one
    usage_sync.run(bot.services)
    assert _policies(iam) == []

    clock.advance(hours=25)
    usage_sync.run(bot.services)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]  # the raise ended: over the limit again
    expire_requests.run(bot.services)
    with db.session_scope() as s:
        assert s.scalars(select(LimitRaise.closed_at)).one() == clock()
        assert s.scalars(select(RaiseRequest.status)).one() == "approved"


def test_admin_grant_lifts_and_request_more_slash(world: tuple[Harness, Any], db: Database,
                                                  clock: FixedClock) -> None:
    bot, iam = world
    bot.command("limit alice 1M/month")
    _use(bot, db, clock, 1_200_000)
    usage_sync.run(bot.services)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]
    assert "usage" in reply_text(bot.command("limit alice +lots/month for 24h x")).lower()
    assert "duration" in reply_text(bot.command("limit alice +1M/month for 2y x"))
    assert "no tokens/day limit" in reply_text(bot.command("limit alice +1M/day for 24h x"))
    assert "reason" in reply_text(bot.command("limit alice +1M/month for 24h"))
    out = reply_text(bot.command("limit alice +1M/month for 24h launch day"))
    assert "raised by 1M" in out and "Access restored" in out
    assert _policies(iam) == []

    bot.slack.clear()
    assert "with the admins" in reply_text(bot.command("request more 2M for 7d more launch", user=ALICE))
    assert "no cost_usd limit" in reply_text(bot.command("request more $5 bigger", user=ALICE))
    assert "reason" in reply_text(bot.command("request more 1M", user=ALICE))
    assert "Raise request" in reply_text(bot.slack.wait_for("chat.postMessage")[0].args)
    help_text = reply_text(bot.command("help request"))
    assert "request more" in help_text


def test_grace_period(world: tuple[Harness, Any], db: Database, clock: FixedClock) -> None:
    bot, iam = world
    assert "grace of 10m" in reply_text(bot.command("limit alice 1M/month grace=10m"))
    _use(bot, db, clock, 1_200_000)
    bot.slack.clear()
    usage_sync.run(bot.services)
    assert _policies(iam) == []
    dm = next(c for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == f"D{ALICE}")
    assert "access ends in 10 minutes unless a request is approved" in reply_text(dm.args)
    clock.advance(minutes=5)
    usage_sync.run(bot.services)
    assert _policies(iam) == []
    clock.advance(minutes=6)
    usage_sync.run(bot.services)
    assert _policies(iam) == ["bedrock-bot-deny-alice"]


def test_grace_then_raise_keeps_access(world: tuple[Harness, Any], db: Database, clock: FixedClock) -> None:
    bot, iam = world
    bot.command("limit alice 1M/month grace=10m")
    _use(bot, db, clock, 1_200_000)
    usage_sync.run(bot.services)
    bot.command("request more 1M for 24h demo tonight", user=ALICE)
    with db.session_scope() as s:
        req_id = str(s.scalars(select(RaiseRequest.id)).one())
    assert click(bot, ADMIN2, "approve_raise_half", req_id) == ""
    clock.advance(minutes=11)
    usage_sync.run(bot.services)
    assert _policies(iam) == []  # 1.2M of 1.5M


def test_app_home_and_digest_show_raises(world: tuple[Harness, Any], db: Database, clock: FixedClock) -> None:
    """A granted raise shows in the App Home; the digest of the day it was granted lists it."""
    bot, _ = world
    bot.command("limit alice 1M/day")
    assert "raised by 1M" in reply_text(bot.command("limit alice +1M/day for 24h release week"))
    with db.session_scope() as s:
        data = home.load(s, clock, UTC_ZONE, 0, Actor.slack(ALICE))
    assert [r.amount for r in data[5]] == [1_000_000]
    assert "+1M tokens/day until" in json.dumps(home_view(*data, tz=UTC_ZONE))
    clock.advance(days=1)
    with db.session_scope() as s:
        digest = build_digest(s, clock(), UTC_ZONE, 0)
    assert [r.subject for r in digest.raises] == ["alice"]
    text = json.dumps(digest_blocks(digest, UTC_ZONE)[1])
    assert "Raises granted" in text and "release week" in text
