"""Fuzzing the parsers that read outside input: the command parser, the SNS envelope, the
CloudWatch alarm and AWS Budgets messages — and the SNS endpoint behind them. No exception
but the parser's own refusal; a refusal changes nothing but the audit log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from sqlalchemy import select

from bot.aws.notifications import AlarmEvent, BudgetEvent, UnrecognisedMessage, parse_any
from bot.aws.sns import SnsEnvelope, SnsRejected, parse_envelope
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput
from bot.models import AuditEvent, SnsMessage
from bot.slash import registry as commands
from handlers.sns import SnsEndpoint
from tests.fakes.sns_signing import make_notification, sign_envelope, write_cert
from tests.hardening.conftest import ALICE_ARN, assert_chain_intact, audit_events, last_audit_id, snapshot
from tests.harness import ALICE, Harness, running_bot

TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"
FUZZ = settings(max_examples=300, deadline=None)
SLOW_FUZZ = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        st.text(max_size=40))
JSON_VALUE = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


# ---- the command parser -----------------------------------------------------------------------------

WORDS = [*commands.SUBCOMMANDS, "add", "remove", "alice", "team-eng", "<@U0ALICE1>", "<@U0BOB001|bob>",
         "5M/week", "$200/month", "1.5B/30d", "500k/day", "0/day", "-5M/week", "1e309/week", "warn=",
         "warn=80,90,101", "warn=-1", "action=", "alarm=maybe", "input", "output", "requests", "cost",
         "a=b", "=b", "a=", "&amp;", "&lt;", "&#x0;", "&#0;", "&#xD800;", "<@U1|>", "<@>", "100", "101"]
COMMAND = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=20)), max_size=8).map(" ".join),
    st.text(min_size=1990, max_size=2100),
)


@FUZZ
@given(text=COMMAND)
def test_command_parser_refuses_with_bad_input_only(text: str) -> None:
    try:
        cmd = commands.parse(text)
    except BadInput as exc:
        assert exc.reason and "\n" not in exc.reason  # one line
        assert exc.usage and exc.usage.startswith("/bedrock")
        return
    assert cmd.name in commands.SUBCOMMANDS


# ---- the SNS envelope --------------------------------------------------------------------------------

SNS_KEYS = ["Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp", "SignatureVersion",
            "Signature", "SigningCertURL", "UnsubscribeURL", "SubscribeURL", "Token"]
TYPES = st.sampled_from(["Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation", "",
                         "notification"])
ENVELOPE = st.fixed_dictionaries({"Type": st.one_of(TYPES, JSON_VALUE)}, optional={
    k: st.one_of(st.text(max_size=80), JSON_VALUE) for k in SNS_KEYS if k != "Type"})


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300), ENVELOPE.map(json.dumps),
                      JSON_VALUE.map(json.dumps)))
def test_sns_envelope_parser_refuses_with_sns_rejected_only(body: Any) -> None:
    try:
        env = parse_envelope(body)
    except SnsRejected as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert isinstance(env, SnsEnvelope) and env.timestamp.tzinfo is not None


def test_sns_envelope_deep_nesting_and_duplicates_are_refused() -> None:
    for body in ("[" * 50_000 + "]" * 50_000, '{"Type": "Notification", "Type": "Notification"}',
                 '{"Type": NaN}', "\ufeff{}", b"\xff\xfe{}"):
        with pytest.raises(SnsRejected):
            parse_envelope(body)


# ---- alarm and budget messages ----------------------------------------------------------------------------

ALARM_KEYS = ["AlarmName", "AlarmDescription", "AWSAccountId", "NewStateValue", "OldStateValue",
              "NewStateReason", "StateChangeTime", "Region", "AlarmArn", "Trigger"]
TRIGGER = st.fixed_dictionaries({}, optional={
    "MetricName": JSON_VALUE, "Namespace": JSON_VALUE, "Threshold": JSON_VALUE,
    "ComparisonOperator": JSON_VALUE, "Dimensions": JSON_VALUE, "Metrics": JSON_VALUE,
    "TreatMissingData": JSON_VALUE, "Statistic": JSON_VALUE, "Period": JSON_VALUE})
ALARM = st.fixed_dictionaries(
    {"AlarmName": st.one_of(st.text(max_size=40), JSON_VALUE),
     "NewStateValue": st.one_of(st.sampled_from(["ALARM", "OK", "INSUFFICIENT_DATA"]), JSON_VALUE)},
    optional={k: st.one_of(JSON_VALUE, TRIGGER) for k in ALARM_KEYS
              if k not in ("AlarmName", "NewStateValue")})
BUDGET_LINES = st.lists(st.one_of(
    st.sampled_from(["AWS Budget Notification", "Budget Name: team-eng", "Budgeted Amount: $100.00",
                     "Alert Type: ACTUAL", "Alert Type: FORECASTED", "Alert Threshold: > $80.00",
                     "ACTUAL Amount: $1e400", "ACTUAL Amount: $-0", "Budgeted Amount: ¥9,99,9.9.9",
                     "AWS Account 123456789012", "Alert Threshold: > 100%",
                     "you requested that we alert you when the ACTUAL Cost associated with your x budget "
                     "is greater than $1 for the current month"]),
    st.text(max_size=60)), max_size=10).map("\n".join)


@FUZZ
@given(message=st.one_of(st.text(max_size=400), ALARM.map(json.dumps), JSON_VALUE.map(json.dumps),
                         BUDGET_LINES))
def test_alarm_and_budget_parsers_refuse_with_unrecognised_only(message: str) -> None:
    try:
        event = parse_any(message)
    except UnrecognisedMessage:
        return
    assert isinstance(event, AlarmEvent | BudgetEvent)
    if isinstance(event, BudgetEvent):
        for amount in (event.amount, event.budgeted):
            assert amount is None or amount.is_finite()


# ---- the SNS endpoint: refusals change nothing, odd messages are recorded and posted ---------------------

@pytest.fixture
def sns(db: Database, clock: FixedClock, tmp_path: Path) -> Iterator[tuple[Harness, SnsEndpoint]]:
    write_cert(tmp_path)
    with mock_aws(), running_bot(db, clock, BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=str(tmp_path)) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        bot.services.overrides.update(iam=iam)
        iam.create_user(UserName="alice")
        bot.command(f"link <@{ALICE}|alice> {ALICE_ARN}")
        bot.command("limit alice 1M/24h alarm=off")
        yield bot, SnsEndpoint(bot.services, bot.services.sns_verifier())
        assert_chain_intact(db)


@SLOW_FUZZ
@given(body=st.one_of(st.binary(max_size=200), ENVELOPE.map(json.dumps)))
def test_unverifiable_sns_bodies_are_403_audited_and_change_nothing(sns: tuple[Harness, SnsEndpoint],
                                                                   body: Any) -> None:
    bot, endpoint = sns
    before, mark = snapshot(bot.services.db), last_audit_id(bot.services.db)
    status, reason = endpoint(body if isinstance(body, bytes) else body.encode())
    assert status == 403 and reason and "\n" not in reason
    assert snapshot(bot.services.db) == before
    rows = audit_events(bot.services.db, mark)
    assert [(e.action, e.outcome) for e in rows] == [("sns.refuse", "denied")]


@SLOW_FUZZ
@given(message=st.one_of(st.text(max_size=300), ALARM.map(json.dumps), BUDGET_LINES),
       subject=st.one_of(st.none(), st.text(max_size=60)))
def test_verified_messages_of_any_content_are_recorded_once_and_never_revoke(
        sns: tuple[Harness, SnsEndpoint], clock: FixedClock, message: str, subject: str | None) -> None:
    bot, endpoint = sns
    if "bedrock-bot-limit" in message or "\x00" in message or "\x00" in (subject or ""):
        return  # a real limit alarm revokes (tested elsewhere); NUL has its own test
    before = snapshot(bot.services.db)
    env = make_notification(message, TOPIC, subject=subject, timestamp=clock())
    status, outcome = endpoint(json.dumps(env).encode())
    assert status == 200 and outcome in ("unrecognised", "posted"), (status, outcome)
    after = snapshot(bot.services.db)
    assert {k for k in after if after[k] != before[k]} == {"sns_messages"}
    assert endpoint(json.dumps(env).encode()) == (200, "duplicate")


def test_nul_in_a_verified_message(sns: tuple[Harness, SnsEndpoint], clock: FixedClock,
                                   request: pytest.FixtureRequest) -> None:
    bot, endpoint = sns
    env = make_notification("hello\u0000world", TOPIC, timestamp=clock())
    assert endpoint(json.dumps(env).encode()) == (200, "unrecognised")
    with bot.services.db.session_scope() as s:
        assert len(s.scalars(select(SnsMessage)).all()) == 1


def test_a_tampered_message_type_is_refused(sns: tuple[Harness, SnsEndpoint], clock: FixedClock) -> None:
    """A genuine signature over a Notification does not carry over to the same fields as a
    SubscriptionConfirmation (the string to sign differs per type)."""
    bot, endpoint = sns
    env = make_notification("x", TOPIC, timestamp=clock())
    forged = dict(env, Type="SubscriptionConfirmation", Token="t",
                  SubscribeURL="https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
                               f"&TopicArn={TOPIC}")
    assert endpoint(json.dumps(forged).encode())[0] == 403
    resigned = sign_envelope({k: v for k, v in env.items() if k != "Signature"}, version="2")
    assert endpoint(json.dumps(resigned).encode())[0] == 200
    with bot.services.db.session_scope() as s:
        assert [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))][-2:] == [
            "sns.refuse", "sns.unrecognised"]
