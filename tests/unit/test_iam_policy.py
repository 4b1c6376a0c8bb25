"""The bot's least-privilege IAM policy (`bedrock-bot iam-policy`).

- parliament (the IAM linter) finds nothing in it, generic or concrete;
- every AWS operation the bot's code calls is allowed — with the resource and request
  context the bot really uses — and the source is scanned so a new call cannot slip in
  without a row here (and a statement in the policy);
- what the bot must not be able to do is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name
from parliament import analyze_policy_string

from bot.iam_policy import (
    BOT_PATH,
    bot_policy,
    cfn_policy,
    main,
    partition_of,
    queue_arn_from_url,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]
REGION, ACCOUNT = "us-east-1", "123456789012"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:bedrock-bot-alarms"
QUEUE = f"arn:aws:sqs:{REGION}:{ACCOUNT}:bedrock-bot-events"
LOG_GROUP = "/aws/bedrock/modelinvocations"
DB_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:rds!db-1a2b3c4d-5e6f-AbCdEf"
STREAM = "bedrock-usage"
STREAM_ARN = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{STREAM}"

AIP = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/a1b2c3d4e5f6"
MODEL = f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"
SYSTEM_PROFILE = (f"arn:aws:bedrock:{REGION}:{ACCOUNT}:inference-profile/"
                  "us.anthropic.claude-3-haiku-20240307-v1:0")
USER = f"arn:aws:iam::{ACCOUNT}:user/alice"
USER_WITH_PATH = f"arn:aws:iam::{ACCOUNT}:user/teams/ml/bob"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/ml-training"
SCP = "arn:aws:organizations::111111111111:policy/o-a1b2c3d4e5/service_control_policy/p-a1b2c3d4"
SCP_ACCOUNT = f"arn:aws:organizations::111111111111:account/o-a1b2c3d4e5/{ACCOUNT}"
ALARM = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:bedrock-bot-limit-7"
BUDGET = f"arn:aws:budgets::{ACCOUNT}:budget/bedrock-bot-limit-7"
OTHER_BUDGET = f"arn:aws:budgets::{ACCOUNT}:budget/finance-monthly"
LOG_GROUP_ARN = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{LOG_GROUP}"
TAGGED = {"aws:RequestTag/managed-by": "bedrock-bot"}
OURS = {"aws:ResourceTag/managed-by": "bedrock-bot"}


def concrete() -> dict[str, Any]:
    return bot_policy(REGION, ACCOUNT, TOPIC, QUEUE, log_group=LOG_GROUP, database_secret=DB_SECRET,
                      usage_stream=STREAM)


def generic(service: str) -> dict[str, Any]:
    """Nothing known; the Kinesis statement exists only with a stream configured."""
    return bot_policy(usage_stream=STREAM) if service == "kinesis" else bot_policy()


# ------------------------------------------------------------------ parliament


def _findings(policy: dict[str, Any], community: bool = False) -> list[str]:
    result = analyze_policy_string(to_json(policy), include_community_auditors=community)
    return [f"{f.issue}: {f.detail} at {f.location}" for f in result.findings]


POLICIES = {
    "generic": bot_policy(),
    "generic, with a usage stream": bot_policy(usage_stream=STREAM),
    "concrete": concrete(),
    "stream by ARN": bot_policy(REGION, ACCOUNT, usage_stream=STREAM_ARN),
    "queue-url, two topics, principal path": bot_policy(
        "eu-west-1", ACCOUNT, [f"arn:aws:sns:eu-west-1:{ACCOUNT}:a", f"arn:aws:sns:eu-west-1:{ACCOUNT}:b"],
        f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/events", principal_path="/bedrock-users/"),
    "china": bot_policy("cn-north-1", ACCOUNT),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_parliament_finds_nothing(name: str) -> None:
    findings = _findings(POLICIES[name])
    assert not findings, "parliament:\n" + "\n".join(findings)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_community_auditors_flag_only_the_inline_policy_writes_the_design_requires(name: str) -> None:
    """Writing inline policies on users and roles *is* the bot's job (revoke/restore), so
    parliament's community auditors call it permission management / escalation: that and
    nothing else. The ProtectBotPrincipals deny is the mitigation (tested below)."""
    issues = {f.split(":")[0] for f in _findings(POLICIES[name], community=True)}
    assert issues <= {"PERMISSIONS_MANAGEMENT_ACTIONS", "PRIVILEGE_ESCALATION"}
    assert not _findings(POLICIES[name])


def test_no_wildcard_actions_and_unique_sids() -> None:
    for policy in POLICIES.values():
        sids = [s["Sid"] for s in policy["Statement"]]
        assert len(sids) == len(set(sids))
        for statement in policy["Statement"]:
            assert "NotAction" not in statement and "NotResource" not in statement
            for action in statement["Action"]:
                assert "*" not in action, action


def test_fits_a_managed_policy() -> None:
    """6,144 characters (whitespace not counted) is IAM's managed-policy limit; inline is 10,240."""
    for policy in (*POLICIES.values(), bot_policy(principal_path="/" + "p/" * 200)):
        assert len(re.sub(r"\s", "", json.dumps(policy))) < 6144


