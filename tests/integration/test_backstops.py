"""Backstops on a real database (SQLite and PostgreSQL) against moto's CloudWatch and Budgets: the
alarm a rolling token limit gets, the budget a $ limit gets, what changes and removal do, the
fallbacks (too many AIPs, windows AWS cannot express, alarm=off, no topic), orphans, and AWS
failures that are reported instead of failing the limit (Stubber, which checks the real model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws
from sqlalchemy import select

from bot.aws.alarms import Alarms, build_alarm
from bot.aws.budgets import Budgets
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import AwsError
from bot.models import AuditEvent, Limit, ModelPrice, Profile
from bot.quantities import Metric, Window, parse_amount
from bot.services import audit, backstops, directory, limits
from bot.services.backstops import BackstopResult
from bot.services.directory import Actor, SubjectRef

ACCOUNT = "123456789012"
REGION = "us-east-1"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:bedrock-bot-alarms"
ADMIN = Actor.slack("UADMIN01")


@dataclass
class World:
    db: Database
    clock: FixedClock
    cw: Any
    budgets_client: Any
    alarms: Alarms
    budgets: Budgets

    def aip(self, subject: str, pid: str, tags: dict[str, str] | None = None) -> None:
        with self.db.session_scope() as s:
            owner = directory.get(s, SubjectRef(name=subject))
            s.add(Profile(arn=f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/{pid}",
                          profile_id=pid, name=f"p-{pid}",
                          model_source=f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-3-haiku",
                          model_id="anthropic.claude-3-haiku",
                          tags=tags if tags is not None else {owner.kind: owner.name},
                          subject_id=owner.id, created_by=ADMIN.label, created_at=self.clock()))

    def limit(self, subject: str, spec: str, window: Window, metric: Metric = Metric.TOKENS,
              warn: tuple[int, ...] = (80, 90), alarm: bool = True) -> int:
        with self.db.session_scope() as s:
            view, _ = limits.set_limit(s, self.clock, ADMIN, SubjectRef(name=subject), parse_amount(spec),
                                       window, metric, warn, "revoke", alarm)
            return view.id

    def sync(self, limit_id: int, topic: str | None = TOPIC, budgets: Budgets | bool | None = True,
             **kw: Any) -> BackstopResult:
        with self.db.session_scope() as s:
            limit = s.get(Limit, limit_id)
            assert limit is not None
            return backstops.sync_backstops(s, self.clock, limit, self.alarms,
                                      self.budgets if budgets is True else budgets or None, topic, ACCOUNT,
                                      **kw)

    def remove(self, limit_id: int) -> BackstopResult:
        with self.db.session_scope() as s:
            return backstops.remove_backstops(s, self.clock, limit_id, self.alarms, self.budgets)

    def cw_alarms(self) -> dict[str, dict[str, Any]]:
        return {a["AlarmName"]: a for a in self.cw.describe_alarms()["MetricAlarms"]}

    def aws_budgets(self) -> dict[str, dict[str, Any]]:
        got = self.budgets_client.describe_budgets(AccountId=ACCOUNT)["Budgets"]
        return {b["BudgetName"]: b for b in got}

    def notifications(self, name: str) -> list[tuple[str, float]]:
        got = self.budgets_client.describe_notifications_for_budget(AccountId=ACCOUNT, BudgetName=name)
        return sorted((n["NotificationType"], n["Threshold"]) for n in got["Notifications"])

    def events(self, action: str) -> list[AuditEvent]:
        with self.db.session_scope() as s:
            q = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            return list(s.scalars(q))


@pytest.fixture
def world(db: Database, clock: FixedClock) -> Iterator[World]:
    """Admin; alice, bob, carol; team-eng with alice and bob; moto CloudWatch and Budgets."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        for name in ("alice", "bob", "carol"):
            directory.ensure_user(s, clock, ADMIN, SubjectRef(name=name))
        directory.change_members(s, clock, ADMIN, "team-eng", "add",
                                 [SubjectRef(name="alice"), SubjectRef(name="bob")])
    with mock_aws():
        cw = boto3.client("cloudwatch", region_name=REGION)
        bc = boto3.client("budgets", region_name=REGION)
        yield World(db, clock, cw, bc, Alarms(cw), Budgets(bc, ACCOUNT))
    with db.session_scope() as s:
        result = audit.verify(s)
    assert result.ok, result.reason


