"""The alarm and budget builders (exact specs, CloudWatch/Budgets constraints, names that map back
to their limit) and the two adapters: botocore's Stubber checks every call against the real
service model; moto covers what it implements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from bot.aws.alarms import (
    MAX_METRIC_STATS,
    Alarms,
    alarm_matches,
    alarm_name,
    build_alarm,
    parse_alarm_name,
    plan_alarms,
)
from bot.aws.budgets import (
    Budgets,
    budget_name,
    build_budget,
    parse_budget_name,
    plan_budget,
    plan_notifications,
    tag_filter,
    usd,
)
from bot.errors import AwsError

ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:bedrock-bot-alarms"
OTHER_TOPIC = f"arn:aws:sns:us-east-1:{ACCOUNT}:elsewhere"
AIPS = [f"{i:012x}" for i in range(1, 12)]
LIMIT_IDS = st.integers(min_value=1, max_value=10**18 - 1)


def cw_client() -> Any:
    return boto3.client("cloudwatch", region_name="us-east-1")


def budgets_client() -> Any:
    return boto3.client("budgets", region_name="us-east-1")


def stat(qid: str, metric: str, aip: str, period: int = 86_400) -> dict[str, Any]:
    return {"Id": qid, "MetricStat": {"Metric": {"Namespace": "AWS/Bedrock", "MetricName": metric,
                                                 "Dimensions": [{"Name": "ModelId", "Value": aip}]},
                                      "Period": period, "Stat": "Sum"},
            "ReturnData": False}


# ---------------------------------------------------------------- names


def test_names() -> None:
    assert alarm_name(7) == "bedrock-bot-limit-7"
    assert alarm_name(7, 2) == "bedrock-bot-limit-7-p2"
    assert budget_name(7) == "bedrock-bot-limit-7"
    assert parse_alarm_name("bedrock-bot-limit-12") == (12, 0)
    assert parse_alarm_name("bedrock-bot-limit-12-p3") == (12, 3)
    assert parse_budget_name("bedrock-bot-limit-12") == 12
    with pytest.raises(ValueError):
        alarm_name(0)
    with pytest.raises(ValueError):
        budget_name(-1)


@pytest.mark.parametrize("name", [
    "", "bedrock-bot-limit-", "bedrock-bot-limit-0", "bedrock-bot-limit-012", "bedrock-bot-limit-1-p0",
    "bedrock-bot-limit-1-p", "bedrock-bot-limit-1x", "bedrock-bot-deny-alice", "Bedrock-bot-limit-1",
    "bedrock-bot-limit-1 ", "bedrock-bot-limit-٣", "x-bedrock-bot-limit-1",
])
def test_foreign_names_do_not_parse(name: str) -> None:
    assert parse_alarm_name(name) is None
    assert parse_budget_name(name) is None


def test_a_part_suffix_is_an_alarm_name_only() -> None:
    assert parse_budget_name("bedrock-bot-limit-1-p2") is None


@given(LIMIT_IDS, st.integers(min_value=0, max_value=999_999))
def test_alarm_name_round_trip(limit_id: int, part: int) -> None:
    name = alarm_name(limit_id, part)
    assert parse_alarm_name(name) == (limit_id, part)
    assert len(name) <= 255


@given(LIMIT_IDS)
def test_budget_name_round_trip(limit_id: int) -> None:
    name = budget_name(limit_id)
    assert parse_budget_name(name) == limit_id
    assert len(name) <= 100 and ":" not in name and "\\" not in name


@given(st.text(alphabet="bedrockbtlimp-0123456789x", max_size=30))
def test_parsed_names_are_canonical(name: str) -> None:
    """Whatever parses is exactly what the builder makes, so one limit has one name per part."""
    parsed = parse_alarm_name(name)
    if parsed is not None:
        assert alarm_name(*parsed) == name
    limit_id = parse_budget_name(name)
    if limit_id is not None:
        assert budget_name(limit_id) == name


# ---------------------------------------------------------------- alarm specs


def test_build_alarm_for_a_24h_token_limit_is_exact() -> None:
    spec = build_alarm(12, ["bbbbbbbbbbbb", "aaaaaaaaaaaa"], "tokens", 5_000_000, "24h", TOPIC,
                       subject="alice")
    assert spec == {
        "AlarmName": "bedrock-bot-limit-12",
        "AlarmDescription": "bedrock-bot limit 12 of alice: 5000000 tokens per rolling 24h. "
                            "Managed by bedrock-bot; changes made here are overwritten.",
        "ActionsEnabled": True,
        "AlarmActions": [TOPIC],
        "OKActions": [TOPIC],
        "Metrics": [
            # tokens = input + output + cache read + cache write, as the bot counts them
            stat("m0", "InputTokenCount", "aaaaaaaaaaaa"),
            stat("m1", "OutputTokenCount", "aaaaaaaaaaaa"),
            stat("m2", "CacheReadInputTokenCount", "aaaaaaaaaaaa"),
            stat("m3", "CacheWriteInputTokenCount", "aaaaaaaaaaaa"),
            stat("m4", "InputTokenCount", "bbbbbbbbbbbb"),
            stat("m5", "OutputTokenCount", "bbbbbbbbbbbb"),
            stat("m6", "CacheReadInputTokenCount", "bbbbbbbbbbbb"),
            stat("m7", "CacheWriteInputTokenCount", "bbbbbbbbbbbb"),
            {"Id": "total", "Expression": "SUM([m0,m1,m2,m3,m4,m5,m6,m7])",
             "Label": "tokens of alice over 24h (limit 12)", "ReturnData": True},
        ],
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": 5_000_000.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": [{"Key": "managed-by", "Value": "bedrock-bot"}, {"Key": "limit-id", "Value": "12"}],
    }


@pytest.mark.parametrize(("metric", "names"), [
    ("output_tokens", ["OutputTokenCount"]),
    ("requests", ["Invocations"]),
])
def test_build_alarm_single_metric_limits_over_7d(metric: str, names: list[str]) -> None:
    spec = build_alarm(3, ["aaaaaaaaaaaa"], metric, 1000, "7d", TOPIC, part=2)
    assert spec["AlarmName"] == "bedrock-bot-limit-3-p2"
    assert spec["Metrics"][:-1] == [stat("m0", names[0], "aaaaaaaaaaaa", period=604_800)]
    assert spec["Metrics"][-1]["Expression"] == "SUM([m0])"  # brackets: a time series, not a scalar
    assert spec["Threshold"] == 1000.0


def test_an_input_limit_alarm_counts_cache_tokens_as_input() -> None:
    spec = build_alarm(4, ["aaaaaaaaaaaa"], "input_tokens", 1000, "24h", TOPIC)
    assert [q["MetricStat"]["Metric"]["MetricName"] for q in spec["Metrics"][:-1]] == [
        "InputTokenCount", "CacheReadInputTokenCount", "CacheWriteInputTokenCount"]
    assert spec["Metrics"][-1]["Expression"] == "SUM([m0,m1,m2])"


@pytest.mark.parametrize(("args", "message"), [
    ((["a"], "cost_usd", 1, "24h"), "metric"),
    ((["a"], "tokens", 1, "week"), "window"),
    ((["a"], "tokens", 1, "30d"), "window"),
    (([], "tokens", 1, "24h"), "at least one"),
    ((AIPS[:6], "tokens", 1, "24h"), "at most 10"),
    ((["a"], "tokens", 0, "24h"), "amount"),
])
def test_build_alarm_refuses_what_one_alarm_cannot_be(args: tuple[Any, ...], message: str) -> None:
    ids, metric, amount, window = args
    with pytest.raises(ValueError, match=message):
        build_alarm(1, ids, metric, amount, window, TOPIC)


@pytest.mark.parametrize(("metric", "window", "n", "note"), [
    ("tokens", "day", 1, "calendar day restarts at its boundary"),
    ("tokens", "week", 1, "calendar week"),
    ("requests", "month", 1, "calendar month"),
    ("tokens", "30d", 1, "longer than the 7 days"),
    ("tokens", "24h", 0, "no inference profile"),
    ("tokens", "24h", 3, "needs 12 metrics (3 inference profiles x 4)"),
    ("input_tokens", "7d", 4, "needs 12 metrics (4 inference profiles x 3)"),
    ("requests", "7d", 11, "needs 11 metrics"),
])
def test_plan_alarms_falls_back_with_a_note(metric: str, window: str, n: int, note: str) -> None:
    specs, why = plan_alarms(5, AIPS[:n], metric, 100, window, TOPIC)
    assert specs == []
    assert why is not None and note in why
    assert "bot's own evaluation" in why or "provisioned" in why


def test_plan_alarms_never_splits_a_sum() -> None:
    """Alarms over parts of the AIPs could all stay below the amount while the total is above it."""
    specs, why = plan_alarms(5, AIPS[:6], "tokens", 100, "24h", TOPIC)
    assert specs == [] and why is not None and "only part of the total" in why


def test_plan_alarms_up_to_the_metric_limit() -> None:
    specs, why = plan_alarms(5, AIPS[:2], "tokens", 100, "24h", TOPIC)
    assert why is None and len(specs) == 1
    assert sum("MetricStat" in q for q in specs[0]["Metrics"]) == 8  # 4 metrics x 2 AIPs
    specs, why = plan_alarms(5, AIPS[:3], "input_tokens", 100, "24h", TOPIC)
    assert why is None and sum("MetricStat" in q for q in specs[0]["Metrics"]) == 9
    specs, why = plan_alarms(5, AIPS[:10], "requests", 100, "7d", TOPIC)
    assert why is None and len(specs) == 1
    assert sum("MetricStat" in q for q in specs[0]["Metrics"]) == MAX_METRIC_STATS


def test_plan_alarms_leaves_cost_to_budgets() -> None:
    assert plan_alarms(5, AIPS[:1], "cost_usd", 100, "24h", TOPIC) == ([], None)


def test_duplicate_profiles_count_once() -> None:
    specs, _ = plan_alarms(5, ["aaaaaaaaaaaa", "aaaaaaaaaaaa"], "tokens", 100, "24h", TOPIC)
    assert len(specs[0]["Metrics"]) == 5  # four metrics of one AIP, one expression


_METRIC_ID = re.compile(r"^[a-z][A-Za-z0-9_]*$")


@given(st.sampled_from(["tokens", "input_tokens", "output_tokens", "requests", "cost_usd"]),
       st.sampled_from(["day", "week", "month", "24h", "7d", "30d"]),
       st.integers(min_value=0, max_value=11), st.integers(min_value=1, max_value=10**15))
def test_every_planned_alarm_respects_cloudwatch(metric: str, window: str, n: int, amount: int) -> None:
    specs, note = plan_alarms(9, AIPS[:n], metric, amount, window, TOPIC)
    assert len(specs) <= 1 and (bool(specs) != bool(note) or metric == "cost_usd")
    for spec in specs:
        queries = spec["Metrics"]
        stats = [q for q in queries if "MetricStat" in q]
        exprs = [q for q in queries if "Expression" in q]
        assert len(stats) <= 10 and len(exprs) <= 10 and len(queries) <= 20
        assert [q["ReturnData"] for q in queries].count(True) == 1 and exprs[-1]["ReturnData"]
        assert len({q["Id"] for q in queries}) == len(queries)
        assert all(_METRIC_ID.match(q["Id"]) for q in queries)
        assert set(re.findall(r"m\d+", exprs[0]["Expression"])) == {q["Id"] for q in stats}
        assert len(exprs[0]["Expression"]) <= 2048
        for q in stats:
            period = q["MetricStat"]["Period"]
            total = period * spec["EvaluationPeriods"]
            assert period % 60 == 0 and total <= 604_800 and (period >= 3600 or total <= 86_400)
        assert spec["Threshold"] == float(amount) and int(spec["Threshold"]) == amount  # exact double
        assert spec["AlarmActions"] == spec["OKActions"] == [TOPIC]


def test_alarm_spec_is_valid_for_the_real_service_model() -> None:
    """Stubber validates the request against botocore's PutMetricAlarm model."""
    spec = build_alarm(12, AIPS[:2], "tokens", 5_000_000, "24h", TOPIC, subject="team-eng")
    client = cw_client()
    with Stubber(client) as stub:
        stub.add_response("put_metric_alarm", {}, spec)
        Alarms(client).put(spec)
        stub.assert_no_pending_responses()


