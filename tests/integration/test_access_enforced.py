"""Revocation really refuses Bedrock calls: an in-process moto server with IAM enforcement on.

How moto enforces IAM (moto 5.2, read from its source):

* ``moto/core/authorization.py``: every request through ``BaseResponse.call_action`` is
  authenticated (SigV4 signature recomputed with the IAM user's secret) and authorised once
  ``ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT``.
* ``moto/settings.py`` reads ``INITIAL_NO_AUTH_ACTION_COUNT`` from the environment **at import
  time** (default ``inf`` = never enforce). moto is already imported when this module runs, so
  setting the environment variable here would do nothing; ``moto.core.config``'s
  ``mock_aws(config=...)`` has no switch for it either. The check reads the module attribute
  on every request, so we pin it with ``monkeypatch.setattr`` (restored at teardown) and flip it
  over HTTP with ``POST /moto-api/reset-auth`` (what moto's own ``set_initial_no_auth_action_count``
  does in server mode; it also zeroes the request counter).
* ``moto/iam/access_control.py``: the IAM action is ``<signing name>:<operation>``. bedrock-runtime
  signs as ``bedrock``, so InvokeModel is checked as ``bedrock:InvokeModel`` against the caller's
  inline, attached and group policies: explicit Deny wins, otherwise an Allow is needed.
* bedrock-runtime's response class has no ``_determine_resource``, so moto authorises every
  bedrock-runtime call against the resource ``"*"``. A statement with specific Resource ARNs
  never matches ``"*"`` (moto glob-matches the statement's pattern against the request's
  resource), so over the wire moto does **not** enforce resource-scoped denies: a deny on one
  AIP lets calls to that AIP (and to every other model) through. For the scoped case we ask
  moto's own engine (``IAMRequest.check_action_permitted``, the code the server runs) with the
  real model ARN as the resource.
* A refusal is HTTP 403 with an IAM-style XML body (``<Code>AccessDenied</Code> ... is not
  authorized to perform: bedrock:InvokeModel``), not the JSON ``AccessDeniedException`` real
  Bedrock sends; botocore's rest-json parser therefore reports error code ``"403"`` with the
  XML as the message. The tests assert on the status and the message.
* moto's bedrock-runtime implements InvokeModel only (it returns ``{}`` as the body). Other
  operations are still authorised first (InvokeModelWithResponseStream is refused by our deny),
  but moto checks Converse as ``bedrock:Converse`` — it does not model that AWS authorises
  Converse/ConverseStream as InvokeModel/InvokeModelWithResponseStream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.core.exceptions import AccessDeniedError
from moto.iam.access_control import IAMRequest
from moto.server import ThreadedMotoServer

from bot.aws.access import IamAccess
from bot.errors import AwsError

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
AIP_A = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/a1b2c3d4e5f6"
AIP_B = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/f6e5d4c3b2a1"
BASE_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
NO_RETRY = Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=10)

# What the bot itself is given: exactly the IAM calls IamAccess makes.
BOT_POLICY = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Resource": "*",
    "Action": ["iam:ListUserPolicies", "iam:GetUserPolicy", "iam:PutUserPolicy", "iam:DeleteUserPolicy",
               "iam:ListRolePolicies", "iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy"]}]}
BEDROCK_USER_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}]}


@dataclass
class Keys:
    access_key_id: str
    secret: str


@dataclass
class World:
    url: str
    bot: IamAccess
    alice_arn: str
    alice: Keys
    runtime: Any  # bedrock-runtime client signed with alice's keys
    alice_iam: Any  # iam client signed with alice's keys


def _client(service: str, url: str, keys: Keys) -> Any:
    # Explicit keys: the autouse fixture's AWS_SESSION_TOKEN must not ride along (moto would
    # then treat an AKIA key as a session and refuse it).
    return boto3.client(service, region_name=REGION, endpoint_url=url, config=NO_RETRY,  # type: ignore[call-overload]
                        aws_access_key_id=keys.access_key_id, aws_secret_access_key=keys.secret)


def _set_auth(url: str, count: str) -> None:
    resp = requests.post(f"{url}/moto-api/reset-auth", data=count.encode(), timeout=5)
    assert resp.status_code == 200, resp.text


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    # Start with enforcement off, whatever the environment said when moto was imported;
    # monkeypatch puts the module attributes back afterwards.
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        root = boto3.client("iam", region_name=REGION, endpoint_url=url, config=NO_RETRY)
        root.create_user(UserName="bedrock-bot")
        root.put_user_policy(UserName="bedrock-bot", PolicyName="bot", PolicyDocument=json.dumps(BOT_POLICY))
        bot_key = root.create_access_key(UserName="bedrock-bot")["AccessKey"]
        alice_arn = root.create_user(UserName="alice")["User"]["Arn"]
        root.put_user_policy(UserName="alice", PolicyName="bedrock-use",
                             PolicyDocument=json.dumps(BEDROCK_USER_POLICY))
        alice_key = root.create_access_key(UserName="alice")["AccessKey"]

        _set_auth(url, "0")  # from here on every request is authenticated and authorised
        bot = Keys(bot_key["AccessKeyId"], bot_key["SecretAccessKey"])
        alice = Keys(alice_key["AccessKeyId"], alice_key["SecretAccessKey"])
        yield World(url=url, bot=IamAccess(_client("iam", url, bot)), alice_arn=alice_arn, alice=alice,
                    runtime=_client("bedrock-runtime", url, alice), alice_iam=_client("iam", url, alice))
    finally:
        try:
            _set_auth(url, "inf")
            requests.post(f"{url}/moto-api/reset", timeout=5)  # leave no IAM state for other tests
        finally:
            server.stop()


def invoke(world: World, model_id: str) -> bytes:
    resp = world.runtime.invoke_model(modelId=model_id, body=json.dumps({"prompt": "hi"}).encode(),
                                      contentType="application/json", accept="application/json")
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    return bytes(resp["body"].read())


def refused(world: World, model_id: str, stream: bool = False) -> str:
    """The refusal message; fails the test when the call goes through."""
    call = world.runtime.invoke_model_with_response_stream if stream else world.runtime.invoke_model
    with pytest.raises(ClientError) as info:
        call(modelId=model_id, body=b"{}", contentType="application/json", accept="application/json")
    resp = info.value.response
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 403
    message = str(resp["Error"].get("Message", ""))
    assert "AccessDenied" in message and world.alice_arn in message
    return message


def moto_allows(world: World, action: str, resource: str) -> bool:
    """Ask moto's policy engine (the one the server runs) with a real resource ARN."""
    scope = f"{world.alice.access_key_id}/20260101/{REGION}/bedrock/aws4_request"
    auth = f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host;x-amz-date, Signature=unused"
    request = IAMRequest(account_id=ACCOUNT, method="POST", path="/", data={}, body=b"",
                         headers={"Authorization": auth}, action=action)
    try:
        request.check_action_permitted(resource)
    except AccessDeniedError:
        return False
    return True


