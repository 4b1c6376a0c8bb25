"""The least-privilege IAM policy the bot needs: ``bedrock-bot iam-policy``.

``bot_policy()`` with nothing known is the generic document (``*`` for region, account, topic,
queue and log group); every argument given narrows it. ``cfn_policy()`` is the same document
with CloudFormation substitutions, embedded in ``deploy/bedrock-bot.yaml`` (a test checks the
two never drift apart); ``python -m bot.iam_policy --cfn`` prints it.

What each statement is for, and why it is no narrower:

- **Bedrock AIPs** (``bot/aws/profiles.py``). ``ListInferenceProfiles`` has no resource type,
  so ``*``. ``CreateInferenceProfile`` is authorized against the new profile *and* the source
  it copies from (a foundation model, in any region — a cross-region system profile spans
  several — or a system inference profile), so it lists all three; it and the ``TagResource``
  a tagged create implies require the request to carry ``managed-by=bedrock-bot`` (the bot
  always tags so). ``DeleteInferenceProfile`` is limited to profiles carrying that tag: the bot
  never deletes a profile someone else made. ``GetInferenceProfile`` reads application and
  system profiles. ``ListTagsForResource`` (adopting console-made AIPs by their tags) is
  granted on the account's Bedrock resources in the region: parliament insists an action
  with several resource types name them all, and tag reads are harmless metadata.
- **IAM inline deny policies** (``bot/aws/access.py``). IAM has no condition key for an inline
  policy's *name* or content, so ``bedrock-bot-deny-*`` cannot be enforced in the policy; the
  resource is every user and role (or those under ``principal_path``). Users and roles under
  the path ``/bedrock-bot/`` — where the template puts the bot's own role — are explicitly
  denied, so the bot cannot write itself a broader policy. Narrow further by keeping governed
  principals under a path (``principal_path="/bedrock-users/"``).
- **CloudWatch**: ``GetMetricData`` and ``ListMetrics`` have no resource type (``*``).
  Alarms are the bot's own, named ``bedrock-bot-*``: put, delete and tag (``PutMetricAlarm``
  with ``Tags``) only those. ``PutMetricAlarm`` may only point alarm actions at the allowed
  SNS topic(s) (``cloudwatch:AlarmActions``), so the bot cannot make an alarm that stops
  instances. ``DescribeAlarms`` (read-only; the bot filters by ``AlarmNamePrefix``) is granted
  on every alarm in the region: a list call is not reliably authorized per alarm name.
- **Budgets**: ``ModifyBudget`` (create, update, delete, notifications) and ``TagResource``
  (``CreateBudget`` with ``ResourceTags``) on ``budget/bedrock-bot-*``; ``ViewBudget`` on every
  budget, because ``DescribeBudgets`` lists the whole account (read-only).
- **SNS** ``ConfirmSubscription`` on the allow-listed topic(s); **SQS** receive, delete and
  attributes on the queue.
- **CloudWatch Logs Insights** (invocation-log metering): ``StartQuery``/``GetQueryResults`` on
  the invocation log group; ``StopQuery`` has no resource type.
- **Prices and the bill** (``bot/aws/price_list.py``, ``bot/aws/cost_explorer.py``):
  ``pricing:GetProducts`` and ``ce:GetCostAndUsage`` have no resource types, so ``*``; both are
  reads (Cost Explorer bills each request, $0.01: the bot makes two or three a day).
- **Secrets Manager** ``GetSecretValue`` on ``BOT_DATABASE_SECRET`` only, when it is set: the
  database password is read at connect time (RDS rotates a managed master secret every 7 days,
  and a task's injected environment never changes), see ``bot/db_secret.py``. The stack's
  secret is encrypted with the AWS managed key ``aws/secretsmanager``, which needs no
  ``kms:Decrypt`` grant.
- **Kinesis** (the usage stream, only when ``BOT_USAGE_STREAM`` is set): ``DescribeStreamSummary``,
  ``ListShards``, ``GetShardIterator`` and ``GetRecords`` on that stream — all four authorize
  against the stream resource. Nothing that writes: CloudWatch Logs puts the records with a role
  of its own (``deploy/usage-stream.yaml``). A stream encrypted with the AWS-managed key
  ``alias/aws/kinesis`` needs no KMS permission; a customer key needs ``kms:Decrypt`` on it.
- ``sts:GetCallerIdentity`` needs no permission at all (AWS always allows it); it is listed so
  the document names every call the bot makes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

VERSION = "2012-10-17"
DB_SECRET_SID = "SecretsReadDatabasePassword"
ACCESS_TAG = "bedrock-bot:access"  # bot.aws.enforcement.ACCESS_TAG (bot.iam_policy imports nothing)
NAME_PREFIX = "bedrock-bot-"  # alarms and budgets the bot makes
MANAGED_BY_TAG = ("managed-by", "bedrock-bot")  # every AIP the bot makes carries it
BOT_PATH = "/bedrock-bot/"  # the bot's own users/roles: never governed, never writable

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", re.ASCII)
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_PARTITION = re.compile(r"aws(-[a-z]+)*", re.ASCII)
_ARN = re.compile(r"arn:(?P<partition>aws(?:-[a-z]+)*):(?P<service>[a-z0-9-]+):(?P<region>[a-z0-9-]+)"
                  r":(?P<account>\d{12}):(?P<name>[A-Za-z0-9_.-]{1,256})", re.ASCII)
_QUEUE_HOST = re.compile(r"sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?P<cn>\.cn)?", re.ASCII)
_LOG_GROUP = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}", re.ASCII)
_PATH = re.compile(r"/([\x21-\x7e]{0,510}/)?", re.ASCII)
_SECRET = re.compile(
    r"arn:(aws(?:-[a-z]+)*):secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]{1,512}", re.ASCII)
_STREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}", re.ASCII)
_STREAM_ARN = re.compile(r"arn:aws(-[a-z]+)*:kinesis:[a-z0-9-]+:\d{12}:stream/[A-Za-z0-9_.-]{1,128}",
                         re.ASCII)
STREAM_READ_ACTIONS = ["kinesis:DescribeStreamSummary", "kinesis:GetRecords", "kinesis:GetShardIterator",
                       "kinesis:ListShards"]


def partition_of(region: str | None) -> str:
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def queue_arn_from_url(url: str) -> str:
    """``https://sqs.<region>.amazonaws.com/<account>/<name>`` (``BOT_SQS_QUEUE_URL``) -> its ARN."""
    parts = urlsplit(url.strip())
    host = _QUEUE_HOST.fullmatch(parts.hostname or "")
    segments = parts.path.strip("/").split("/")
    if parts.scheme != "https" or not host or len(segments) != 2 or not _ACCOUNT.fullmatch(segments[0]):
        raise ValueError(f"{url!r} is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)")
    partition = "aws-cn" if host["cn"] else partition_of(host["region"])
    return f"arn:{partition}:sqs:{host['region']}:{segments[0]}:{segments[1]}"