# ------------------------------------------------------------------ a small evaluator


def _glob(pattern: str, *, case: bool = True) -> re.Pattern[str]:
    """IAM wildcards: * any run of characters (slashes and colons too), ? one character."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, 0 if case else re.IGNORECASE)


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _condition_holds(condition: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    for operator, keys in condition.items():
        qualifier, _, op = operator.rpartition(":")
        like = op == "StringLike"
        if op not in ("StringEquals", "StringLike"):
            raise AssertionError(f"the test evaluator does not know {operator}")
        for key, allowed in keys.items():
            patterns = [_glob(a) if like else re.compile(re.escape(a)) for a in _listed(allowed)]
            present = key in context
            values = _listed(context[key]) if present else []
            if qualifier == "ForAllValues":
                ok = all(any(p.fullmatch(v) for p in patterns) for v in values)
            else:
                ok = present and any(p.fullmatch(v) for p in patterns for v in values)
            if not ok:
                return False
    return True


def _matches(statement: Mapping[str, Any], action: str, resource: str, context: Mapping[str, Any]) -> bool:
    return (any(_glob(a, case=False).fullmatch(action) for a in _listed(statement["Action"]))
            and any(_glob(r).fullmatch(resource) for r in _listed(statement["Resource"]))
            and _condition_holds(statement.get("Condition", {}), context))


def allowed(policy: Mapping[str, Any], action: str, resource: str,
            context: Mapping[str, Any] | None = None) -> bool:
    """Identity-policy evaluation: an explicit Deny wins, otherwise some Allow must match."""
    ctx = context or {}
    statements = policy["Statement"]
    if any(s["Effect"] == "Deny" and _matches(s, action, resource, ctx) for s in statements):
        return False
    return any(s["Effect"] == "Allow" and _matches(s, action, resource, ctx) for s in statements)


# ------------------------------------------------------------------ every call the bot makes


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)


# (boto3 service, client method) -> what IAM authorizes for it, with the bot's real resources.
CALLS: dict[tuple[str, str], list[Need]] = {
    # bot/aws/profiles.py
    ("bedrock", "create_inference_profile"): [
        Need("bedrock:CreateInferenceProfile", AIP, TAGGED),
        Need("bedrock:CreateInferenceProfile", MODEL, TAGGED),
        Need("bedrock:CreateInferenceProfile", SYSTEM_PROFILE, TAGGED),  # cross-region source
        Need("bedrock:TagResource", AIP, TAGGED),
    ],
    ("bedrock", "get_inference_profile"): [Need("bedrock:GetInferenceProfile", AIP),
                                           Need("bedrock:GetInferenceProfile", SYSTEM_PROFILE)],
    ("bedrock", "list_inference_profiles"): [Need("bedrock:ListInferenceProfiles", "*")],
    ("bedrock", "list_tags_for_resource"): [Need("bedrock:ListTagsForResource", AIP)],
    ("bedrock", "delete_inference_profile"): [Need("bedrock:DeleteInferenceProfile", AIP, OURS)],
    ("sts", "get_caller_identity"): [Need("sts:GetCallerIdentity", "*")],
    # bot/aws/access.py (method names built from verb + User/Role at run time)
    **{("iam", f"{verb}_{kind}_policy"): [Need(f"iam:{verb.capitalize()}{kind.capitalize()}Policy", arn)
                                          for arn in arns]
       for verb in ("put", "get", "delete")
       for kind, arns in (("user", (USER, USER_WITH_PATH)), ("role", (ROLE,)))},
    ("iam", "list_user_policies"): [Need("iam:ListUserPolicies", USER)],
    ("iam", "list_role_policies"): [Need("iam:ListRolePolicies", ROLE)],
    # bot/aws/enforcement.py: shared-role sessions, API keys, SSO sessions (tags, SCP)
    ("iam", "get_role"): [Need("iam:GetRole", ROLE)],
    ("iam", "list_service_specific_credentials"): [Need("iam:ListServiceSpecificCredentials", USER)],
    ("iam", "update_service_specific_credential"): [Need("iam:UpdateServiceSpecificCredential", USER)],
    ("bedrock", "tag_resource"): [Need("bedrock:TagResource", AIP, {"aws:TagKeys": ["bedrock-bot:access"]})],
    ("organizations", "list_policies"): [Need("organizations:ListPolicies", "*")],
    ("organizations", "create_policy"): [Need("organizations:CreatePolicy", "*")],
    ("organizations", "describe_policy"): [Need("organizations:DescribePolicy", SCP)],
    ("organizations", "update_policy"): [Need("organizations:UpdatePolicy", SCP)],
    ("organizations", "attach_policy"): [Need("organizations:AttachPolicy", SCP),
                                         Need("organizations:AttachPolicy", SCP_ACCOUNT)],
    # bot/aws/metrics.py
    ("cloudwatch", "get_metric_data"): [Need("cloudwatch:GetMetricData", "*")],
    ("cloudwatch", "list_metrics"): [Need("cloudwatch:ListMetrics", "*")],
    # bot/aws/alarms.py (PutMetricAlarm with Tags needs TagResource too)
    ("cloudwatch", "put_metric_alarm"): [
        Need("cloudwatch:PutMetricAlarm", ALARM, {"cloudwatch:AlarmActions": [TOPIC]}),
        Need("cloudwatch:TagResource", ALARM),
    ],
    ("cloudwatch", "describe_alarms"): [Need("cloudwatch:DescribeAlarms", ALARM)],
    ("cloudwatch", "delete_alarms"): [Need("cloudwatch:DeleteAlarms", ALARM)],
    # bot/aws/budgets.py (CreateBudget with ResourceTags needs TagResource too)
    ("budgets", "create_budget"): [Need("budgets:ModifyBudget", BUDGET), Need("budgets:TagResource", BUDGET)],
    ("budgets", "update_budget"): [Need("budgets:ModifyBudget", BUDGET)],
    ("budgets", "delete_budget"): [Need("budgets:ModifyBudget", BUDGET)],
    ("budgets", "create_notification"): [Need("budgets:ModifyBudget", BUDGET)],
    ("budgets", "delete_notification"): [Need("budgets:ModifyBudget", BUDGET)],
    ("budgets", "describe_budget"): [Need("budgets:ViewBudget", BUDGET)],
    ("budgets", "describe_budgets"): [Need("budgets:ViewBudget", BUDGET),
                                      Need("budgets:ViewBudget", OTHER_BUDGET)],  # lists the account
    ("budgets", "describe_notifications_for_budget"): [Need("budgets:ViewBudget", BUDGET)],
    ("budgets", "describe_subscribers_for_notification"): [Need("budgets:ViewBudget", BUDGET)],
    # handlers/sns.py, jobs/sqs_poller.py
    ("sns", "confirm_subscription"): [Need("sns:ConfirmSubscription", TOPIC)],
    ("sqs", "receive_message"): [Need("sqs:ReceiveMessage", QUEUE)],
    ("sqs", "delete_message"): [Need("sqs:DeleteMessage", QUEUE)],
    ("sqs", "get_queue_attributes"): [Need("sqs:GetQueueAttributes", QUEUE)],
    # bot/aws/logs.py (invocation-log metering)
    ("logs", "start_query"): [Need("logs:StartQuery", LOG_GROUP_ARN)],
    ("logs", "get_query_results"): [Need("logs:GetQueryResults", LOG_GROUP_ARN)],
    ("logs", "stop_query"): [Need("logs:StopQuery", "*")],
    # bot/aws/price_list.py, bot/aws/cost_explorer.py (no resource types: "*")
    ("pricing", "get_products"): [Need("pricing:GetProducts", "*")],
    ("ce", "get_cost_and_usage"): [Need("ce:GetCostAndUsage", "*")],
    # bot/db_secret.py (only with BOT_DATABASE_SECRET)
    ("secretsmanager", "get_secret_value"): [Need("secretsmanager:GetSecretValue", DB_SECRET)],
    # bot/aws/usage_stream.py (BOT_USAGE_STREAM)
    ("kinesis", "describe_stream_summary"): [Need("kinesis:DescribeStreamSummary", STREAM_ARN)],
    ("kinesis", "list_shards"): [Need("kinesis:ListShards", STREAM_ARN)],
    ("kinesis", "get_shard_iterator"): [Need("kinesis:GetShardIterator", STREAM_ARN)],
    ("kinesis", "get_records"): [Need("kinesis:GetRecords", STREAM_ARN)],
}
# Calls the bot makes only when configured to; the generic policy (nothing configured) has no grant.
CONFIGURED_ONLY = {("secretsmanager", "get_secret_value")}
SERVICES = sorted({service for service, _ in CALLS})


@cache
def _operations() -> dict[str, dict[str, str]]:
    """service -> {snake_case method: OperationName}, from botocore's service models."""
    session = botocore.session.get_session()
    return {svc: {xform_name(op): op for op in session.get_service_model(svc).operation_names}
            for svc in SERVICES}