# ---------------------------------------------------------------- budget specs


def test_usd_is_exact() -> None:
    assert usd(200_000_000) == "200"
    assert usd(1_500_000) == "1.5"
    assert usd(1) == "0.000001"
    assert usd(123_456_789_012) == "123456.789012"
    with pytest.raises(ValueError):
        usd(0)


def test_tag_filter_uses_the_user_defined_tag_form() -> None:
    assert tag_filter([("user", "alice"), ("team", "team-eng"), ("user", "alice")]) == [
        "user:team$team-eng", "user:user$alice"]


def notification(kind: str, threshold: float, topic: str = TOPIC) -> dict[str, Any]:
    return {"Notification": {"NotificationType": kind, "ComparisonOperator": "GREATER_THAN",
                             "Threshold": threshold, "ThresholdType": "PERCENTAGE"},
            "Subscribers": [{"SubscriptionType": "SNS", "Address": topic}]}


def test_build_budget_for_200_dollars_a_month_is_exact() -> None:
    spec = build_budget(ACCOUNT, 4, "user", "alice", 200 * 1_000_000, "month", [80, 90], TOPIC)
    assert spec == {
        "AccountId": ACCOUNT,
        "Budget": {
            "BudgetName": "bedrock-bot-limit-4",
            "BudgetLimit": {"Amount": "200", "Unit": "USD"},
            "CostFilters": {"TagKeyValue": ["user:user$alice"], "Service": ["Amazon Bedrock"]},
            "CostTypes": {"IncludeCredit": False, "IncludeRefund": False},
            "TimeUnit": "MONTHLY",
            "BudgetType": "COST",
        },
        "NotificationsWithSubscribers": [
            notification("ACTUAL", 80.0), notification("ACTUAL", 90.0), notification("ACTUAL", 100.0),
            notification("FORECASTED", 100.0),
        ],
        "ResourceTags": [{"Key": "managed-by", "Value": "bedrock-bot"}, {"Key": "limit-id", "Value": "4"}],
    }


def test_a_team_budget_counts_the_tags_given() -> None:
    spec = build_budget(ACCOUNT, 4, "team", "team-eng", 10**6, "day", [], TOPIC,
                        tags=[("team", "team-eng"), ("user", "alice"), ("team", "eng")])
    assert spec["Budget"]["CostFilters"] == {
        "TagKeyValue": ["user:team$eng", "user:team$team-eng", "user:user$alice"],
        "Service": ["Amazon Bedrock"]}
    assert spec["Budget"]["TimeUnit"] == "DAILY"
    assert spec["NotificationsWithSubscribers"] == [notification("ACTUAL", 100.0)]  # no daily forecast


def test_notifications_fit_in_five() -> None:
    out, dropped = plan_notifications([50, 60, 70, 80, 90], "MONTHLY", TOPIC)
    assert [(n["Notification"]["NotificationType"], n["Notification"]["Threshold"]) for n in out] == [
        ("ACTUAL", 70.0), ("ACTUAL", 80.0), ("ACTUAL", 90.0), ("ACTUAL", 100.0), ("FORECASTED", 100.0)]
    assert dropped == [50, 60]
    out, dropped = plan_notifications([50, 60, 70, 80, 90], "DAILY", TOPIC)
    assert len(out) == 5 and dropped == [50]
    out, dropped = plan_notifications([100, 80, 80, 0], "MONTHLY", TOPIC)
    assert len(out) == 3 and dropped == []