def metric_pairs(alarm: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(q["MetricStat"]["Metric"]["Dimensions"][0]["Value"], q["MetricStat"]["Metric"]["MetricName"],
             q["MetricStat"]["Period"]) for q in alarm["Metrics"] if "MetricStat" in q]


def test_a_24h_token_limit_gets_one_alarm_on_its_aips(world: World) -> None:
    world.aip("alice", "alice0000001")
    world.aip("alice", "alice0000002")
    world.aip("bob", "bob000000001")  # someone else's: not watched
    lid = world.limit("alice", "5M", Window.H24)

    result = world.sync(lid)

    name = f"bedrock-bot-limit-{lid}"
    assert result == BackstopResult([name], None, [], changes={name: "created"})
    alarm = world.cw_alarms()[f"bedrock-bot-limit-{lid}"]
    # tokens = input + output + cache read + cache write, as the bot's own count
    assert metric_pairs(alarm) == [(aip, name, 86_400) for aip in ("alice0000001", "alice0000002")
                                   for name in ("InputTokenCount", "OutputTokenCount",
                                                "CacheReadInputTokenCount", "CacheWriteInputTokenCount")]
    total = alarm["Metrics"][-1]
    assert total["Expression"] == "SUM([m0,m1,m2,m3,m4,m5,m6,m7])" and total["ReturnData"] is True
    assert alarm["Threshold"] == 5_000_000.0
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["EvaluationPeriods"] == 1 and alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == alarm["OKActions"] == [TOPIC]
    tags = world.cw.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"managed-by": "bedrock-bot", "limit-id": str(lid)}
    [event] = world.events("backstops.sync")
    assert event.outcome == "ok" and event.target == "user:alice"
    assert json.loads(event.details)["alarms"] == [f"bedrock-bot-limit-{lid}"]


def test_changing_the_amount_updates_the_threshold_and_removal_deletes_it(world: World) -> None:
    world.aip("alice", "alice0000001")
    lid = world.limit("alice", "5M", Window.H24)
    world.sync(lid)
    assert world.limit("alice", "8M", Window.H24) == lid  # same limit, new amount

    again = world.sync(lid)

    assert again.alarms == [f"bedrock-bot-limit-{lid}"] and again.deleted == []
    assert again.changes == {f"bedrock-bot-limit-{lid}": "updated"}
    assert world.sync(lid).changes == {}  # already right: not rewritten
    assert list(world.cw_alarms()) == [f"bedrock-bot-limit-{lid}"]
    assert world.cw_alarms()[f"bedrock-bot-limit-{lid}"]["Threshold"] == 8_000_000.0

    gone = world.remove(lid)

    name = f"bedrock-bot-limit-{lid}"
    assert gone == BackstopResult([], None, [], [name], changes={name: "deleted"})
    assert world.cw_alarms() == {}
    [event] = world.events("backstops.remove")
    assert event.outcome == "ok" and event.target == f"limit:{lid}"
    assert world.remove(lid).deleted == []  # idempotent


def test_a_7d_request_limit_sums_a_week(world: World) -> None:
    world.aip("carol", "carol0000001")
    lid = world.limit("carol", "10k", Window.D7, metric=Metric.REQUESTS)
    world.sync(lid)
    alarm = world.cw_alarms()[f"bedrock-bot-limit-{lid}"]
    assert metric_pairs(alarm) == [("carol0000001", "Invocations", 604_800)]