def test_the_table_names_real_operations() -> None:
    for service, method in CALLS:
        assert method in _operations()[service], f"{service} has no operation {method}"


@pytest.mark.parametrize(("service", "method"), sorted(CALLS))
def test_every_call_is_allowed_by_the_concrete_policy(service: str, method: str) -> None:
    policy = concrete()
    for need in CALLS[(service, method)]:
        assert allowed(policy, need.action, need.resource, need.context), \
            f"{service}.{method}: {need.action} on {need.resource} {dict(need.context)} is not allowed"


@pytest.mark.parametrize(("service", "method"), sorted(CALLS))
def test_every_call_is_allowed_by_the_generic_policy(service: str, method: str) -> None:
    policy = generic(service)
    for need in CALLS[(service, method)]:
        expected = (service, method) not in CONFIGURED_ONLY
        assert allowed(policy, need.action, need.resource, need.context) is expected, f"{need}"


def test_the_database_secret_is_the_only_secret_readable() -> None:
    policy = concrete()
    other = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:prod/payments-XyZ123"
    assert allowed(policy, "secretsmanager:GetSecretValue", DB_SECRET)
    assert not allowed(policy, "secretsmanager:GetSecretValue", other)
    assert not allowed(policy, "secretsmanager:PutSecretValue", DB_SECRET)
    assert not any("secretsmanager" in json.dumps(s) for s in bot_policy()["Statement"])