@pytest.mark.parametrize(("window", "kind"), [("week", "calendar"), ("24h", "rolling"), ("7d", "rolling"),
                                              ("30d", "rolling")])
def test_plan_budget_without_a_budgets_period(window: str, kind: str) -> None:
    spec, notes = plan_budget(ACCOUNT, 4, "user", "alice", 10**6, window, [80], TOPIC)
    assert spec is None
    assert notes == [f"no AWS Budget: Budgets has no {kind} {window} period (only daily, monthly, quarterly, "
                     "yearly); the bot's own evaluation enforces this limit"]


def test_plan_budget_says_which_warnings_it_leaves_to_the_bot() -> None:
    spec, notes = plan_budget(ACCOUNT, 4, "user", "alice", 10**6, "month", [50, 60, 70, 80, 90], TOPIC)
    assert spec is not None and len(spec["NotificationsWithSubscribers"]) == 5
    assert notes == ["AWS Budget warns at fewer thresholds (a budget holds 5 notifications): 50%, 60% "
                     "come from the bot only"]
    with pytest.raises(ValueError):
        build_budget(ACCOUNT, 4, "user", "alice", 10**6, "week", [], TOPIC)


def test_budget_spec_is_valid_for_the_real_service_model() -> None:
    spec = build_budget(ACCOUNT, 4, "team", "team-eng", 1_250_500_000, "month", [50, 80, 90], TOPIC)
    client = budgets_client()
    with Stubber(client) as stub:
        stub.add_response("create_budget", {}, spec)
        assert Budgets(client, ACCOUNT).put(spec) == "created"
        stub.assert_no_pending_responses()


# ---------------------------------------------------------------- Budgets adapter (update path: Stubber)


def _duplicate(stub: Stubber, spec: dict[str, Any]) -> None:
    stub.add_client_error("create_budget", "DuplicateRecordException", "the budget already exists",
                          400, expected_params=spec)


def _aws_budget(spec: dict[str, Any], amount: str) -> dict[str, Any]:
    b = spec["Budget"]
    return {"Budget": {"BudgetName": b["BudgetName"], "BudgetLimit": {"Amount": amount, "Unit": "USD"},
                       "CostFilters": b["CostFilters"], "TimeUnit": b["TimeUnit"], "BudgetType": "COST",
                       "CostTypes": {"IncludeCredit": False, "IncludeRefund": False, "IncludeTax": True}}}


def test_put_updates_an_existing_budget_and_replaces_only_changed_notifications() -> None:
    spec = build_budget(ACCOUNT, 4, "user", "alice", 300 * 10**6, "month", [80, 90], TOPIC)
    name = "bedrock-bot-limit-4"
    key = {"AccountId": ACCOUNT, "BudgetName": name}
    n = {k: notification(*a)["Notification"] for k, a in
         {"a80": ("ACTUAL", 80.0), "a50": ("ACTUAL", 50.0), "a100": ("ACTUAL", 100.0),
          "f100": ("FORECASTED", 100.0), "a90": ("ACTUAL", 90.0)}.items()}
    client = budgets_client()
    with Stubber(client) as stub:
        _duplicate(stub, spec)
        stub.add_response("describe_budget", _aws_budget(spec, "200.0"), key)
        stub.add_response("update_budget", {}, {"AccountId": ACCOUNT, "NewBudget": spec["Budget"]})
        stub.add_response("describe_notifications_for_budget",
                          {"Notifications": [{**n["a80"], "NotificationState": "ALARM"}, n["a50"],
                                             n["a100"]]}, key)
        # 80% is right (kept, state and all); 50% is no longer wanted; 100% goes to another topic.
        stub.add_response("describe_subscribers_for_notification",
                          {"Subscribers": [{"SubscriptionType": "SNS", "Address": TOPIC}]},
                          {**key, "Notification": n["a80"]})
        stub.add_response("delete_notification", {}, {**key, "Notification": n["a50"]})
        stub.add_response("describe_subscribers_for_notification",
                          {"Subscribers": [{"SubscriptionType": "SNS", "Address": OTHER_TOPIC}]},
                          {**key, "Notification": n["a100"]})
        stub.add_response("delete_notification", {}, {**key, "Notification": n["a100"]})
        for k in ("a90", "a100", "f100"):
            stub.add_response("create_notification", {},
                              {**key, "Notification": n[k],
                               "Subscribers": [{"SubscriptionType": "SNS", "Address": TOPIC}]})
        assert Budgets(client, ACCOUNT).put(spec) == "updated"
        stub.assert_no_pending_responses()


def test_put_leaves_a_matching_budget_alone() -> None:
    spec = build_budget(ACCOUNT, 4, "user", "alice", 200 * 10**6, "day", [], TOPIC)
    key = {"AccountId": ACCOUNT, "BudgetName": "bedrock-bot-limit-4"}
    only = notification("ACTUAL", 100.0)["Notification"]
    client = budgets_client()
    with Stubber(client) as stub:
        _duplicate(stub, spec)
        stub.add_response("describe_budget", _aws_budget(spec, "200.0"), key)  # "200.0" == "200"
        stub.add_response("describe_notifications_for_budget", {"Notifications": [only]}, key)
        stub.add_response("describe_subscribers_for_notification",
                          {"Subscribers": [{"SubscriptionType": "SNS", "Address": TOPIC}]},
                          {**key, "Notification": only})
        assert Budgets(client, ACCOUNT).put(spec) == "unchanged"
        stub.assert_no_pending_responses()


def test_budget_errors_name_the_aws_error() -> None:
    spec = build_budget(ACCOUNT, 4, "user", "alice", 10**6, "month", [], TOPIC)
    client = budgets_client()
    with Stubber(client) as stub:
        stub.add_client_error("create_budget", "AccessDeniedException", "not allowed", 400)
        stub.add_client_error("delete_budget", "AccessDeniedException", "not allowed", 400)
        with pytest.raises(AwsError, match="CreateBudget failed: AccessDeniedException"):
            Budgets(client, ACCOUNT).put(spec)
        with pytest.raises(AwsError, match="DeleteBudget failed: AccessDeniedException"):
            Budgets(client, ACCOUNT).delete("bedrock-bot-limit-4")


def test_list_budgets_pages_and_keeps_only_ours() -> None:
    client = budgets_client()
    with Stubber(client) as stub:
        stub.add_response("describe_budgets", {
            "Budgets": [{"BudgetName": "bedrock-bot-limit-2", "TimeUnit": "MONTHLY", "BudgetType": "COST"},
                        {"BudgetName": "finance-total", "TimeUnit": "MONTHLY", "BudgetType": "COST"}],
            "NextToken": "t1"}, {"AccountId": ACCOUNT})
        stub.add_response("describe_budgets", {
            "Budgets": [{"BudgetName": "bedrock-bot-limit-10", "TimeUnit": "DAILY", "BudgetType": "COST"},
                        {"BudgetName": "bedrock-bot-limit-x", "TimeUnit": "DAILY", "BudgetType": "COST"}]},
            {"AccountId": ACCOUNT, "NextToken": "t1"})
        assert Budgets(client, ACCOUNT).list_ours() == ["bedrock-bot-limit-10", "bedrock-bot-limit-2"]


@pytest.fixture
def moto_budgets() -> Iterator[Any]:
    with mock_aws():
        yield budgets_client()


def test_budgets_in_moto(moto_budgets: Any) -> None:
    adapter = Budgets(moto_budgets, ACCOUNT)
    spec = build_budget(ACCOUNT, 4, "user", "alice", 200 * 10**6, "month", [80], TOPIC)
    assert adapter.put(spec) == "created"
    assert adapter.list_ours() == ["bedrock-bot-limit-4"]
    got = moto_budgets.describe_budget(AccountId=ACCOUNT, BudgetName="bedrock-bot-limit-4")["Budget"]
    assert got["CostFilters"] == {"TagKeyValue": ["user:user$alice"], "Service": ["Amazon Bedrock"]}
    # What AWS would count (filters AND-ed, values OR-ed): alice's Bedrock calls, not her EC2 bill.
    assert counts(got["CostFilters"], "Amazon Bedrock", {"user": "alice"})
    assert not counts(got["CostFilters"], "Amazon Elastic Compute Cloud - Compute", {"user": "alice"})
    assert not counts(got["CostFilters"], "Amazon Bedrock", {"user": "bob"})
    assert adapter.delete("bedrock-bot-limit-4") is True
    assert adapter.delete("bedrock-bot-limit-4") is False  # NotFound: nothing to do
    assert adapter.list_ours() == []


# ---------------------------------------------------------------- Alarms adapter


@pytest.fixture
def moto_cw() -> Iterator[Any]:
    with mock_aws():
        yield cw_client()


def test_alarms_in_moto(moto_cw: Any) -> None:
    adapter = Alarms(moto_cw)
    for limit_id in (1, 12):
        adapter.put(build_alarm(limit_id, AIPS[:2], "tokens", 100, "24h", TOPIC))
    moto_cw.put_metric_alarm(AlarmName="bedrock-bot-limit-1-custom", MetricName="x", Namespace="y",
                             Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1,
                             ComparisonOperator="GreaterThanThreshold")  # someone else's
    assert adapter.list_ours() == ["bedrock-bot-limit-1", "bedrock-bot-limit-12"]
    assert adapter.names_for(1) == ["bedrock-bot-limit-1"]  # not 12, not the custom one
    adapter.delete(["bedrock-bot-limit-1", "bedrock-bot-limit-99"])  # 99 never existed
    assert adapter.list_ours() == ["bedrock-bot-limit-12"]
    described = adapter.describe("bedrock-bot-limit-12")
    assert described is not None and described["Threshold"] == 100.0
    assert adapter.describe("bedrock-bot-limit-1") is None


