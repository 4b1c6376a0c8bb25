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


def test_the_role_policy_is_bot_policy(template: dict[str, Any]) -> None:
    (role,) = _of_type(template, "AWS::IAM::Role").values()
    (policy,) = role["Properties"]["Policies"]
    assert policy["PolicyDocument"] == cfn_policy(), (
        "deploy/bedrock-bot.yaml drifted from bot.iam_policy; regenerate the PolicyDocument from "
        "`python -m bot.iam_policy --cfn`:\n" + to_json(cfn_policy()))


def _resolve(node: Any, env: dict[str, str]) -> Any:
    """Evaluate Ref / Fn::GetAtt / Fn::Sub against fixed values, as CloudFormation would."""
    if isinstance(node, list):
        return [_resolve(v, env) for v in node]
    if not isinstance(node, dict):
        return node
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
    env = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
           CFN_TOPIC: topic, f"{CFN_QUEUE}.Arn": queue, CFN_LOG_GROUP_PARAM: "/aws/bedrock/invocations",
           CFN_PATH_PARAM: "/"}
    (role,) = _of_type(template, "AWS::IAM::Role").values()
    deployed = _resolve(role["Properties"]["Policies"][0]["PolicyDocument"], env)
    assert deployed == bot_policy(region, account, topic, queue, log_group="/aws/bedrock/invocations")


def test_placeholders_name_the_templates_resources_and_parameters(template: dict[str, Any]) -> None:
    assert template["Resources"][CFN_TOPIC]["Type"] == "AWS::SNS::Topic"
    assert template["Resources"][CFN_QUEUE]["Type"] == "AWS::SQS::Queue"
    params = template["Parameters"]
    assert params[CFN_PATH_PARAM]["Default"] == "/"
    assert params[CFN_LOG_GROUP_PARAM]["Default"] == "*"
    for name, value in ((CFN_PATH_PARAM, "/bedrock-users/"), (CFN_LOG_GROUP_PARAM, "/aws/bedrock/x")):
        assert re.fullmatch(params[name]["AllowedPattern"], value)
    assert not re.fullmatch(params[CFN_PATH_PARAM]["AllowedPattern"], "users")


def test_the_role_lives_under_the_protected_path(template: dict[str, Any]) -> None:
    (role,) = _of_type(template, "AWS::IAM::Role").values()
    assert role["Properties"]["Path"] == BOT_PATH
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Action"] for s in trust] == ["sts:AssumeRole"]
    assert trust[0]["Principal"] == {"Service": {"Ref": "BotServicePrincipal"}}
    assert "ecs-tasks.amazonaws.com" in template["Parameters"]["BotServicePrincipal"]["AllowedValues"]


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