def test_three_aips_need_twelve_metrics_so_no_alarm_and_the_old_one_goes(world: World) -> None:
    for i in range(2):
        world.aip("alice", f"alice000000{i}")
    lid = world.limit("alice", "5M", Window.H24)
    assert world.sync(lid).alarms == [f"bedrock-bot-limit-{lid}"]
    for i in range(2, 3):  # one more provisioned: the alarm would now miss part of the sum
        world.aip("alice", f"alice000000{i}")

    result = world.sync(lid)

    assert result.alarms == [] and result.deleted == [f"bedrock-bot-limit-{lid}"]
    [note] = result.notes
    assert "needs 12 metrics (3 inference profiles x 4)" in note and "at most 10" in note
    assert "bot's own evaluation" in note
    assert world.cw_alarms() == {}


def test_a_team_limit_watches_the_members_aips_too(world: World) -> None:
    world.aip("team-eng", "teameng00001")
    world.aip("alice", "alice0000001")
    world.aip("carol", "carol0000001")  # not a member
    lid = world.limit("team-eng", "2M", Window.H24, metric=Metric.INPUT)
    world.sync(lid)
    alarm = world.cw_alarms()[f"bedrock-bot-limit-{lid}"]
    cache = ("CacheReadInputTokenCount", "CacheWriteInputTokenCount")  # input includes cache tokens
    assert [p[:2] for p in metric_pairs(alarm)] == [
        ("alice0000001", "InputTokenCount"), *(("alice0000001", c) for c in cache),
        ("teameng00001", "InputTokenCount"), *(("teameng00001", c) for c in cache)]
    with world.db.session_scope() as s:
        alice = directory.get(s, SubjectRef(name="alice"))
        assert [limit.id for limit in backstops.affected_limits(s, alice.id)] == [lid]


def _marketplace_name_known(world: World) -> None:
    """What `prices refresh` stores for Claude 3 Haiku (a Marketplace product)."""
    with world.db.session_scope() as s:
        s.add(ModelPrice(region=REGION, model_id="anthropic.claude-3-haiku-20240307-v1:0",
                         input="0.00025", output="0.00125", cache_read="0.00025",
                         cache_write="0.00025", source="AmazonBedrockFoundationModels: Claude 3 Haiku",
                         fetched_at=world.clock()))


def test_a_200_dollar_month_gets_a_budget_on_the_cost_allocation_tag(world: World) -> None:
    world.aip("alice", "alice0000001")
    _marketplace_name_known(world)
    lid = world.limit("alice", "$200", Window.MONTH, metric=Metric.COST)

    result = world.sync(lid)

    name = f"bedrock-bot-limit-{lid}"
    assert result == BackstopResult([], name, [], changes={name: "created"})
    budget = world.aws_budgets()[name]
    assert budget["BudgetType"] == "COST" and budget["TimeUnit"] == "MONTHLY"
    assert budget["BudgetLimit"] == {"Amount": "200", "Unit": "USD"}
    # Bedrock only: Amazon Bedrock and the Marketplace service Claude bills under
    assert budget["CostFilters"] == {"TagKeyValue": ["user:user$alice"],
                                     "Service": ["Amazon Bedrock", "Claude 3 Haiku (Amazon Bedrock Edition)"]}
    assert world.notifications(name) == [("ACTUAL", 80.0), ("ACTUAL", 90.0), ("ACTUAL", 100.0),
                                         ("FORECASTED", 100.0)]
    assert world.cw_alarms() == {}
    assert json.loads(world.events("backstops.sync")[-1].details)["changes"] == {name: "created"}
    # (a second sync takes the update path: moto has no DescribeSubscribersForNotification or
    # UpdateBudget, so that path is tested with Stubber in tests/unit/test_alarms_budgets.py)

    assert world.remove(lid).deleted == [name]
    assert world.aws_budgets() == {}


