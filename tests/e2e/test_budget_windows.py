"""AWS Budgets alerts through the SNS endpoint: an alert revokes only for the window it reports on.

A DAILY budget's alert says "Yesterday, …" and arrives after that UTC day (the real vector):
it is posted, not enforced, so nobody loses access today for yesterday's spend. A monthly
alert for the current month still revokes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import Limit, Revocation, SnsMessage
from handlers.sns import SnsEndpoint
from tests.fakes.sns_signing import make_notification, write_cert
from tests.harness import ALERTS, ALICE, Harness, reply_text, running_bot

TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"
DAILY = (VECTORS / "budgets-daily-actual.message.txt").read_text()
MONTHLY = (VECTORS / "budgets-actual.message.txt").read_text()


@pytest.fixture
def sns(db: Database, clock: FixedClock, tmp_path: Path) -> Iterator[tuple[Harness, SnsEndpoint, Any]]:
    write_cert(tmp_path)
    with mock_aws(), running_bot(db, clock, BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=str(tmp_path)) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        bot.services.overrides.update(iam=iam, sns=boto3.client("sns", region_name="us-east-1"))
        iam.create_user(UserName="alice")
        bot.command(f"link <@{ALICE}|alice> arn:aws:iam::123456789012:user/alice")
        bot.slack.clear()
        yield bot, SnsEndpoint(bot.services, bot.services.sns_verifier()), iam


def _limit_id(db: Database, window: str) -> int:
    with db.session_scope() as s:
        lid = s.scalar(select(Limit.id).where(Limit.window == window, Limit.metric == "cost_usd"))
        assert lid is not None
        return lid


def _alert(template: str, heading: str, limit_id: int) -> str:
    _heading, rest = template.split("\n", 1)
    text = f"AWS Budget Notification {heading}\n{rest}"
    old = "killswitch" if "killswitch" in template else "Test Budget"
    # the daily vector's $1.70 is under its $5.00 budget: make it a breach ($1.70 of $1.00)
    return text.replace(old, f"bedrock-bot-limit-{limit_id}").replace("Budgeted Amount: $5.00",
                                                                       "Budgeted Amount: $1.00")


def _alerts(bot: Harness) -> list[str]:
    return [reply_text(c.args) for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS]


def test_a_late_daily_alert_for_yesterday_does_not_revoke_today(sns: Any, clock: FixedClock,
                                                                db: Database) -> None:
    bot, endpoint, iam = sns
    bot.command("limit alice $5/day")
    lid = _limit_id(db, "day")
    bot.slack.clear()
    # the clock is 2026-11-25 10:30Z: AWS reports on November 24 ("Yesterday"), heading Nov 25
    env = make_notification(_alert(DAILY, "November 25, 2026", lid), TOPIC, timestamp=clock())
    assert endpoint(json.dumps(env).encode()) == (200, "stale")
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == []
    assert any("Late AWS Budget alert" in t and "not enforced" in t for t in _alerts(bot))
    with db.session_scope() as s:
        assert s.scalars(select(Revocation)).all() == []
        assert s.scalars(select(SnsMessage.outcome)).all() == ["stale"]


def test_a_daily_alert_for_today_still_revokes(sns: Any, clock: FixedClock, db: Database) -> None:
    """(the same alert, had it been dated the day after today: it speaks of today)"""
    bot, endpoint, iam = sns
    bot.command("limit alice $5/day")
    lid = _limit_id(db, "day")
    env = make_notification(_alert(DAILY, "November 26, 2026", lid), TOPIC, timestamp=clock())
    assert endpoint(json.dumps(env).encode()) == (200, "revoked")
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == ["bedrock-bot-deny-alice"]


def test_a_monthly_alert_for_the_current_month_revokes(sns: Any, clock: FixedClock, db: Database) -> None:
    bot, endpoint, iam = sns
    bot.command("limit alice $20/month")
    lid = _limit_id(db, "month")
    # budgeted $0.20, actual $0.59: over 100%
    env = make_notification(_alert(MONTHLY, "November 25, 2026", lid), TOPIC, timestamp=clock())
    assert endpoint(json.dumps(env).encode()) == (200, "revoked")
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == ["bedrock-bot-deny-alice"]


def test_last_months_alert_arriving_now_is_posted_only(sns: Any, clock: FixedClock, db: Database) -> None:
    bot, endpoint, iam = sns
    bot.command("limit alice $20/month")
    lid = _limit_id(db, "month")
    env = make_notification(_alert(MONTHLY, "October 31, 2026", lid), TOPIC, timestamp=clock())
    assert endpoint(json.dumps(env).encode()) == (200, "stale")
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == []
