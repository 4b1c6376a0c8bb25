"""Parsing the `Message` of CloudWatch alarm and AWS Budgets notifications (real AWS payloads)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.aws.notifications import (
    AlarmEvent,
    BudgetEvent,
    UnrecognisedMessage,
    parse_alarm,
    parse_any,
    parse_budget,
)

FIXTURES = Path(__file__).resolve().parents[1] / "vectors" / "aws"
SIMPLE = (FIXTURES / "cloudwatch-alarm-simple.message.json").read_text()
SINGLE = (FIXTURES / "cloudwatch-alarm-single-metric.message.json").read_text()
MATH = (FIXTURES / "cloudwatch-alarm-metric-math.message.json").read_text()
ACTUAL = (FIXTURES / "budgets-actual.message.txt").read_text()
FORECASTED = (FIXTURES / "budgets-forecasted.message.txt").read_text()
EXAMPLE_REASON = ("Threshold Crossed: 1 out of the last 1 datapoints [1234.0 (06/03/15 17:43:27)] was "
                  "greater than the threshold (0.0) (minimum 1 datapoint for OK -> ALARM transition).")


def alarm(text: str) -> AlarmEvent:
    event = parse_any(text)
    assert isinstance(event, AlarmEvent)
    assert parse_alarm(text) == event
    return event


def budget(text: str) -> BudgetEvent:
    event = parse_any(text)
    assert isinstance(event, BudgetEvent)
    assert parse_budget(text) == event
    return event


# --- CloudWatch alarm fixtures ---------------------------------------------------------------------

def test_simple_alarm_fixture() -> None:
    event = alarm(SIMPLE)
    assert event == AlarmEvent(
        name="Test alarm", description=None, state="ALARM", old_state="INSUFFICIENT_DATA",
        reason=("Threshold Crossed: 1 out of the last 1 datapoints [6.0 (25/09/22 18:49:00)] was greater "
                "than the threshold (5.0) (minimum 1 datapoint for OK -> ALARM transition)."),
        changed_at=datetime(2022, 9, 25, 18, 50, 37, 811000, tzinfo=UTC),
        region="ca-central-1",  # from AlarmArn; the message's Region is "Canada (Central)"
        account_id="017790921725",
        alarm_arn="arn:aws:cloudwatch:ca-central-1:017790921725:alarm:Test alarm",
        metric="AWS/Lambda ConcurrentExecutions", threshold=5.0, comparison="GreaterThanThreshold",
        dimensions={}, treat_missing_data="missing",
    )


def test_single_metric_alarm_fixture_with_legacy_treat_missing_data() -> None:
    event = alarm(SINGLE)
    assert event == AlarmEvent(
        name="EXAMPLE", description="EXAMPLE", state="ALARM", old_state="INSUFFICIENT_DATA",
        reason=EXAMPLE_REASON, changed_at=datetime(2015, 6, 3, 17, 43, 27, 123000, tzinfo=UTC),
        region="EXAMPLE",  # the placeholder ARN has no region code: the Region field is used
        account_id="123456789012", alarm_arn="arn:aws:cloudwatch:REGION:ACCOUNT_NUMBER:alarm:EXAMPLE",
        metric="AWS/EC2 NetworkOut", threshold=0.0, comparison="GreaterThanThreshold",
        dimensions={"InstanceId": "TestInstance"}, treat_missing_data="missing",
    )


def test_metric_math_alarm_fixture() -> None:
    event = alarm(MATH)
    assert event.metric == "metric math: m1*1"
    assert event.dimensions == {"InstanceId": "TestInstance"}
    assert (event.name, event.state, event.old_state, event.threshold, event.comparison) == (
        "EXAMPLE", "ALARM", "INSUFFICIENT_DATA", 0.0, "GreaterThanThreshold")
    assert event.account_id == "EXAMPLE"
    assert event.reason == EXAMPLE_REASON
    assert event.changed_at == datetime(2015, 6, 3, 17, 43, 27, 123000, tzinfo=UTC)
    assert event.treat_missing_data == "missing"


# --- CloudWatch alarm variants ---------------------------------------------------------------------

def _variant(base: str, **changes: Any) -> str:
    data = json.loads(base)
    trigger_changes = changes.pop("Trigger", None)
    data.update(changes)
    if trigger_changes is not None:
        data["Trigger"] = {**data["Trigger"], **trigger_changes} if trigger_changes else None
    return json.dumps({k: v for k, v in data.items() if v is not None})


def test_bedrock_alarm_with_capitalised_dimension_keys_and_ok_state() -> None:
    text = _variant(SINGLE, AlarmName="bedrock-bot-team-eng-tokens-24h", NewStateValue="OK",
                    OldStateValue="ALARM", AlarmArn="arn:aws:cloudwatch:us-east-1:123456789012:alarm:x",
                    StateChangeTime="2026-11-25T10:30:00.000+0000",
                    Trigger={"MetricName": "InputTokenCount", "Namespace": "AWS/Bedrock", "Threshold": 5e6,
                             "ComparisonOperator": "GreaterThanOrEqualToThreshold",
                             "TreatMissingData": "notBreaching",
                             "Dimensions": [{"Name": "ModelId", "Value": "abcd1234efgh"}]})
    event = alarm(text)
    assert (event.state, event.old_state, event.metric, event.threshold) == (
        "OK", "ALARM", "AWS/Bedrock InputTokenCount", 5_000_000.0)
    assert event.dimensions == {"ModelId": "abcd1234efgh"}
    assert event.region == "us-east-1"
    assert event.treat_missing_data == "notBreaching"
    assert event.changed_at == datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


def test_metric_math_over_several_profiles_keeps_every_dimension_value() -> None:
    def stat(i: str, model: str) -> dict[str, Any]:
        return {"Id": i, "ReturnData": False, "MetricStat": {"Period": 3600, "Stat": "Sum", "Metric": {
            "Namespace": "AWS/Bedrock", "MetricName": "InputTokenCount",
            "Dimensions": [{"Name": "ModelId", "Value": model}]}}}

    metrics = [stat("m1", "p1"), stat("m2", "p2"), stat("m3", "p1"),
               {"Id": "e1", "Expression": "m1+m2+m3", "Label": "tokens", "ReturnData": True}]
    event = alarm(_variant(MATH, Trigger={"Metrics": metrics}))
    assert event.metric == "metric math: m1+m2+m3"
    assert event.dimensions == {"ModelId": "p1,p2"}


def test_an_alarm_on_one_metric_stat_in_the_metrics_list() -> None:
    metrics = [{"Id": "m1", "ReturnData": True, "MetricStat": {"Metric": {
        "Namespace": "AWS/Bedrock", "MetricName": "OutputTokenCount", "Dimensions": []}}}]
    assert alarm(_variant(MATH, Trigger={"Metrics": metrics})).metric == "AWS/Bedrock OutputTokenCount"


def test_an_anomaly_detection_alarm_has_no_fixed_threshold() -> None:
    event = alarm(_variant(MATH, Trigger={"Threshold": None, "ThresholdMetricId": "ad1"}))
    assert event.threshold is None


def test_a_composite_alarm_has_no_metric() -> None:
    text = json.dumps({"AlarmName": "all-bedrock", "NewStateValue": "ALARM", "OldStateValue": "OK",
                       "NewStateReason": "arn:...:alarm:a transitioned to ALARM",
                       "AlarmRule": "ALARM(a) OR ALARM(b)",
                       "StateChangeTime": "2026-01-02T03:04:05.000+0000"})
    event = alarm(text)
    assert (event.metric, event.threshold, event.comparison, event.dimensions) == (None, None, None, {})


def test_odd_field_types_become_none_not_errors() -> None:
    event = alarm(_variant(SIMPLE, AlarmDescription=["x"], StateChangeTime="yesterday", OldStateValue="WEIRD",
                           Trigger={"Threshold": "5", "Dimensions": "InstanceId=i-1", "TreatMissingData": 7}))
    assert (event.description, event.changed_at, event.old_state, event.threshold) == (None, None, None, None)
    assert (event.dimensions, event.treat_missing_data) == ({}, None)


# --- AWS Budgets fixtures --------------------------------------------------------------------------

def test_budgets_actual_fixture() -> None:
    assert budget(ACTUAL) == BudgetEvent(
        budget_name="Test Budget", kind="ACTUAL", period="monthly", budgeted=Decimal("0.20"),
        amount=Decimal("0.59"), threshold="$0.16", account_id="017790921725", currency="USD", raw=ACTUAL)


def test_budgets_forecasted_fixture() -> None:
    assert budget(FORECASTED) == BudgetEvent(
        budget_name="test", kind="FORECASTED", period="monthly", budgeted=Decimal("0.02"),
        amount=Decimal("0.95"), threshold="$0.00", account_id="391613010373", currency="USD", raw=FORECASTED)


# --- AWS Budgets wording variants ------------------------------------------------------------------

def test_daily_budget_wording() -> None:
    # What AWS sends for a daily budget: "... is greater than $X per day. Yesterday, the ACTUAL Cost ..."
    text = ACTUAL.replace("is greater than $0.16 for the current month. The ACTUAL Cost",
                          "is greater than $0.16 per day. Yesterday, the ACTUAL Cost")
    assert text != ACTUAL
    event = budget(text)
    assert (event.period, event.kind, event.amount, event.threshold, event.budget_name) == (
        "daily", "ACTUAL", Decimal("0.59"), "$0.16", "Test Budget")


def test_daily_forecasted_wording() -> None:
    text = FORECASTED.replace("for the current month.", "for the current day.")
    event = budget(text)
    assert (event.period, event.kind, event.amount) == ("daily", "FORECASTED", Decimal("0.95"))


def test_daily_wording_without_the_threshold_sentence() -> None:
    lines = [line for line in ACTUAL.splitlines() if not line.startswith("You requested")]
    text = "\n".join(lines).replace("Dear AWS Customer,", "Dear AWS Customer,\n\nYesterday, the ACTUAL Cost "
                                    "associated with this budget is $0.59.")
    assert budget(text).period == "daily"


@pytest.mark.parametrize(("wording", "period"), [
    ("for the current quarter", "quarterly"), ("for the current year", "annually"),
    ("per month", "monthly"), ("per quarter", "quarterly"), ("per year", "annually"),
])
def test_other_period_wording(wording: str, period: str) -> None:
    assert budget(ACTUAL.replace("for the current month", wording)).period == period


def test_older_title_case_wording() -> None:
    text = (ACTUAL.replace("ACTUAL Cost", "Actual Cost").replace("Alert Type: ACTUAL", "Alert Type: Actual")
            .replace("ACTUAL Amount:", "Actual Amount:"))
    event = budget(text)
    assert (event.kind, event.amount, event.period) == ("ACTUAL", Decimal("0.59"), "monthly")


def test_crlf_line_endings_and_thousands_separators() -> None:
    text = (ACTUAL.replace("Budgeted Amount: $0.20", "Budgeted Amount: $12,500.00")
            .replace("ACTUAL Amount: $0.59", "ACTUAL Amount: $10,123.45").replace("\n", "\r\n"))
    event = budget(text)
    assert (event.budgeted, event.amount, event.budget_name, event.threshold) == (
        Decimal("12500.00"), Decimal("10123.45"), "Test Budget", "$0.16")


def test_percentage_threshold_and_sentence_fallbacks() -> None:
    lines = [line for line in ACTUAL.splitlines()
             if not line.startswith(("Budget Name", "Alert Type", "Alert Threshold", "ACTUAL Amount"))]
    text = "\n".join(lines).replace("greater than $0.16", "greater than 80%")
    event = budget(text)
    assert (event.budget_name, event.kind, event.threshold, event.amount, event.budgeted) == (
        "Test Budget", "ACTUAL", "80%", Decimal("0.59"), Decimal("0.20"))


def test_a_budget_name_with_the_word_budget_in_it() -> None:
    text = ACTUAL.replace("Test Budget", "Bedrock budget for team-eng")
    assert budget(text).budget_name == "Bedrock budget for team-eng"


def test_a_usage_budget_has_no_currency() -> None:
    text = (ACTUAL.replace("ACTUAL Cost", "ACTUAL Usage").replace("Budget Type: Cost", "Budget Type: Usage")
            .replace("Budgeted Amount: $0.20", "Budgeted Amount: 100.00 Hrs")
            .replace("ACTUAL Amount: $0.59", "ACTUAL Amount: 120.5 Hrs"))
    event = budget(text)
    assert (event.budgeted, event.amount, event.currency) == (Decimal("100.00"), Decimal("120.5"), None)


# --- garbage -----------------------------------------------------------------------------------------

GARBAGE = [
    "", " ", "hello", "boo", "{}", "[]", "null", "42", '"ALARM"', "{", '{"AlarmName": "x"}',
    '{"AlarmName": "x", "NewStateValue": "ANGRY"}', '{"AlarmName": "", "NewStateValue": "ALARM"}',
    '{"AlarmName": 5, "NewStateValue": "ALARM"}', '[{"AlarmName": "x", "NewStateValue": "ALARM"}]',
    "AWS Budget Notification September 26, 2022\nAWS Account 017790921725\n",
    "Budget Name: x\nAlert Type: SOMETIMES\n",
    "Alert Type: ACTUAL\n",
    "[" * 50_000,
    json.dumps({"Type": "Notification", "Message": "boo"}),
]


@pytest.mark.parametrize("text", GARBAGE, ids=[f"garbage{i}" for i in range(len(GARBAGE))])
def test_garbage_is_unrecognised(text: str) -> None:
    for parse in (parse_any, parse_alarm, parse_budget):
        with pytest.raises(UnrecognisedMessage):
            parse(text)


def test_each_parser_refuses_the_other_kind() -> None:
    for text in (SIMPLE, SINGLE, MATH):
        with pytest.raises(UnrecognisedMessage):
            parse_budget(text)
    for text in (ACTUAL, FORECASTED):
        with pytest.raises(UnrecognisedMessage):
            parse_alarm(text)


def test_unrecognised_is_a_value_error() -> None:
    assert issubclass(UnrecognisedMessage, ValueError)


# --- fuzzing -------------------------------------------------------------------------------------------

def _only_unrecognised(text: str) -> None:
    with contextlib.suppress(UnrecognisedMessage):
        parse_any(text)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_arbitrary_text_raises_only_unrecognised(text: str) -> None:
    _only_unrecognised(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=15,
)
ALARM_KEYS = ["AlarmName", "AlarmDescription", "AWSAccountId", "NewStateValue", "OldStateValue",
              "NewStateReason", "StateChangeTime", "Region", "AlarmArn", "Trigger"]
TRIGGER_KEYS = ["MetricName", "Namespace", "Dimensions", "Threshold", "ComparisonOperator",
                "TreatMissingData", "Metrics"]


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([SIMPLE, SINGLE, MATH]),
       changes=st.dictionaries(st.sampled_from(ALARM_KEYS), json_values, max_size=3),
       trigger=st.dictionaries(st.sampled_from(TRIGGER_KEYS), json_values, max_size=3))
def test_mutated_alarms_raise_only_unrecognised(base: str, changes: dict[str, Any],
                                                trigger: dict[str, Any]) -> None:
    data = {**json.loads(base), **changes}
    if isinstance(data.get("Trigger"), dict):
        data["Trigger"] = {**data["Trigger"], **trigger}
    _only_unrecognised(json.dumps(data))


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([ACTUAL, FORECASTED]), cut=st.integers(0, 600), insert=st.text(max_size=20),
       at=st.integers(0, 600))
def test_mutated_budgets_raise_only_unrecognised(base: str, cut: int, insert: str, at: int) -> None:
    text = base[:at] + insert + base[at:]
    _only_unrecognised(text[:cut] + text[cut + 5:])