def test_a_team_budget_counts_every_member_and_adopted_tags(world: World) -> None:
    world.aip("team-eng", "teameng00001", tags={"team": "eng"})  # adopted: tagged team=eng
    world.aip("bob", "bob000000001")
    lid = world.limit("team-eng", "$50", Window.DAY, metric=Metric.COST, warn=())
    world.sync(lid)
    budget = world.aws_budgets()[f"bedrock-bot-limit-{lid}"]
    assert budget["TimeUnit"] == "DAILY"
    assert budget["CostFilters"] == {"TagKeyValue": ["user:team$eng", "user:team$team-eng",
                                                     "user:user$alice", "user:user$bob"],
                                     "Service": ["Amazon Bedrock"]}
    assert world.notifications(f"bedrock-bot-limit-{lid}") == [("ACTUAL", 100.0)]  # no daily forecast


def test_a_marketplace_model_with_no_known_service_name_is_noted(world: World) -> None:
    world.aip("alice", "alice0000001")
    lid = world.limit("alice", "$200", Window.MONTH, metric=Metric.COST)
    result = world.sync(lid)
    assert result.notes == ["AWS Budget does not see anthropic.claude-3-haiku yet: it bills under its "
                            "Marketplace service name, learnt by `bedrock-bot prices refresh`"]
    budget = world.aws_budgets()[f"bedrock-bot-limit-{lid}"]
    assert budget["CostFilters"]["Service"] == ["Amazon Bedrock"]


@pytest.mark.parametrize(("metric", "spec", "window", "note"), [
    (Metric.TOKENS, "5M", Window.WEEK, "calendar week restarts at its boundary"),
    (Metric.TOKENS, "5M", Window.D30, "longer than the 7 days"),
    (Metric.COST, "$10", Window.WEEK, "no AWS Budget: Budgets has no calendar week period"),
    (Metric.COST, "$10", Window.H24, "no AWS Budget: Budgets has no rolling 24h period"),
])
def test_windows_aws_cannot_express_get_nothing_and_a_note(world: World, metric: Metric, spec: str,
                                                           window: Window, note: str) -> None:
    world.aip("alice", "alice0000001")
    lid = world.limit("alice", spec, window, metric=metric)
    result = world.sync(lid)
    assert result.alarms == [] and result.budget is None
    assert len(result.notes) == 1 and note in result.notes[0]
    assert world.cw_alarms() == {} and world.aws_budgets() == {}


def test_alarm_off_and_no_topic_remove_what_was_there(world: World) -> None:
    world.aip("alice", "alice0000001")
    tokens = world.limit("alice", "5M", Window.H24)
    dollars = world.limit("alice", "$200", Window.MONTH, metric=Metric.COST)
    world.sync(tokens)
    world.sync(dollars)
    assert len(world.cw_alarms()) == 1 and len(world.aws_budgets()) == 1

    world.limit("alice", "5M", Window.H24, alarm=False)
    off = world.sync(tokens)
    no_topic = world.sync(dollars, topic=None)

    assert off.notes == [backstops.ALARM_OFF] and off.deleted == [f"bedrock-bot-limit-{tokens}"]
    assert no_topic.notes == [backstops.NO_TOPIC] and no_topic.deleted == [f"bedrock-bot-limit-{dollars}"]
    assert off.notes[0].startswith("alarm=off") and no_topic.notes[0].startswith("no BOT_ALARM_TOPIC_ARN")
    assert world.cw_alarms() == {} and world.aws_budgets() == {}


def test_a_cost_limit_without_budgets_configured_says_so(world: World) -> None:
    lid = world.limit("alice", "$200", Window.MONTH, metric=Metric.COST)
    result = world.sync(lid, budgets=False)
    assert result == BackstopResult([], None, [backstops.NO_BUDGETS])


def test_sync_all_removes_orphans_and_leaves_other_alarms_alone(world: World) -> None:
    world.aip("alice", "alice0000001")
    lid = world.limit("alice", "5M", Window.H24)
    world.alarms.put(build_alarm(9999, ["alice0000001"], "tokens", 1, "24h", TOPIC))  # limit gone
    world.alarms.put(build_alarm(9999, ["alice0000001"], "tokens", 1, "24h", TOPIC, part=1))
    world.budgets.put({"AccountId": ACCOUNT, "Budget": {
        "BudgetName": "bedrock-bot-limit-9998", "BudgetLimit": {"Amount": "1", "Unit": "USD"},
        "TimeUnit": "MONTHLY", "BudgetType": "COST"}})
    world.cw.put_metric_alarm(AlarmName="team-own-alarm", MetricName="x", Namespace="y", Statistic="Sum",
                              Period=60, EvaluationPeriods=1, Threshold=1,
                              ComparisonOperator="GreaterThanThreshold")

    with world.db.session_scope() as s:
        results, orphans = backstops.sync_all_backstops(s, world.clock, world.alarms, world.budgets,
                                                         TOPIC, ACCOUNT)

    assert [r.alarms for r in results] == [[f"bedrock-bot-limit-{lid}"]]
    assert results[0].changes == {f"bedrock-bot-limit-{lid}": "created"}
    assert orphans == ["bedrock-bot-limit-9998", "bedrock-bot-limit-9999", "bedrock-bot-limit-9999-p1"]
    assert sorted(world.cw_alarms()) == [f"bedrock-bot-limit-{lid}", "team-own-alarm"]
    assert world.aws_budgets() == {}
    [event] = world.events("backstops.orphans")
    assert event.outcome == "ok"

    with world.db.session_scope() as s:  # the hourly run again: nothing to do, nothing audited
        results, orphans = backstops.sync_all_backstops(s, world.clock, world.alarms, world.budgets,
                                                         TOPIC, ACCOUNT)
    assert orphans == [] and results[0].changes == {}
    assert len(world.events("backstops.sync")) == 1 and len(world.events("backstops.orphans")) == 1


def test_a_hand_edited_alarm_is_put_back(world: World) -> None:
    world.aip("alice", "alice0000001")
    lid = world.limit("alice", "5M", Window.H24)
    world.sync(lid)
    name = f"bedrock-bot-limit-{lid}"
    edited = build_alarm(lid, ["alice0000001"], "tokens", 5_000_000, "24h", TOPIC, subject="alice")
    world.cw.put_metric_alarm(**{**edited, "Threshold": 1e12, "OKActions": []})

    assert world.sync(lid).changes == {name: "updated"}
    alarm = world.cw_alarms()[name]
    assert alarm["Threshold"] == 5_000_000.0 and alarm["OKActions"] == [TOPIC]


def test_an_aws_failure_is_reported_not_raised_unless_strict(world: World) -> None:
    world.aip("alice", "alice0000001")
    lid = world.limit("alice", "5M", Window.H24)
    client = boto3.client("cloudwatch", region_name=REGION)
    world.alarms = Alarms(client)
    with Stubber(client) as stub:
        stub.add_response("describe_alarms", {"MetricAlarms": []},
                          {"AlarmNamePrefix": f"bedrock-bot-limit-{lid}", "AlarmTypes": ["MetricAlarm"]})
        stub.add_client_error("put_metric_alarm", "AccessDenied", "not allowed", 403)
        result = world.sync(lid)
        stub.add_response("describe_alarms", {"MetricAlarms": []})
        stub.add_client_error("put_metric_alarm", "AccessDenied", "not allowed", 403)
        with pytest.raises(AwsError, match="PutMetricAlarm failed: AccessDenied"):
            world.sync(lid, strict=True)

    assert result.alarms == [] and not result.ok
    assert result.errors == ["AWS PutMetricAlarm failed: AccessDenied: not allowed"]
    [event] = world.events("backstops.sync")  # the strict one rolled back with its transaction
    assert event.outcome == "error"
    assert json.loads(event.details)["errors"] == result.errors
