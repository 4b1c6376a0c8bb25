"""The /bedrock grammar: what parses, and the one-line reason plus usage for what does not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import BadInput
from bot.quantities import Metric, Window
from bot.services.directory import SubjectRef
from bot.slash import grammar as c
from bot.slash.registry import parse


def test_empty_is_help() -> None:
    assert parse("") == c.Help("help")


@pytest.mark.parametrize("text,subject,period", [
    ("usage", None, None),
    ("usage <@U123|alice>", SubjectRef("alice", "U123"), None),
    ("usage <@U123>", SubjectRef(None, "U123"), None),
    ("usage team-eng week", SubjectRef("team-eng"), "week"),
    ("USAGE 7d @Bob", SubjectRef("bob"), "7d"),
])
def test_usage(text: str, subject: SubjectRef | None, period: str | None) -> None:
    assert parse(text) == c.UsageQuery("usage", subject, period)


def test_limit_full() -> None:
    cmd = parse("limit team-eng 1M/day output warn=50,80 action=notify alarm=off")
    assert isinstance(cmd, c.SetLimit)
    assert cmd.subject == SubjectRef("team-eng") and cmd.amount.value == 1_000_000
    assert cmd.window == Window.DAY and cmd.metric == Metric.OUTPUT
    assert cmd.warn == (50, 80) and cmd.action == "notify" and cmd.alarm is False


def test_limit_cost() -> None:
    cmd = parse("limit <@U1AB|alice> $200/month")
    assert isinstance(cmd, c.SetLimit) and cmd.metric == Metric.COST and cmd.amount.is_cost


@pytest.mark.parametrize("text,needle", [
    ("frobnicate", "unknown subcommand"),
    ("limit team-eng", "amount/window"),
    ("limit team-eng 5X/week", "amount"),
    ("limit team-eng 5M/fortnight", "window"),
    ("limit team-eng -5M/week", ""),
    ("limit team-eng 0/week", ""),
    ("limit team-eng $5/week input", "cost limit"),
    ("limit team-eng 5M/week warn=0,200", ""),
    ("limit team-eng 5M/week colour=blue", "unknown option"),
    ("admins add alice", "not a user mention"),
    ("admins add <@U1> emperor", "unknown role"),
    ("team team-eng paint <@U1>", "add or remove"),
    ("provision <@U1>", "model"),
    ("provision <@U1> amazon.nova-lite-v1:0 oops", "key=value"),
    ("link <@U1>", "IAM ARN"),
    ("usage <script>", "not a user mention"),
    ("help nope", "no help"),
    ("digest now", "no arguments"),
    ("x" * 3000, "too long"),
])
def test_refusals_carry_a_reason_and_usage(text: str, needle: str) -> None:
    with pytest.raises(BadInput) as err:
        parse(text)
    assert needle in str(err.value)
    assert err.value.usage and err.value.usage.startswith("/bedrock")
    assert "\n" not in str(err.value)


def test_escaped_entities_are_unescaped() -> None:
    cmd = parse("revoke team-eng too &lt;much&gt; &amp; more")
    assert isinstance(cmd, c.SubjectCommand) and cmd.reason == "too <much> & more"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parser_never_crashes(text: str) -> None:
    try:
        parse(text)
    except BadInput as exc:
        assert exc.usage


def test_unlink_and_check() -> None:
    arn = "arn:aws:sts::123456789012:assumed-role/data-science/alice"
    assert parse(f"unlink alice {arn}") == c.Link("unlink", SubjectRef(name="alice"), arn)
    assert parse("check <@U0ALICE01|alice>") == c.SubjectCommand(
        "check", SubjectRef(name="alice", slack_user_id="U0ALICE01"))
    for bad in ("unlink alice", "check", "check alice bob"):
        with pytest.raises(BadInput):
            parse(bad)