def _check_arn(arn: str, service: str, what: str) -> str:
    m = _ARN.fullmatch(arn.strip())
    if not m or m["service"] != service:
        raise ValueError(f"{arn!r} is not an {what} ARN (arn:aws:{service}:<region>:<account>:<name>)")
    return m.string


def bot_policy(region: str | None = None, account_id: str | None = None,
               topic_arn: str | Sequence[str] | None = None, queue_arn: str | None = None, *,
               log_group: str | None = None, principal_path: str = "/",
               partition: str | None = None, database_secret: str | None = None,
               usage_stream: str | None = None) -> dict[str, Any]:
    """The bot's identity policy. Unknown region/account/topic/queue/log group become ``*``.

    ``topic_arn`` may list several topics (``BOT_SNS_TOPIC_ARNS``: all are confirmed, alarms may
    notify any of them); ``queue_arn`` also takes the queue URL (``BOT_SQS_QUEUE_URL``);
    ``database_secret`` (``BOT_DATABASE_SECRET``) adds reading that one secret;
    ``usage_stream`` (``BOT_USAGE_STREAM``, a name or an ARN) adds the Kinesis read statement.
    Bad values raise ValueError with a one-line reason.
    """
    if region is not None and not _REGION.fullmatch(region):
        raise ValueError(f"{region!r} is not an AWS region (e.g. us-east-1)")
    if account_id is not None and not _ACCOUNT.fullmatch(account_id):
        raise ValueError(f"{account_id!r} is not an AWS account id (12 digits)")
    if partition is not None and not _PARTITION.fullmatch(partition):
        raise ValueError(f"{partition!r} is not an AWS partition (aws, aws-cn, aws-us-gov)")
    topics = [topic_arn] if isinstance(topic_arn, str) else list(topic_arn or ())
    topics = [_check_arn(t, "sns", "SNS topic") for t in topics]
    if queue_arn is not None:
        queue = queue_arn.strip()
        queue = queue_arn_from_url(queue) if queue.startswith("https://") else _check_arn(
            queue, "sqs", "SQS queue")
    else:
        queue = None
    if log_group is not None and not _LOG_GROUP.fullmatch(log_group):
        raise ValueError(f"{log_group!r} is not a CloudWatch Logs group name")
    if not _PATH.fullmatch(principal_path):
        raise ValueError(f"{principal_path!r} is not an IAM path (/ or /a/b/)")
    if database_secret is not None and not _SECRET.fullmatch(database_secret):
        raise ValueError(f"{database_secret!r} is not a Secrets Manager secret ARN")
    part = partition or partition_of(region)
    doc = _document(
        partition=part, region=region or "*", account=account_id or "*",
        topics=topics, queue=queue, log_group=log_group, principal_path=principal_path,
        database_secret=database_secret)
    if usage_stream is not None:
        doc["Statement"].append(stream_statement(
            stream_arn(usage_stream, partition=part, region=region or "*", account=account_id or "*")))
    return doc


