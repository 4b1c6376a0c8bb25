"""SNS in: signed alarm and budget notifications, refusals, dedupe, and the SQS path."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent, Revocation, SnsMessage
from bot.services import audit
from handlers.sns import SnsEndpoint
from jobs.sqs_poller import SqsPoller
from tests.fakes.sns_signing import (
    make_notification,
    make_subscription_confirmation,
    sign_envelope,
    write_cert,
)
from tests.harness import ALERTS, ALICE, Harness, reply_text, running_bot

TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"


def alarm_message(name: str, state: str, fixture: str = "cloudwatch-alarm-simple.message.json") -> str:
    msg = json.loads((VECTORS / fixture).read_text())
    msg["AlarmName"], msg["NewStateValue"] = name, state
    return json.dumps(msg)


@pytest.fixture
def sns(db: Database, clock: FixedClock, tmp_path: Path) -> Iterator[tuple[Harness, SnsEndpoint, Any]]:
    write_cert(tmp_path)
    with mock_aws(), running_bot(db, clock, BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=str(tmp_path)) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        bot.services.overrides.update(iam=iam, sns=boto3.client("sns", region_name="us-east-1"))
        iam.create_user(UserName="alice")
        bot.command(f"link <@{ALICE}|alice> arn:aws:iam::123456789012:user/alice")
        bot.command("limit alice 1M/24h")
        bot.slack.clear()
        yield bot, SnsEndpoint(bot.services, bot.services.sns_verifier()), iam


def _post(endpoint: SnsEndpoint, envelope: dict[str, Any]) -> tuple[int, str]:
    return endpoint(json.dumps(envelope).encode())


def _alerts(bot: Harness) -> list[str]:
    return [reply_text(c.args) for c in bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS]


def test_alarm_for_a_bot_limit_revokes_within_the_request(sns: Any, clock: FixedClock, db: Database) -> None:
    bot, endpoint, iam = sns
    env = make_notification(alarm_message("bedrock-bot-limit-1", "ALARM"), TOPIC, timestamp=clock())
    assert _post(endpoint, env) == (200, "revoked")
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == ["bedrock-bot-deny-alice"]
    assert any("Access revoked" in t and "bedrock-bot-limit-1" in t for t in _alerts(bot))
    assert any(c.args["channel"] == f"D{ALICE}" for c in bot.slack.calls("chat.postMessage"))

    ok = make_notification(alarm_message("bedrock-bot-limit-1", "OK"), TOPIC, timestamp=clock())
    assert _post(endpoint, ok) == (200, "recovered")
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == ["bedrock-bot-deny-alice"]
    assert any("not restored automatically" in t for t in _alerts(bot))
    with db.session_scope() as s:
        assert s.scalars(select(Revocation.reason)).all() == ["alarm"]
        assert audit.verify(s).ok


def test_duplicates_have_one_effect_even_concurrently(sns: Any, clock: FixedClock, db: Database) -> None:
    _bot, endpoint, _ = sns
    env = make_notification(alarm_message("bedrock-bot-limit-1", "ALARM"), TOPIC, timestamp=clock())
    results: list[tuple[int, str]] = []
    barrier = threading.Barrier(2)

    def deliver() -> None:
        barrier.wait()
        results.append(_post(endpoint, env))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(200, "duplicate"), (200, "revoked")]
    assert _post(endpoint, env) == (200, "duplicate")
    with db.session_scope() as s:
        assert len(s.scalars(select(Revocation)).all()) == 1
        assert len(s.scalars(select(SnsMessage)).all()) == 1


@pytest.mark.parametrize("case", ["tampered", "foreign-host", "unlisted-topic", "stale", "bad-version"])
def test_refusals_are_403_audited_and_change_nothing(sns: Any, clock: FixedClock, db: Database,
                                                     case: str) -> None:
    _bot, endpoint, iam = sns
    msg = alarm_message("bedrock-bot-limit-1", "ALARM")
    topic = "arn:aws:sns:us-east-1:123456789012:someone-else" if case == "unlisted-topic" else TOPIC
    stamp = clock().replace(year=2025) if case == "stale" else clock()
    env = make_notification(msg, topic, timestamp=stamp)
    if case == "tampered":
        env["Message"] = env["Message"].replace("ALARM", "OK")
    elif case == "foreign-host":
        env["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
    elif case == "bad-version":
        env = sign_envelope({k: v for k, v in env.items() if k != "Signature"}, version="2")
        env["SignatureVersion"] = "3"
    status, _ = _post(endpoint, env)
    assert status == 403
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == []
    with db.session_scope() as s:
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert last is not None and last.action == "sns.refuse" and last.outcome == "denied"
        assert s.scalars(select(SnsMessage)).all() == []


def test_foreign_budget_alert_is_posted_with_amounts(sns: Any, clock: FixedClock) -> None:
    bot, endpoint, _ = sns
    text = (VECTORS / "budgets-actual.message.txt").read_text()
    assert _post(endpoint, make_notification(text, TOPIC, timestamp=clock())) == (200, "posted")
    posted = "\n".join(_alerts(bot))
    assert "AWS Budget" in posted and "actual" in posted


def test_unparseable_is_200_recorded_and_posted(sns: Any, clock: FixedClock, db: Database) -> None:
    bot, endpoint, _ = sns
    env = make_notification("hello <!channel> not an alarm", TOPIC, timestamp=clock())
    assert _post(endpoint, env) == (200, "unrecognised")
    posted = "\n".join(_alerts(bot))
    assert "Unrecognised" in posted and "<!channel>" not in json.dumps([c.args for c in bot.slack.calls()])
    with db.session_scope() as s:
        assert s.scalars(select(SnsMessage.outcome)).all() == ["unrecognised"]


def test_subscription_confirmation(sns: Any, clock: FixedClock) -> None:
    bot, endpoint, _ = sns
    client = bot.services.overrides["sns"]
    arn = client.create_topic(Name="bedrock-bot-alerts")["TopicArn"]
    assert arn == TOPIC
    env = make_subscription_confirmation(TOPIC, token="abc123", timestamp=clock())
    assert _post(endpoint, env) == (200, "confirmed")
    other = make_subscription_confirmation("arn:aws:sns:us-east-1:123456789012:x", timestamp=clock())
    assert _post(endpoint, other)[0] == 403


def test_sqs_path_deletes_only_after_commit(sns: Any, clock: FixedClock, db: Database) -> None:
    bot, _, iam = sns
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName="bedrock-bot")["QueueUrl"]
    endpoint = SnsEndpoint(bot.services, bot.services.sns_verifier(max_age=None))
    good = make_notification(alarm_message("bedrock-bot-limit-1", "ALARM"), TOPIC, timestamp=clock())
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(good))
    # What moto's own SNS → SQS delivery produces carries moto's placeholder signature:
    sns_client = bot.services.overrides["sns"]
    sns_client.create_topic(Name="bedrock-bot-alerts")
    sns_client.subscribe(TopicArn=TOPIC, Protocol="sqs",
                         Endpoint=sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
                         ["Attributes"]["QueueArn"])
    sns_client.publish(TopicArn=TOPIC, Message=alarm_message("bedrock-bot-limit-1", "ALARM"))
    poller = SqsPoller(sqs, queue, endpoint, wait_seconds=0)
    handled = poller.poll_once() + poller.poll_once()
    assert sorted(status for _, status in handled) == [200, 403]  # moto's signature is refused
    assert iam.list_user_policies(UserName="alice")["PolicyNames"] == ["bedrock-bot-deny-alice"]
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None


def test_sqs_message_stays_when_processing_fails(sns: Any, clock: FixedClock) -> None:
    _bot, _, _ = sns
    sqs = boto3.client("sqs", region_name="us-east-1")
    queue = sqs.create_queue(QueueName="q2", Attributes={"VisibilityTimeout": "0"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    poller = SqsPoller(sqs, queue, lambda body: (500, "AWS down"), wait_seconds=0)
    assert [status for _, status in poller.poll_once()] == [500]
    assert len(sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0)["Messages"]) == 1


def test_limit_command_creates_the_alarm_that_later_revokes(db: Database, clock: FixedClock,
                                                            tmp_path: Path) -> None:
    """/bedrock limit makes a bedrock-bot-limit-<id> alarm in CloudWatch; its ALARM revokes."""
    write_cert(tmp_path)
    env = {"BOT_SNS_TOPIC_ARNS": TOPIC, "BOT_SNS_CERT_DIR": str(tmp_path)}
    with mock_aws(), running_bot(db, clock, **env) as bot:
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        iam = boto3.client("iam", region_name="us-east-1")
        bot.services.overrides.update(cloudwatch=cw, iam=iam,
                                      budgets=boto3.client("budgets", region_name="us-east-1"))
        iam.create_user(UserName="alice")
        bot.command(f"provision <@{ALICE}|alice> anthropic.claude-3-haiku-20240307-v1:0")
        bot.command(f"link <@{ALICE}|alice> arn:aws:iam::123456789012:user/alice")
        reply = reply_text(bot.command("limit alice 1M/24h"))
        assert "Limit for `alice`" in reply
        alarms = cw.describe_alarms(AlarmNamePrefix="bedrock-bot-limit-")["MetricAlarms"]
        assert [a["AlarmName"] for a in alarms] == ["bedrock-bot-limit-1"]
        assert alarms[0]["AlarmActions"] == [TOPIC] and alarms[0]["Threshold"] == 1_000_000
        week = reply_text(bot.command("limit alice 5M/week"))
        assert "bot's own evaluation" in week or "no CloudWatch alarm" in week or "calendar" in week, week
        endpoint = SnsEndpoint(bot.services, bot.services.sns_verifier())
        alarm = make_notification(alarm_message(alarms[0]["AlarmName"], "ALARM"), TOPIC, timestamp=clock())
        assert _post(endpoint, alarm) == (200, "revoked")
        bot.command("unlimit alice 24h")
        assert cw.describe_alarms(AlarmNamePrefix="bedrock-bot-limit-")["MetricAlarms"] == []