def test_delete_retries_one_by_one_when_a_name_is_unknown() -> None:
    client = cw_client()
    with Stubber(client) as stub:
        stub.add_client_error("delete_alarms", "ResourceNotFound", "no such alarm", 404,
                              expected_params={"AlarmNames": ["bedrock-bot-limit-1", "bedrock-bot-limit-2"]})
        stub.add_client_error("delete_alarms", "ResourceNotFound", "no such alarm", 404,
                              expected_params={"AlarmNames": ["bedrock-bot-limit-1"]})
        stub.add_response("delete_alarms", {}, {"AlarmNames": ["bedrock-bot-limit-2"]})
        Alarms(client).delete(["bedrock-bot-limit-2", "bedrock-bot-limit-1"])
        stub.assert_no_pending_responses()


def test_list_alarms_pages() -> None:
    client = cw_client()
    request = {"AlarmNamePrefix": "bedrock-bot-limit-", "AlarmTypes": ["MetricAlarm"]}
    with Stubber(client) as stub:
        stub.add_response("describe_alarms", {"MetricAlarms": [{"AlarmName": "bedrock-bot-limit-3"}],
                                              "NextToken": "n"}, request)
        stub.add_response("describe_alarms", {"MetricAlarms": [{"AlarmName": "bedrock-bot-limit-1-p2"},
                                                               {"AlarmName": "bedrock-bot-limit-1-x"}]},
                          {**request, "NextToken": "n"})
        assert Alarms(client).list_ours() == ["bedrock-bot-limit-1-p2", "bedrock-bot-limit-3"]


def test_alarm_errors_name_the_aws_error() -> None:
    client = cw_client()
    spec = build_alarm(1, AIPS[:1], "requests", 5, "24h", TOPIC)
    with Stubber(client) as stub:
        stub.add_client_error("put_metric_alarm", "AccessDenied", "no cloudwatch:PutMetricAlarm", 403)
        stub.add_client_error("delete_alarms", "Throttling", "slow down", 400)
        with pytest.raises(AwsError, match="PutMetricAlarm failed: AccessDenied"):
            Alarms(client).put(spec)
        with pytest.raises(AwsError, match="DeleteAlarms failed: Throttling"):
            Alarms(client).delete(["bedrock-bot-limit-1"])


def test_alarm_matches_what_describe_alarms_returns() -> None:
    spec = build_alarm(12, AIPS[:2], "tokens", 100, "24h", TOPIC, subject="alice")
    described = {k: v for k, v in spec.items() if k != "Tags"} | {
        "AlarmArn": f"arn:aws:cloudwatch:us-east-1:{ACCOUNT}:alarm:bedrock-bot-limit-12",
        "StateValue": "ALARM", "Dimensions": [], "InsufficientDataActions": [],
        "Metrics": [dict(q) for q in spec["Metrics"]]}
    assert alarm_matches(described, spec)
    assert not alarm_matches(described | {"Threshold": 101.0}, spec)
    assert not alarm_matches(described | {"OKActions": []}, spec)
    assert not alarm_matches(described | {"Metrics": described["Metrics"][1:]}, spec)
    other = build_alarm(12, AIPS[1:3], "tokens", 100, "24h", TOPIC, subject="alice")
    assert not alarm_matches(described, other)


def counts(filters: dict[str, list[str]], service: str, tags: dict[str, str]) -> bool:
    """Does a cost line (service, resource tags) reach a budget with these legacy CostFilters?
    Budgets AND-s the filter keys and OR-s the values of one key (docs/billing.md)."""
    line = {"Service": {service}, "TagKeyValue": {f"user:{k}${v}" for k, v in tags.items()}}
    return all(line.get(key, set()) & set(values) for key, values in filters.items())


def test_an_unrelated_tagged_cost_no_longer_reaches_the_bedrock_budget() -> None:
    old = {"TagKeyValue": ["user:user$alice"]}  # what the bot made before: the tag alone
    new = build_budget(ACCOUNT, 4, "user", "alice", 10**6, "day", [], TOPIC)["Budget"]["CostFilters"]
    ec2 = ("Amazon Elastic Compute Cloud - Compute", {"user": "alice"})
    assert counts(old, *ec2) and not counts(new, *ec2)
    claude = ("Claude Sonnet 4.5 (Amazon Bedrock Edition)", {"user": "alice"})
    with_claude = build_budget(ACCOUNT, 4, "user", "alice", 10**6, "day", [], TOPIC,
                               services=[claude[0]])["Budget"]["CostFilters"]
    assert not counts(new, *claude) and counts(with_claude, *claude)
    assert counts(new, "Amazon Bedrock", {"user": "alice"})
