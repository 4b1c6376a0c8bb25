"""deploy/bedrock-bot.yaml created in moto's CloudFormation: the stack completes, outputs the
request URL, and the role it gives the bot carries exactly what `bedrock-bot iam-policy` prints
when run with the environment the stack gives the container.

What moto does not model, and how this test deals with it (docs/deploy.md lists it too):
- `AWS::SNS::TopicPolicy`, `AWS::SQS::QueuePolicy`, `AWS::SNS::Subscription`: skipped by moto
  (a warning); tests/unit/test_deploy.py checks them statically.
- `AWS::RDS::DBInstance` ignores `ManageMasterUserPassword`, so `MasterUserSecret.SecretArn`
  does not exist: the test substitutes a secret it made in moto's Secrets Manager.
- moto splits `${Database.Endpoint.Address}` in `Fn::Sub` at every dot: the test rewrites such
  subs as the equivalent `Fn::Join` of `Fn::GetAtt`s.
- moto keeps a role's CloudFormation inline policy as the Python repr of the document: the test
  reads it back with `ast.literal_eval`.
- moto's ECS resources drop `LaunchType`, `NetworkMode`, the service's `LoadBalancers` and leave
  `AWS::NoValue` list items as nulls: those are checked statically, the nulls filtered here.
- `Rules` are not evaluated by moto; `CanonicalHostedZoneID` is not implemented, so the Route 53
  alias (HostedZoneId) is not created here.
"""

from __future__ import annotations

import ast
import io
import json
import re
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from bot.cli import main as cli_main
from tests.unit.test_deploy import DOCKERFILE, TEMPLATE, _CfnLoader, _healthcheck, _instructions, _stages

REGION, ACCOUNT = "eu-west-1", "123456789012"
DOMAIN = "bot.example.com"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/bedrock-bot:0.1.0"
TRIAL = f"arn:aws:iam::{ACCOUNT}:user/dana"
LOG_GROUP = "/aws/bedrock/modelinvocations"


def _moto_form(node: Any, db_secret: str) -> Any:
    """The template as moto can create it (see the module docstring)."""
    if isinstance(node, list):
        return [_moto_form(v, db_secret) for v in node]
    if not isinstance(node, dict):
        return node
    if node == {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]}:
        return db_secret
    sub = node.get("Fn::Sub") if set(node) == {"Fn::Sub"} else None
    if isinstance(sub, str) and re.search(r"\$\{\w+\.\w+\.\w+\}", sub):
        parts: list[Any] = []
        for piece in re.split(r"(\$\{[^}]+\})", sub):
            ref = re.fullmatch(r"\$\{(\w+)(?:\.(.+))?\}", piece)
            if ref:
                parts.append({"Fn::GetAtt": [ref[1], ref[2]]} if ref[2] else {"Ref": ref[1]})
            elif piece:
                parts.append(piece)
        return {"Fn::Join": ["", parts]}
    return {k: _moto_form(v, db_secret) for k, v in node.items()}


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Tried to parse AWS::")
        yield


def _network() -> tuple[str, list[str], list[str]]:
    ec2 = boto3.client("ec2", REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{'ab'[i % 2]}")["Subnet"]["SubnetId"]
               for i in range(4)]
    return vpc, subnets[:2], subnets[2:]


