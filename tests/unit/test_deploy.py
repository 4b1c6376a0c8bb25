"""Deployment artefacts: the CloudFormation template (cfn-lint clean, its role carries exactly
``bot_policy()``), the Dockerfile (parsed: no Docker engine here) and .dockerignore."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.iam_policy import (
    BOT_PATH,
    CFN_LOG_GROUP_PARAM,
    CFN_PATH_PARAM,
    CFN_QUEUE,
    CFN_TOPIC,
    bot_policy,
    cfn_policy,
    stream_statement,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "bedrock-bot.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# ================================================================== CloudFormation


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, !GetAtt a.b, …) as their long forms."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _cfn_lint_path() -> str:
    exe = Path(sys.executable).with_name("cfn-lint")
    return str(exe) if exe.exists() else "cfn-lint"


def test_cfn_lint_is_clean_informational_checks_included() -> None:
    proc = subprocess.run([_cfn_lint_path(), "--include-checks", "I", "--", str(TEMPLATE)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"cfn-lint exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def _bot_role(template: dict[str, Any]) -> dict[str, Any]:
    role: dict[str, Any] = template["Resources"]["BotRole"]
    assert role["Type"] == "AWS::IAM::Role"
    return role


def test_the_role_policy_is_bot_policy(template: dict[str, Any]) -> None:
    (policy,) = _bot_role(template)["Properties"]["Policies"]
    assert policy["PolicyDocument"] == cfn_policy(), (
        "deploy/bedrock-bot.yaml drifted from bot.iam_policy; regenerate the PolicyDocument from "
        "`python -m bot.iam_policy --cfn`:\n" + to_json(cfn_policy()))


NO_VALUE = object()


def _resolve(node: Any, env: dict[str, Any]) -> Any:
    """Evaluate Ref / Fn::GetAtt / Fn::Sub / Fn::If against fixed values (conditions are keys of
    ``env`` too), as CloudFormation would; AWS::NoValue drops the list item."""
    if isinstance(node, list):
        return [v for v in (_resolve(item, env) for item in node) if v is not NO_VALUE]
    if not isinstance(node, dict):
        return node
    if node == {"Ref": "AWS::NoValue"}:
        return NO_VALUE
    if set(node) == {"Fn::If"}:
        condition, then, otherwise = node["Fn::If"]
        return _resolve(then if env[condition] else otherwise, env)
    if set(node) == {"Ref"}:
        return env[node["Ref"]]
    if set(node) == {"Fn::GetAtt"}:
        return env[".".join(node["Fn::GetAtt"])]
    if set(node) == {"Fn::Sub"}:
        return re.sub(r"\$\{([^}]+)\}", lambda m: env[m[1]], node["Fn::Sub"])
    return {k: _resolve(v, env) for k, v in node.items()}


def test_deployed_policy_equals_bot_policy_for_the_stack(template: dict[str, Any]) -> None:
    """What IAM would receive for a stack in eu-west-1 is what `bedrock-bot iam-policy` prints
    for the same region, account, topic, queue and log group."""
    region, account = "eu-west-1", "210987654321"
    topic = f"arn:aws:sns:{region}:{account}:stack-AlarmTopic-1A2B3C"
    queue = f"arn:aws:sqs:{region}:{account}:stack-EventsQueue-4D5E6F"
    secret = f"arn:aws:secretsmanager:{region}:{account}:secret:rds!db-0a1b2c3d-AbC123"
    env = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
           CFN_TOPIC: topic, f"{CFN_QUEUE}.Arn": queue, CFN_LOG_GROUP_PARAM: "/aws/bedrock/invocations",
           CFN_PATH_PARAM: "/", "Database.MasterUserSecret.SecretArn": secret}
    document = _bot_role(template)["Properties"]["Policies"][0]["PolicyDocument"]
    on_fargate = _resolve(document, env | {"OnFargate": True})
    assert on_fargate == bot_policy(region, account, topic, queue, log_group="/aws/bedrock/invocations",
                                    database_secret=secret)
    elsewhere = _resolve(document, env | {"OnFargate": False})  # no database in the stack
    assert elsewhere == bot_policy(region, account, topic, queue, log_group="/aws/bedrock/invocations")


def test_placeholders_name_the_templates_resources_and_parameters(template: dict[str, Any]) -> None:
    assert template["Resources"][CFN_TOPIC]["Type"] == "AWS::SNS::Topic"
    assert template["Resources"][CFN_QUEUE]["Type"] == "AWS::SQS::Queue"
    params = template["Parameters"]
    assert params[CFN_PATH_PARAM]["Default"] == "/"
    assert params[CFN_LOG_GROUP_PARAM]["Default"] == "*"
    for name, value in ((CFN_PATH_PARAM, "/bedrock-users/"), (CFN_LOG_GROUP_PARAM, "/aws/bedrock/x")):
        assert re.fullmatch(params[name]["AllowedPattern"], value)
    assert not re.fullmatch(params[CFN_PATH_PARAM]["AllowedPattern"], "users")


def test_the_roles_live_under_the_protected_path(template: dict[str, Any]) -> None:
    """Both roles (the bot's, ECS's execution role) are under /bedrock-bot/, where the bot's own
    policy forbids it to write."""
    for role in _of_type(template, "AWS::IAM::Role").values():
        assert role["Properties"]["Path"] == BOT_PATH
    trust = _bot_role(template)["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    service, trial = trust
    assert service["Action"] == "sts:AssumeRole"
    assert service["Principal"] == {"Service": {"Ref": "BotServicePrincipal"}}
    assert "ecs-tasks.amazonaws.com" in template["Parameters"]["BotServicePrincipal"]["AllowedValues"]
    # A laptop trial may assume the same role, only when a principal is named.
    condition, statement, otherwise = trial["Fn::If"]
    assert condition == "HasTrialPrincipal" and otherwise == {"Ref": "AWS::NoValue"}
    assert statement["Principal"] == {"AWS": {"Ref": "TrialPrincipalArn"}}
    assert statement["Action"] == "sts:AssumeRole"
    pattern = template["Parameters"]["TrialPrincipalArn"]["AllowedPattern"]
    assert re.fullmatch(pattern, "") and re.fullmatch(pattern, "arn:aws:iam::123456789012:user/dana")
    sso = "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_x"
    assert re.fullmatch(pattern, sso)
    assert not re.fullmatch(pattern, "arn:aws:iam::123456789012:root")


def test_topic_queue_subscription_and_policies(template: dict[str, Any]) -> None:
    topic_ref = {"Ref": CFN_TOPIC}
    queue_arn = {"Fn::GetAtt": [CFN_QUEUE, "Arn"]}
    (sub,) = _of_type(template, "AWS::SNS::Subscription").values()
    props = sub["Properties"]
    assert props["Protocol"] == "sqs" and props["TopicArn"] == topic_ref and props["Endpoint"] == queue_arn
    assert props["RawMessageDelivery"] is False  # the bot verifies the signed SNS envelope

    (queue_policy,) = _of_type(template, "AWS::SQS::QueuePolicy").values()
    assert queue_policy["Properties"]["Queues"] == [{"Ref": CFN_QUEUE}]
    (stmt,) = queue_policy["Properties"]["PolicyDocument"]["Statement"]
    assert stmt["Principal"] == {"Service": "sns.amazonaws.com"} and stmt["Action"] == "sqs:SendMessage"
    assert stmt["Resource"] == queue_arn
    assert stmt["Condition"] == {"ArnEquals": {"aws:SourceArn": topic_ref}}

    (topic_policy,) = _of_type(template, "AWS::SNS::TopicPolicy").values()
    (pub,) = topic_policy["Properties"]["PolicyDocument"]["Statement"]
    assert set(pub["Principal"]["Service"]) == {"cloudwatch.amazonaws.com", "budgets.amazonaws.com"}
    assert pub["Action"] == "sns:Publish" and pub["Resource"] == topic_ref
    assert pub["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}

    queue = template["Resources"][CFN_QUEUE]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert queue["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][1] == "Arn"


def test_outputs_name_the_bots_settings(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["AlarmTopicArn"]["Value"] == {"Ref": CFN_TOPIC}
    assert "BOT_SNS_TOPIC_ARNS" in outputs["AlarmTopicArn"]["Description"]
    assert outputs["EventsQueueUrl"]["Value"] == {"Ref": CFN_QUEUE}  # Ref of a queue is its URL
    assert "BOT_SQS_QUEUE_URL" in outputs["EventsQueueUrl"]["Description"]
    assert "BotRoleArn" in outputs


def test_fargate_health_checks_follow_the_container_port(template: dict[str, Any]) -> None:
    """Target group, service, port mapping and BOT_PORT all name ContainerPort; the load balancer
    asks /healthz on the traffic port."""
    res = template["Resources"]
    port = {"Ref": "ContainerPort"}
    tg = res["TargetGroup"]["Properties"]
    assert tg["Port"] == port and tg["HealthCheckPort"] == "traffic-port" and tg["TargetType"] == "ip"
    assert tg["HealthCheckPath"] == "/healthz" and tg["Matcher"] == {"HttpCode": "200"}
    (lb,) = res["Service"]["Properties"]["LoadBalancers"]
    assert lb == {"ContainerName": "bot", "ContainerPort": port, "TargetGroupArn": {"Ref": "TargetGroup"}}
    container = res["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert container["PortMappings"] == [{"ContainerPort": port, "Protocol": "tcp"}]
    ingress = res["ServiceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"]) for r in ingress] == [(port, port)]


def test_only_slacks_path_is_public_over_https(template: dict[str, Any]) -> None:
    res = template["Resources"]
    listener = res["HttpsListener"]["Properties"]
    assert listener["Protocol"] == "HTTPS" and listener["Port"] == 443
    assert listener["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert listener["SslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert [a["Type"] for a in listener["DefaultActions"]] == ["fixed-response"]
    rules = _of_type(template, "AWS::ElasticLoadBalancingV2::ListenerRule").values()
    paths = [c["PathPatternConfig"]["Values"] for r in rules for c in r["Properties"]["Conditions"]]
    assert paths == [["/slack/events"]]  # not /metrics, not /sns (SNS arrives through the queue)
    assert not _of_type(template, "AWS::ElasticLoadBalancingV2::Listener").keys() - {"HttpsListener"}


def test_slack_secrets_are_injected_and_readable_only_by_ecs(template: dict[str, Any]) -> None:
    res = template["Resources"]
    container = res["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert container["Secrets"] == [
        {"Name": name, "ValueFrom": {"Fn::Sub": f"${{SlackSecretArn}}:{name}::"}}
        for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")]
    names = {e["Name"] for e in container["Environment"] if "Name" in e}
    assert not names & {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"}
    (policy,) = res["TaskExecutionRole"]["Properties"]["Policies"]
    (stmt,) = policy["PolicyDocument"]["Statement"]
    assert stmt["Action"] == "secretsmanager:GetSecretValue" and stmt["Resource"] == {"Ref": "SlackSecretArn"}
    task = res["TaskDefinition"]["Properties"]
    assert task["TaskRoleArn"] == {"Fn::GetAtt": ["BotRole", "Arn"]}
    assert task["ExecutionRoleArn"] == {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]}
    log = container["LogConfiguration"]
    assert log["LogDriver"] == "awslogs" and log["Options"]["awslogs-group"] == {"Ref": "LogGroup"}


def test_the_database_password_is_rds_managed_and_never_in_the_url(template: dict[str, Any]) -> None:
    res = template["Resources"]
    db = res["Database"]["Properties"]
    assert db["ManageMasterUserPassword"] is True and "MasterUserPassword" not in db
    assert db["Engine"] == "postgres" and db["PubliclyAccessible"] is False and db["StorageEncrypted"] is True
    assert res["Database"]["DeletionPolicy"] == "Snapshot"
    env = {e["Name"]: e["Value"] for e in
           res["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"] if "Name" in e}
    url = env["DATABASE_URL"]["Fn::Sub"]
    assert url.startswith("postgresql+psycopg://bedrockbot@${Database.Endpoint.Address}:")
    assert "sslmode=require" in url
    assert env["BOT_DATABASE_SECRET"] == {"Fn::GetAtt": ["Database", "MasterUserSecret.SecretArn"]}
    ingress = res["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [r["SourceSecurityGroupId"] for r in ingress] == [{"Ref": "ServiceSecurityGroup"}]


def test_fargate_resources_exist_only_with_run_on_fargate(template: dict[str, Any]) -> None:
    base = {"AlarmTopic", "AlarmTopicPolicy", "EventsDeadLetterQueue", "EventsQueue", "EventsQueuePolicy",
            "EventsSubscription", "BotRole", "BotInstanceProfile"}
    for name, resource in template["Resources"].items():
        if name not in base:
            assert resource.get("Condition") in ("OnFargate", "HasDnsRecord"), name
    on_fargate = template["Conditions"]["OnFargate"]["Fn::And"]
    assert {"Fn::Equals": [{"Ref": "RunOn"}, "fargate"]} in on_fargate
    rule = template["Rules"]["FargateNeedsItsParameters"]
    asserted = json.dumps(rule["Assertions"])
    for needed in ("ImageUri", "DomainName", "CertificateArn", "VpcId", "PublicSubnetIds",
                   "PrivateSubnetIds", "SlackSecretArn", "BotServicePrincipal"):
        assert needed in asserted, needed


# ================================================================== the usage stream

STREAM_TEMPLATE = ROOT / "deploy" / "usage-stream.yaml"


@pytest.fixture(scope="module")
def stream_template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(STREAM_TEMPLATE.read_text(), Loader=_CfnLoader)
    return loaded


def test_the_usage_stream_template_is_cfn_lint_clean() -> None:
    proc = subprocess.run([_cfn_lint_path(), "--include-checks", "I", "--", str(STREAM_TEMPLATE)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"cfn-lint exit {proc.returncode}:\n{proc.stdout}{proc.stderr}"


def test_the_bots_stream_permission_is_what_iam_policy_prints(stream_template: dict[str, Any]) -> None:
    (policy,) = _of_type(stream_template, "AWS::IAM::Policy").values()
    assert policy["Condition"] == "AttachToBot" and policy["Properties"]["Roles"] == [{"Ref": "BotRoleName"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement == stream_statement({"Fn::GetAtt": ["UsageStream", "Arn"]})
    region, account = "eu-west-1", "210987654321"
    arn = f"arn:aws:kinesis:{region}:{account}:stream/stack-UsageStream-1A2B"
    deployed = _resolve(statement, {"UsageStream.Arn": arn})
    printed = bot_policy(region, account, usage_stream="stack-UsageStream-1A2B")["Statement"][-1]
    assert deployed == printed


def test_cloudwatch_logs_may_only_put_records_into_the_stream(stream_template: dict[str, Any]) -> None:
    resources = stream_template["Resources"]
    role = resources["SubscriptionRole"]["Properties"]
    assert role["Path"] == BOT_PATH  # out of the bot's reach too
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "logs.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringLike": {"aws:SourceArn": {
        "Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:*"}}}
    (policy,) = role["Policies"]
    (put,) = policy["PolicyDocument"]["Statement"]
    assert put["Action"] == "kinesis:PutRecord" and put["Resource"] == {"Fn::GetAtt": ["UsageStream", "Arn"]}
    sub = resources["UsageSubscription"]["Properties"]
    assert sub["DestinationArn"] == {"Fn::GetAtt": ["UsageStream", "Arn"]}
    assert sub["RoleArn"] == {"Fn::GetAtt": ["SubscriptionRole", "Arn"]}
    assert sub["LogGroupName"] == {"Ref": "InvocationLogGroupName"}
    pattern = stream_template["Parameters"]["FilterPattern"]["Default"]
    assert pattern == '{ $.schemaType = "ModelInvocationLog" }'


def test_the_stream_is_provisioned_encrypted_and_named_in_the_outputs(
        stream_template: dict[str, Any]) -> None:
    stream = stream_template["Resources"]["UsageStream"]["Properties"]
    assert stream["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}
    assert stream["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    assert stream_template["Parameters"]["RetentionHours"]["Default"] == 24
    outputs = stream_template["Outputs"]
    assert outputs["UsageStreamName"]["Value"] == {"Ref": "UsageStream"}
    assert "BOT_USAGE_STREAM" in outputs["UsageStreamName"]["Description"]


# ================================================================== Dockerfile

Stage = list[tuple[str, str]]
Docker = tuple[dict[str, str], list[Stage]]  # global ARG defaults, stages


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def _stages(instructions: list[tuple[str, str]]) -> Docker:
    """Global ARG defaults, then one list of instructions per stage (each starting with FROM)."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append([(word, rest)])
        elif stages:
            stages[-1].append((word, rest))
        elif word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def _base(from_args: str, args: dict[str, str]) -> tuple[str, str | None]:
    parts = from_args.split()
    parts = [p for p in parts if not p.startswith("--platform")]
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], parts[0])
    alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
    return image, alias