def test_log_groups_are_the_group_and_its_streams_or_every_group() -> None:
    def resources(policy: dict[str, Any]) -> Any:
        return next(s["Resource"] for s in policy["Statement"] if s["Sid"] == "LogsQueryInvocationLogs")
    assert resources(concrete()) == [LOG_GROUP_ARN, f"{LOG_GROUP_ARN}:*"]
    # nothing known = what the template's default "*" gives, so both print the same document
    assert resources(bot_policy(REGION, ACCOUNT)) == [
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:*:*"]


def test_every_aws_call_in_the_source_has_a_row() -> None:
    """Scan bot/, handlers/ and jobs/ for client calls (``.put_metric_alarm(``) and operation
    names in quotes (``"PutMetricAlarm"``, how the adapters name calls in errors). A call with
    no row here means the policy may lack its permission: add the row, then the statement.
    demo/ is left out: the offline demo is not the bot's runtime (it writes metrics into moto)."""
    by_method: dict[str, set[str]] = {}
    by_name: dict[str, set[str]] = {}
    for service, ops in _operations().items():
        for method, name in ops.items():
            by_method.setdefault(method, set()).add(service)
            by_name.setdefault(name, set()).add(service)
    covered = {method for _, method in CALLS}
    missing: list[str] = []
    scanned = 0
    for folder in ("bot", "handlers", "jobs"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            scanned += 1
            text = path.read_text()
            used = {m for m in re.findall(r"\.([a-z][a-z0-9_]*)\(", text) if m in by_method}
            used |= {xform_name(n) for n in re.findall(r"""["']([A-Z][A-Za-z0-9]+)["']""", text)
                     if n in by_name}
            missing.extend(f"{rel}: {m} ({'/'.join(sorted(by_method[m]))})" for m in sorted(used - covered))
    assert scanned > 10
    assert not missing, "AWS calls without a row in CALLS:\n" + "\n".join(missing)


def test_the_scan_sees_the_calls_we_know_about() -> None:
    """Guard against the scan silently matching nothing."""
    text = (ROOT / "bot" / "aws" / "profiles.py").read_text()
    assert ".create_inference_profile(" in text and '"CreateInferenceProfile"' in text


# ------------------------------------------------------------------ what it must not allow


@pytest.mark.parametrize(("action", "resource", "context"), [
    ("bedrock:InvokeModel", MODEL, {}),
    ("bedrock:CreateInferenceProfile", AIP, {}),  # untagged
    ("bedrock:CreateInferenceProfile", AIP, {"aws:RequestTag/managed-by": "someone-else"}),
    ("bedrock:DeleteInferenceProfile", AIP, {}),  # a profile the bot did not make
    ("bedrock:TagResource", f"arn:aws:bedrock:{REGION}:{ACCOUNT}:guardrail/g1", TAGGED),
    ("iam:PutRolePolicy", f"arn:aws:iam::{ACCOUNT}:role{BOT_PATH}BotRole-ABC", {}),  # itself
    ("iam:DeleteRolePolicy", f"arn:aws:iam::{ACCOUNT}:role{BOT_PATH}BotRole-ABC", {}),
    ("iam:PutUserPolicy", f"arn:aws:iam::{ACCOUNT}:user{BOT_PATH}ops", {}),
    ("iam:AttachRolePolicy", ROLE, {}),
    ("iam:CreateAccessKey", USER, {}),
    ("iam:PutGroupPolicy", f"arn:aws:iam::{ACCOUNT}:group/admins", {}),
    ("iam:PutUserPolicy", "arn:aws:iam::999999999999:user/alice", {}),  # another account
    ("sts:AssumeRole", ROLE, {}),
    ("cloudwatch:PutMetricAlarm", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:prod-cpu", {}),
    ("cloudwatch:PutMetricAlarm", ALARM,
     {"cloudwatch:AlarmActions": [f"arn:aws:automate:{REGION}:ec2:terminate"]}),
    ("cloudwatch:DeleteAlarms", f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:prod-cpu", {}),
    ("budgets:ModifyBudget", OTHER_BUDGET, {}),
    ("sns:Publish", TOPIC, {}),
    ("sns:ConfirmSubscription", f"arn:aws:sns:{REGION}:{ACCOUNT}:other", {}),
    ("sqs:ReceiveMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:other", {}),
    ("sqs:SendMessage", QUEUE, {}),
    ("logs:StartQuery", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/payments", {}),
    ("logs:GetLogEvents", LOG_GROUP_ARN, {}),
])
def test_what_the_concrete_policy_refuses(action: str, resource: str, context: dict[str, Any]) -> None:
    assert not allowed(concrete(), action, resource, context)


def test_principal_path_narrows_the_governed_principals() -> None:
    policy = bot_policy(REGION, ACCOUNT, principal_path="/bedrock-users/")
    assert allowed(policy, "iam:PutUserPolicy", f"arn:aws:iam::{ACCOUNT}:user/bedrock-users/alice")
    assert not allowed(policy, "iam:PutUserPolicy", USER)
    assert not allowed(policy, "iam:PutRolePolicy", ROLE)


# ------------------------------------------------------------------ arguments and output


def test_unknowns_become_wildcards_and_known_values_appear() -> None:
    generic = json.dumps(bot_policy())
    assert "arn:aws:bedrock:*:*:application-inference-profile/*" in generic
    assert "arn:aws:sqs:*:*:*" in generic and "arn:aws:sns:*:*:*" in generic
    specific = json.dumps(concrete())
    assert TOPIC in specific and QUEUE in specific and LOG_GROUP_ARN in specific
    assert f":{ACCOUNT}:" in specific and "arn:aws:sqs:*" not in specific


def test_partition_follows_the_region() -> None:
    assert partition_of("cn-northwest-1") == "aws-cn"
    assert partition_of("us-gov-west-1") == "aws-us-gov"
    assert partition_of("eu-west-1") == partition_of(None) == "aws"
    assert "arn:aws-cn:bedrock:cn-north-1:" in json.dumps(bot_policy("cn-north-1"))


def test_queue_url_becomes_an_arn() -> None:
    assert queue_arn_from_url(f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/events") == \
        f"arn:aws:sqs:eu-west-1:{ACCOUNT}:events"
    assert queue_arn_from_url(f"https://sqs.cn-north-1.amazonaws.com.cn/{ACCOUNT}/q.fifo") == \
        f"arn:aws-cn:sqs:cn-north-1:{ACCOUNT}:q.fifo"
    policy = bot_policy(queue_arn=f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/bedrock-bot-events")
    assert allowed(policy, "sqs:ReceiveMessage", QUEUE)


@pytest.mark.parametrize("kwargs", [
    {"region": "US-EAST-1"},
    {"region": "useast1"},
    {"account_id": "12345"},
    {"account_id": "12345678901a"},
    {"topic_arn": "arn:aws:sqs:us-east-1:123456789012:q"},
    {"topic_arn": "bedrock-bot-alarms"},
    {"topic_arn": ["arn:aws:sns:us-east-1:123456789012:a", "nope"]},
    {"queue_arn": "arn:aws:sns:us-east-1:123456789012:t"},
    {"queue_arn": "https://example.com/123456789012/q"},
    {"queue_arn": "https://sqs.us-east-1.amazonaws.com/q"},
    {"log_group": "bad group name"},
    {"log_group": "*"},
    {"principal_path": "users"},
    {"principal_path": "/users"},
    {"partition": "azure"},
    {"database_secret": "arn:aws:ssm:us-east-1:123456789012:parameter/db"},
    {"database_secret": "rds!db-1234"},
])
def test_bad_arguments_are_refused_with_one_line(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as err:
        bot_policy(**kwargs)
    assert str(err.value) and "\n" not in str(err.value)


def test_to_json_round_trips() -> None:
    text = to_json(concrete())
    assert text.endswith("\n") and json.loads(text) == concrete()


def test_module_main_prints_the_policy_and_the_cfn_form(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--region", REGION, "--account-id", ACCOUNT, "--topic-arn", TOPIC, "--queue", QUEUE,
                 "--log-group", LOG_GROUP, "--database-secret", DB_SECRET,
                 "--usage-stream", STREAM]) == 0
    assert json.loads(capsys.readouterr().out) == concrete()
    assert main(["--cfn"]) == 0
    assert json.loads(capsys.readouterr().out) == cfn_policy()
    assert main(["--account-id", "nope"]) == 2
    assert "12 digits" in capsys.readouterr().err


def test_cfn_form_is_the_same_document_with_substitutions() -> None:
    """Statement for statement, the CloudFormation form is bot_policy's with placeholders; the
    database-secret read is there only when the stack runs the bot (and so has a database)."""
    cfn, plain = cfn_policy(), bot_policy(database_secret=DB_SECRET)
    unwrapped = []
    for c in cfn["Statement"]:
        if "Fn::If" in c:
            condition, then, otherwise = c["Fn::If"]
            assert condition == "OnFargate" and otherwise == {"Ref": "AWS::NoValue"}
            assert then["Sid"] == "SecretsReadDatabasePassword"
            c = then
        unwrapped.append(c)
    assert [s["Sid"] for s in unwrapped] == [s["Sid"] for s in plain["Statement"]]
    for c, p in zip(unwrapped, plain["Statement"], strict=True):
        assert c["Effect"] == p["Effect"] and c["Action"] == p["Action"]


def _strings(node: Any) -> Sequence[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def test_cfn_form_has_no_bare_placeholders() -> None:
    """A ``${…}`` outside Fn::Sub would reach IAM literally."""
    def bare(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for k, v in node.items() if k != "Fn::Sub" for s in bare(v)]
        if isinstance(node, list):
            return [s for v in node for s in bare(v)]
        return [node] if isinstance(node, str) and "${" in node else []
    assert not bare(cfn_policy())
    assert any("${AWS::Partition}" in s for s in _strings(cfn_policy()))


def test_the_usage_stream_adds_only_reads_on_that_stream() -> None:
    without = bot_policy(REGION, ACCOUNT)
    assert "kinesis" not in json.dumps(without)
    (statement,) = [st for st in concrete()["Statement"] if st["Sid"] == "KinesisReadUsageStream"]
    assert statement["Resource"] == STREAM_ARN
    assert sorted(statement["Action"]) == ["kinesis:DescribeStreamSummary", "kinesis:GetRecords",
                                           "kinesis:GetShardIterator", "kinesis:ListShards"]
    for action in ("kinesis:PutRecord", "kinesis:DeleteStream", "kinesis:GetRecords"):
        other = f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/someone-elses"
        assert not allowed(concrete(), action, other)
    assert not allowed(concrete(), "kinesis:PutRecord", STREAM_ARN)
    with pytest.raises(ValueError, match="not a Kinesis stream"):
        bot_policy(usage_stream="bad name!")