def test_revoke_and_restore_are_enforced(world: World) -> None:
    assert invoke(world, AIP_A) == b"{}"  # moto's InvokeModel answers an empty JSON object
    assert invoke(world, BASE_MODEL) == b"{}"

    result = world.bot.deny(world.alice_arn, "alice", None)
    assert result.changed and result.resources == ("*",)
    assert "not authorized to perform: bedrock:InvokeModel" in refused(world, AIP_A)
    refused(world, BASE_MODEL)
    assert "bedrock:InvokeModelWithResponseStream" in refused(world, AIP_A, stream=True)

    assert world.bot.deny(world.alice_arn, "alice", None).changed is False  # idempotent under enforcement
    assert world.bot.has_deny(world.alice_arn, "alice")

    assert world.bot.allow(world.alice_arn, "alice") is True
    assert invoke(world, AIP_A) == b"{}"
    assert invoke(world, BASE_MODEL) == b"{}"
    assert world.bot.allow(world.alice_arn, "alice") is False


def test_scoped_deny(world: World) -> None:
    assert moto_allows(world, "InvokeModel", AIP_A) and moto_allows(world, "InvokeModel", AIP_B)

    result = world.bot.deny(world.alice_arn, "team-eng", [AIP_A])
    assert result.resources == (AIP_A,) and not result.fell_back_to_wildcard

    # The policy engine, asked with the real resource: that AIP is refused, others are not.
    assert not moto_allows(world, "InvokeModel", AIP_A)
    assert not moto_allows(world, "InvokeModelWithResponseStream", AIP_A)
    assert moto_allows(world, "InvokeModel", AIP_B)
    assert moto_allows(world, "InvokeModel", f"arn:aws:bedrock:{REGION}::foundation-model/{BASE_MODEL}")

    # Over the wire moto authorises bedrock-runtime calls against Resource "*", which a
    # resource-scoped statement never matches: moto lets both calls through. (Real IAM refuses
    # the first.) If moto starts passing the model ARN, this documents the change loudly.
    assert invoke(world, AIP_A) == b"{}"
    assert invoke(world, AIP_B) == b"{}"

    # A wildcard deny for another subject on the same principal still bites over the wire,
    # and restoring one subject leaves the other's deny in place.
    world.bot.deny(world.alice_arn, "alice", None)
    refused(world, AIP_B)
    assert world.bot.denied_subjects(world.alice_arn) == ["alice", "team-eng"]
    assert world.bot.allow(world.alice_arn, "alice") is True
    assert invoke(world, AIP_B) == b"{}"
    assert not moto_allows(world, "InvokeModel", AIP_A)

    assert world.bot.allow(world.alice_arn, "team-eng") is True
    assert moto_allows(world, "InvokeModel", AIP_A)


def test_enforcement_applies_to_the_bot_too(world: World) -> None:
    # alice has no IAM rights: the bot's adapter surfaces moto's refusal as an AwsError.
    with pytest.raises(AwsError) as info:
        IamAccess(world.alice_iam).deny(world.alice_arn, "alice", None)
    assert info.value.code == "AccessDenied" and info.value.operation == "ListUserPolicies"
    invoke(world, AIP_A)