@pytest.fixture(scope="module")
def docker() -> Docker:
    return _stages(_instructions(DOCKERFILE.read_text()))


def _all(stage: Stage, word: str) -> list[str]:
    return [rest for w, rest in stage if w == word]


def test_multi_stage_on_python_slim(docker: Docker) -> None:
    args, stages = docker
    assert len(stages) >= 2
    bases = [_base(s[0][1], args) for s in stages]
    assert all(image == "python:3.11-slim" for image, _ in bases), bases
    builder_alias = bases[0][1]
    assert builder_alias
    final = stages[-1]
    assert any(f"--from={builder_alias}" in c for c in _all(final, "COPY"))


BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|libc6-dev|python3-dev)\b")


def test_build_tools_only_in_the_builder(docker: Docker) -> None:
    _, stages = docker
    assert any(BUILD_TOOLS.search(r) for r in _all(stages[0], "RUN")), "the builder installs compilers"
    for run in _all(stages[-1], "RUN"):
        assert "apt-get install" not in run and "apk add" not in run, run
        assert not BUILD_TOOLS.search(run), run


def test_final_stage_runs_as_a_non_root_user(docker: Docker) -> None:
    _, stages = docker
    users = [u.split(":")[0] for u in _all(stages[-1], "USER")]
    assert users, "no USER in the final stage"
    assert not {"root", "0"} & set(users), users
    user = users[-1]
    assert user.isdigit(), "a numeric uid lets Kubernetes' runAsNonRoot check it"
    assert any(f"--uid {user}" in r for r in _all(stages[-1], "RUN")), "the user is created in this stage"


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), value
    return parsed