def _create(params: dict[str, str], db_secret: str = "") -> dict[str, str]:
    template = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    cfn = boto3.client("cloudformation", REGION)
    cfn.create_stack(StackName="bedrock-bot", TemplateBody=json.dumps(_moto_form(template, db_secret)),
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
                     Capabilities=["CAPABILITY_IAM"])
    stack = cfn.describe_stacks(StackName="bedrock-bot")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def _role(outputs: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bot role's trust policy and its one inline policy, as IAM holds them."""
    iam = boto3.client("iam", REGION)
    name = outputs["BotRoleArn"].rsplit("/", 1)[1]
    role = iam.get_role(RoleName=name)["Role"]
    assert role["Path"] == "/bedrock-bot/"
    (policy_name,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
    policy = iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"]
    if isinstance(policy, str):  # moto stores a CloudFormation inline policy as a Python repr
        policy = ast.literal_eval(policy)
    trust = role["AssumeRolePolicyDocument"]
    for document in (trust, policy):  # moto keeps an AWS::NoValue list item as null
        document["Statement"] = [s for s in document["Statement"] if s is not None]
    return trust, policy


def _iam_policy_cli(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    """What `bedrock-bot iam-policy` prints with exactly `env` as the bot's configuration."""
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "BOT_SNS_TOPIC_ARNS", "BOT_SQS_QUEUE_URL",
                "BOT_INVOCATION_LOG_GROUP", "BOT_DATABASE_SECRET"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli_main(["iam-policy", "--account-id", ACCOUNT, *args]) == 0
    printed: dict[str, Any] = json.loads(out.getvalue())
    return printed


def test_the_fargate_stack_creates_and_runs_the_bot_with_exactly_its_policy(
        aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    vpc, public, private = _network()
    sm = boto3.client("secretsmanager", REGION)
    slack = sm.create_secret(Name="bedrock-bot/slack", SecretString=json.dumps(
        {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s"}))["ARN"]
    db_secret = sm.create_secret(Name="rds!db-0a1b2c3d", SecretString=json.dumps(
        {"username": "bedrockbot", "password": "p"}))["ARN"]
    cert = boto3.client("acm", REGION).request_certificate(DomainName=DOMAIN)["CertificateArn"]
    outputs = _create({
        "ImageUri": IMAGE, "DomainName": DOMAIN, "CertificateArn": cert, "VpcId": vpc,
        "PublicSubnetIds": ",".join(public), "PrivateSubnetIds": ",".join(private),
        "SlackSecretArn": slack, "ContainerPort": "8080", "InvocationLogGroupName": LOG_GROUP,
        "GovernedPrincipalPath": "/bedrock-users/", "BotAdmins": "U012ABCDEF", "AlertChannel": "C0123ALERT",
        "DigestChannel": "C0123DIGST", "TrialPrincipalArn": TRIAL}, db_secret)

    assert outputs["RequestUrl"] == f"https://{DOMAIN}/slack/events"

    # The container: Slack secrets injected from the secret's JSON keys, settings in the environment.
    ecs = boto3.client("ecs", REGION)
    (task_arn,) = ecs.list_task_definitions(familyPrefix="bedrock-bot")["taskDefinitionArns"]
    task = ecs.describe_task_definition(taskDefinition=task_arn)["taskDefinition"]
    (container,) = task["containerDefinitions"]
    env = {e["name"]: e["value"] for e in container["environment"] if e}  # moto leaves NoValue as null
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == {
        "SLACK_BOT_TOKEN": f"{slack}:SLACK_BOT_TOKEN::",
        "SLACK_SIGNING_SECRET": f"{slack}:SLACK_SIGNING_SECRET::"}
    assert env["BOT_PORT"] == "8080" and container["portMappings"][0]["containerPort"] == 8080
    assert env["AWS_REGION"] == REGION and env["BOT_DATABASE_SECRET"] == db_secret
    assert env["DATABASE_URL"].startswith(f"postgresql+psycopg://bedrockbot@{outputs['DatabaseEndpoint']}:")
    assert env["BOT_SNS_TOPIC_ARNS"] == outputs["AlarmTopicArn"]
    assert env["BOT_SQS_QUEUE_URL"] == outputs["EventsQueueUrl"]
    assert env["BOT_INVOCATION_LOG_GROUP"] == LOG_GROUP and env["BOT_ADMINS"] == "U012ABCDEF"
    assert container["logConfiguration"]["options"]["awslogs-group"] == outputs["LogGroupName"]
    docker = _stages(_instructions(DOCKERFILE.read_text()))
    assert container["healthCheck"]["command"] == ["CMD", *_healthcheck(docker)]

    # The role: exactly `bedrock-bot iam-policy` for the container's configuration.
    trust, policy = _role(outputs)
    assert policy == _iam_policy_cli(env, monkeypatch, "--principal-path", "/bedrock-users/")
    assert any(s["Sid"] == "SecretsReadDatabasePassword" for s in policy["Statement"])
    principals = [s["Principal"] for s in trust["Statement"]]
    assert {"Service": "ecs-tasks.amazonaws.com"} in principals and {"AWS": TRIAL} in principals

    # HTTPS in front, /healthz behind, on the container port.
    elb = boto3.client("elbv2", REGION)
    (tg,) = elb.describe_target_groups()["TargetGroups"]
    assert (tg["Port"], tg["HealthCheckPath"], tg["HealthCheckPort"], tg["TargetType"]) == \
        (8080, "/healthz", "traffic-port", "ip")
    (lb,) = elb.describe_load_balancers()["LoadBalancers"]
    assert lb["DNSName"] == outputs["LoadBalancerDnsName"] and lb["Scheme"] == "internet-facing"
    (listener,) = elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]
    assert (listener["Protocol"], listener["Port"]) == ("HTTPS", 443)
    assert listener["Certificates"][0]["CertificateArn"] == cert
    rules = elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
    rules = [r for r in rules if not r["IsDefault"]]
    paths = [c["PathPatternConfig"]["Values"] for r in rules for c in r["Conditions"]]
    assert paths == [["/slack/events"]]
    assert rules[0]["Actions"][0]["TargetGroupArn"] == tg["TargetGroupArn"]

    # PostgreSQL, the log group, the service.
    (db,) = boto3.client("rds", REGION).describe_db_instances()["DBInstances"]
    assert db["Engine"] == "postgres" and db["DBName"] == "bedrockbot"
    logs = boto3.client("logs", REGION).describe_log_groups(logGroupNamePrefix=outputs["LogGroupName"])
    assert logs["logGroups"][0]["retentionInDays"] == 90
    (service,) = ecs.describe_services(cluster=outputs["ClusterName"],
                                       services=[outputs["ServiceName"]])["services"]
    assert service["desiredCount"] == 1 and service["taskDefinition"] == task_arn


def test_run_on_elsewhere_makes_only_the_queue_topic_and_a_role_for_a_laptop(
        aws: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The laptop trial: the bot's own role, assumable by the trial principal, no compute, no
    database; its policy is what `bedrock-bot iam-policy` prints with the stack's topic and queue."""
    monkeypatch.chdir(tmp_path)
    outputs = _create({"RunOn": "elsewhere", "TrialPrincipalArn": TRIAL})
    assert "RequestUrl" not in outputs and "DatabaseSecretArn" not in outputs
    assert not boto3.client("ecs", REGION).list_clusters()["clusterArns"]
    assert not boto3.client("elbv2", REGION).describe_load_balancers()["LoadBalancers"]
    assert not boto3.client("rds", REGION).describe_db_instances()["DBInstances"]

    trust, policy = _role(outputs)
    assert {"AWS": TRIAL} in [s["Principal"] for s in trust["Statement"]]
    env = {"AWS_REGION": REGION, "BOT_SNS_TOPIC_ARNS": outputs["AlarmTopicArn"],
           "BOT_SQS_QUEUE_URL": outputs["EventsQueueUrl"]}
    assert policy == _iam_policy_cli(env, monkeypatch)
    assert not any("secretsmanager" in json.dumps(s) for s in policy["Statement"])


def test_without_a_trial_principal_only_the_service_may_assume_the_role(
        aws: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    trust, _ = _role(_create({"RunOn": "elsewhere"}))
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ecs-tasks.amazonaws.com"}]