def stream_arn(stream: str, *, partition: str, region: str, account: str) -> str:
    """The usage stream's ARN from BOT_USAGE_STREAM (an ARN as is; a name in this region/account)."""
    stream = stream.strip()
    if _STREAM_ARN.fullmatch(stream):
        return stream
    if not _STREAM_NAME.fullmatch(stream):
        raise ValueError(f"{stream!r} is not a Kinesis stream name or ARN")
    return f"arn:{partition}:kinesis:{region}:{account}:stream/{stream}"


def stream_statement(resource: Any) -> dict[str, Any]:
    """Read the usage stream (the bot never writes to it)."""
    return _allow("KinesisReadUsageStream", list(STREAM_READ_ACTIONS), resource)


def _document(*, partition: str, region: str, account: str, topics: Sequence[str], queue: str | None,
              log_group: str | None, principal_path: str, database_secret: str | None) -> dict[str, Any]:
    """The policy from already-checked parts (CloudFormation passes ``${…}`` placeholders)."""
    bedrock = f"arn:{partition}:bedrock:{region}"
    aip = f"{bedrock}:{account}:application-inference-profile/*"
    system_profiles = f"{bedrock}:{account}:inference-profile/*"
    iam = f"arn:{partition}:iam::{account}"
    alarms = f"arn:{partition}:cloudwatch:{region}:{account}:alarm:{NAME_PREFIX}*"
    any_topic = f"arn:{partition}:sns:{region}:{account}:*"
    # The group and its streams; no group known = every group ("*", the template's default too).
    group = f"arn:{partition}:logs:{region}:{account}:log-group:{log_group or '*'}"
    log_groups = [group, f"{group}:*"]
    tag_key, tag_value = MANAGED_BY_TAG
    managed_request = {"StringEquals": {f"aws:RequestTag/{tag_key}": tag_value}}

    def one(resources: Sequence[str]) -> str | list[str]:
        return resources[0] if len(resources) == 1 else list(resources)

    statements: list[dict[str, Any]] = [
        _allow("BedrockListProfiles", ["bedrock:ListInferenceProfiles"], "*"),
        _allow("BedrockCreateManagedProfiles", ["bedrock:CreateInferenceProfile"],
               [aip, f"arn:{partition}:bedrock:*::foundation-model/*", system_profiles], managed_request),
        _allow("BedrockTagManagedProfiles", ["bedrock:TagResource"], aip, managed_request),
        _allow("BedrockFlipAccessTag", ["bedrock:TagResource"], aip,
               {"ForAllValues:StringEquals": {"aws:TagKeys": [ACCESS_TAG]}}),
        _allow("BedrockReadProfiles", ["bedrock:GetInferenceProfile"], [aip, system_profiles]),
        _allow("BedrockReadTags", ["bedrock:ListTagsForResource"], f"{bedrock}:{account}:*"),
        _allow("BedrockDeleteManagedProfiles", ["bedrock:DeleteInferenceProfile"], aip,
               {"StringEquals": {f"aws:ResourceTag/{tag_key}": tag_value}}),
        _allow("IamUserDenyPolicies",
               ["iam:PutUserPolicy", "iam:DeleteUserPolicy", "iam:GetUserPolicy", "iam:ListUserPolicies",
                "iam:ListServiceSpecificCredentials", "iam:UpdateServiceSpecificCredential"],
               f"{iam}:user{principal_path}*"),
        _allow("IamRoleDenyPolicies",
               ["iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:GetRolePolicy", "iam:ListRolePolicies",
                "iam:GetRole"], f"{iam}:role{principal_path}*"),
        {"Sid": "ProtectBotPrincipals", "Effect": "Deny",
         "Action": ["iam:PutUserPolicy", "iam:DeleteUserPolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"],
         "Resource": [f"{iam}:user{BOT_PATH}*", f"{iam}:role{BOT_PATH}*"]},
        _allow("CloudWatchReadMetrics", ["cloudwatch:GetMetricData", "cloudwatch:ListMetrics"], "*"),
        _allow("CloudWatchPutBotAlarms", ["cloudwatch:PutMetricAlarm"], alarms,
               {"ForAllValues:StringEquals" if topics else "ForAllValues:StringLike":
                {"cloudwatch:AlarmActions": one(topics or [any_topic])}}),
        _allow("CloudWatchManageBotAlarms", ["cloudwatch:DeleteAlarms", "cloudwatch:TagResource"], alarms),
        _allow("CloudWatchDescribeAlarms", ["cloudwatch:DescribeAlarms"],
               f"arn:{partition}:cloudwatch:{region}:{account}:alarm:*"),
        _allow("BudgetsManageBotBudgets", ["budgets:ModifyBudget", "budgets:TagResource"],
               f"arn:{partition}:budgets::{account}:budget/{NAME_PREFIX}*"),
        _allow("BudgetsViewBudgets", ["budgets:ViewBudget"], f"arn:{partition}:budgets::{account}:budget/*"),
        _allow("SnsConfirmSubscriptions", ["sns:ConfirmSubscription"], one(topics or [any_topic])),
        _allow("SqsPollQueue", ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"],
               queue or f"arn:{partition}:sqs:{region}:{account}:*"),
        _allow("LogsQueryInvocationLogs", ["logs:StartQuery", "logs:GetQueryResults"], one(log_groups)),
        _allow("LogsStopQueries", ["logs:StopQuery"], "*"),
        _allow("StsWhoAmI", ["sts:GetCallerIdentity"], "*"),
        _allow("BillingReadPricesAndCosts", ["pricing:GetProducts", "ce:GetCostAndUsage"], "*"),
        # BOT_SSO_METHOD=scp only; effective only where Organizations policies can be managed
        # (the management account or a delegated administrator).
        _allow("OrganizationsListPolicies",
               ["organizations:ListPolicies", "organizations:CreatePolicy"], "*"),
        _allow("OrganizationsSessionsScp",
               ["organizations:DescribePolicy", "organizations:UpdatePolicy", "organizations:AttachPolicy"],
               [f"arn:{partition}:organizations::*:policy/o-*/service_control_policy/p-*",
                f"arn:{partition}:organizations::*:account/o-*/*",
                f"arn:{partition}:organizations::*:ou/o-*/ou-*",
                f"arn:{partition}:organizations::*:root/o-*/r-*"]),
    ]
    if database_secret:
        statements.append(_allow(DB_SECRET_SID, ["secretsmanager:GetSecretValue"], database_secret))
    return {"Version": VERSION, "Statement": statements}