def test_entrypoint_serve_and_port(docker: Docker) -> None:
    _, stages = docker
    final = stages[-1]
    assert _exec_form(_all(final, "ENTRYPOINT")[-1]) == ["bedrock-bot"]
    assert _exec_form(_all(final, "CMD")[-1]) == ["serve"]
    assert _all(final, "EXPOSE") == ["3000"]
    env = " ".join(_all(final, "ENV"))
    assert "BOT_PORT=3000" in env and "PYTHONUNBUFFERED=1" in env
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "bedrock-bot" in scripts


def test_serve_is_a_real_subcommand() -> None:
    from handlers.main import main as bot_main

    with pytest.raises(SystemExit) as done:
        bot_main(["serve", "--help"])
    assert done.value.code == 0


def _healthcheck(docker: Docker) -> list[str]:
    _, stages = docker
    (check,) = _all(stages[-1], "HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    return _exec_form(command)


def test_healthcheck_uses_python_not_curl(docker: Docker) -> None:
    cmd = _healthcheck(docker)
    assert cmd[:2] == ["python", "-c"]
    assert "/healthz" in cmd[2] and "urllib" in cmd[2]
    assert not re.search(r"\b(curl|wget)\b", " ".join(cmd))


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[HTTPServer, int]]:
    handler = type("Health", (_Health,), {"status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_check(cmd: list[str], port: int) -> int:
    env = {**os.environ, "BOT_PORT": str(port)}
    argv = [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]
    return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode


def test_healthcheck_command_really_probes_healthz(
        docker: Docker,
        health_server: tuple[HTTPServer, int]) -> None:
    """Run the HEALTHCHECK's own command against a stand-in: healthy → 0, 503 → 1, down → 1."""
    cmd = _healthcheck(docker)
    server, port = health_server
    assert _run_check(cmd, port) == 0
    server.RequestHandlerClass.status = 503  # type: ignore[attr-defined]
    assert _run_check(cmd, port) != 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert _run_check(cmd, free) != 0


def test_healthcheck_follows_the_port_serve_wrote(
        docker: Docker, health_server: tuple[HTTPServer, int], tmp_path: Path) -> None:
    """`serve --port N` writes N to BOT_PORT_FILE; the HEALTHCHECK asks that port, not BOT_PORT."""
    cmd = _healthcheck(docker)
    _, port = health_server
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        wrong = s.getsockname()[1]
    port_file = tmp_path / "bedrock-bot.port"
    port_file.write_text(f"{port}\n")
    argv = [sys.executable, *cmd[1:]]
    env = {**os.environ, "BOT_PORT": str(wrong), "BOT_PORT_FILE": str(port_file)}
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode == 0
    port_file.unlink()  # serve gone (or never wrote it): BOT_PORT again
    assert subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode != 0
    _, stages = docker
    assert "BOT_PORT_FILE=/tmp/bedrock-bot.port" in " ".join(_all(stages[-1], "ENV"))


def test_the_image_stops_on_sigterm(docker: Docker) -> None:
    """The bot is PID 1 and handles SIGTERM itself (tests/e2e/test_shutdown.py); the image says
    which signal `docker stop` sends."""
    _, stages = docker
    assert _all(stages[-1], "STOPSIGNAL") == ["SIGTERM"]


def test_the_task_definition_health_check_is_the_images(docker: Docker, template: dict[str, Any]) -> None:
    container = template["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert container["HealthCheck"]["Command"] == ["CMD", *_healthcheck(docker)]
    assert {"Name": "BOT_PORT", "Value": {"Ref": "ContainerPort"}} in container["Environment"]


def test_image_gets_every_package_it_installs(docker: Docker) -> None:
    _, stages = docker
    copied = " ".join(shlex.split(" ".join(_all(stages[0], "COPY"))))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for needed in ("pyproject.toml", project["project"]["readme"], *packages):
        assert needed in copied, f"{needed} is not copied into the builder"
    assert any(re.search(r"pip install (--[\w-]+ )*\.(\s|$)", r) for r in _all(stages[0], "RUN")), \
        "the builder should pip-install the project (not editable)"


# ================================================================== .dockerignore


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    entries = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for must in (".venv", ".git", "tests", "*.db", ".env"):
        assert must in entries, must
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"],
              *(p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"])]
    for path in needed:
        assert path not in entries, f"{path} is needed by the build but ignored"