def permission_set_policy(partition: str = "aws") -> dict[str, Any]:
    """The baseline inline policy of an Identity Center permission set for BOT_SSO_METHOD=tags.

    Inference only through an application inference profile tagged ``bedrock-bot:access=allowed``
    whose ``user`` tag equals the caller's ``bedrock-user`` principal tag (an Identity Center
    attribute for access control); a foundation model only when reached through an inference
    profile (``bedrock:InferenceProfileArn`` present). Revoking flips the tag to ``revoked``: no
    Allow matches any more. Nothing here allows batch jobs, API keys or bedrock-mantle.
    """
    return {"Version": VERSION, "Statement": [
        {"Sid": "InvokeOwnAllowedProfiles", "Effect": "Allow",
         "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
         "Resource": f"arn:{partition}:bedrock:*:*:application-inference-profile/*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/{ACCESS_TAG}": "allowed",
                                        "aws:ResourceTag/user": "${aws:PrincipalTag/bedrock-user}"}}},
        {"Sid": "FoundationModelsOnlyThroughProfiles", "Effect": "Allow",
         "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
         "Resource": f"arn:{partition}:bedrock:*::foundation-model/*",
         "Condition": {"Null": {"bedrock:InferenceProfileArn": "false"}}},
    ]}


def _allow(sid: str, actions: list[str], resource: str | list[str],
           condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return statement


# CloudFormation: the names deploy/bedrock-bot.yaml gives the topic, the queue, the database,
# the parameters and the condition under which the stack runs the bot (and so has a database).
CFN_TOPIC = "AlarmTopic"
CFN_QUEUE = "EventsQueue"
CFN_LOG_GROUP_PARAM = "InvocationLogGroupName"
CFN_PATH_PARAM = "GovernedPrincipalPath"
CFN_DATABASE = "Database"
CFN_DB_SECRET_ATTR = "MasterUserSecret.SecretArn"
CFN_ON_FARGATE = "OnFargate"


_WHOLE_VAR = re.compile(r"\$\{(?P<name>[A-Za-z0-9:]+)(?:\.(?P<attr>[A-Za-z0-9.]+))?\}")


def cfn_policy() -> dict[str, Any]:
    """``bot_policy`` for the template: a string holding a ``${…}`` becomes ``Fn::Sub`` (``Ref`` or
    ``Fn::GetAtt`` when it is nothing else)."""
    doc = _document(partition="${AWS::Partition}", region="${AWS::Region}", account="${AWS::AccountId}",
                    topics=[f"${{{CFN_TOPIC}}}"], queue=f"${{{CFN_QUEUE}.Arn}}",
                    log_group=f"${{{CFN_LOG_GROUP_PARAM}}}", principal_path=f"${{{CFN_PATH_PARAM}}}",
                    database_secret=f"${{{CFN_DATABASE}.{CFN_DB_SECRET_ATTR}}}")
    out: dict[str, Any] = _substitute(doc)
    # The stack has a database (and the bot reads its secret) only when it runs the bot on Fargate.
    out["Statement"] = [{"Fn::If": [CFN_ON_FARGATE, s, {"Ref": "AWS::NoValue"}]}
                        if s["Sid"] == DB_SECRET_SID else s for s in out["Statement"]]
    return out


def _substitute(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v) for v in node]
    if isinstance(node, str) and "${" in node:
        whole = _WHOLE_VAR.fullmatch(node)
        if whole and whole["attr"]:
            return {"Fn::GetAtt": [whole["name"], whole["attr"]]}
        if whole:
            return {"Ref": whole["name"]}
        return {"Fn::Sub": node}
    return node


def to_json(policy: dict[str, Any]) -> str:
    """Indented JSON ending with a newline (what ``aws iam put-role-policy`` takes)."""
    return json.dumps(policy, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.iam_policy", description=__doc__.split("\n")[0])
    parser.add_argument("--region")
    parser.add_argument("--account-id")
    parser.add_argument("--topic-arn", action="append")
    parser.add_argument("--queue", help="queue ARN or URL")
    parser.add_argument("--log-group")
    parser.add_argument("--principal-path", default="/")
    parser.add_argument("--database-secret", help="Secrets Manager ARN of the database password")
    parser.add_argument("--usage-stream", help="BOT_USAGE_STREAM: a Kinesis stream name or ARN")
    parser.add_argument("--cfn", action="store_true", help="the CloudFormation form the template embeds")
    args = parser.parse_args(argv)
    if args.cfn:
        sys.stdout.write(to_json(cfn_policy()))
        return 0
    try:
        policy = bot_policy(args.region, args.account_id, args.topic_arn, args.queue,
                            log_group=args.log_group, principal_path=args.principal_path,
                            database_secret=args.database_secret, usage_stream=args.usage_stream)
    except ValueError as exc:
        print(f"iam-policy: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(to_json(policy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
