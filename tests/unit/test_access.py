"""The IAM revoke/restore adapter: moto's IAM for behaviour, botocore's Stubber for injected
errors (it checks every call against the real service model), and the pure helpers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config
from botocore.handlers import json_decode_policies
from botocore.stub import ANY, Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from bot.aws.access import (
    DENY_ACTIONS,
    INLINE_LIMITS,
    POLICY_PREFIX,
    DenyResult,
    IamAccess,
    _parse_document,
    deny_document,
    document_size,
    parse_principal,
    policy_name,
)
from bot.errors import AwsError

ACCOUNT = "123456789012"
ALICE_ARN = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/service/app-role"
AIPS = [f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/{i:012d}" for i in range(20)]
NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$", re.ASCII)
WILDCARD_DOC = {
    "Version": "2012-10-17",
    "Statement": [{"Sid": "BedrockBotDeny", "Effect": "Deny",
                   "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream",
                              "bedrock:CreateModelInvocationJob", "bedrock:CallWithBearerToken",
                              "bedrock-mantle:CreateInference", "bedrock-mantle:CallWithBearerToken"],
                   "Resource": "*"}],
}


@pytest.fixture
def iam() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("iam", region_name="us-east-1")
        client.create_user(UserName="alice")
        client.create_role(RoleName="app-role", Path="/service/", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                           "Action": "sts:AssumeRole"}]}))
        yield client


def filler(size: int, n: int = 0) -> str:
    """An allow policy whose IAM-counted size is exactly `size`."""
    base = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::bucket{n}/"}]}
    pad = size - document_size(base)
    assert pad >= 0
    base["Statement"][0]["Resource"] += "k" * pad  # type: ignore[index]
    text = json.dumps(base, indent=2)  # whitespace is not counted
    assert document_size(text) == size
    return text


def user_policies(iam: Any, user: str = "alice") -> list[str]:
    return list(iam.list_user_policies(UserName=user)["PolicyNames"])


# ---------------------------------------------------------------- deny / allow on moto


def test_deny_puts_exact_document_and_is_idempotent(iam: Any) -> None:
    access = IamAccess(iam)
    result = access.deny(ALICE_ARN, "alice", None)
    assert result == DenyResult(principal_arn=ALICE_ARN, policy_name="bedrock-bot-deny-alice",
                                resources=("*",), fell_back_to_wildcard=False, dry_run=False, changed=True)
    got = iam.get_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")
    assert got["PolicyDocument"] == WILDCARD_DOC
    assert access.has_deny(ALICE_ARN, "alice")

    again = access.deny(ALICE_ARN, "alice", [])
    assert again.changed is False and again.resources == ("*",)
    assert user_policies(iam) == ["bedrock-bot-deny-alice"]


def test_allow_removes_and_is_idempotent(iam: Any) -> None:
    access = IamAccess(iam)
    access.deny(ALICE_ARN, "alice", None)
    assert access.allow(ALICE_ARN, "alice") is True
    assert user_policies(iam) == []
    assert not access.has_deny(ALICE_ARN, "alice")
    assert access.allow(ALICE_ARN, "alice") is False


def test_resources_are_sorted_unique_and_changes_rewrite(iam: Any) -> None:
    access = IamAccess(iam)
    result = access.deny(ALICE_ARN, "team-eng", [AIPS[2], AIPS[1], AIPS[2]])
    assert result.resources == (AIPS[1], AIPS[2]) and result.changed
    doc = iam.get_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-team-eng")["PolicyDocument"]
    assert doc["Statement"][0]["Resource"] == [AIPS[1], AIPS[2]]
    assert doc["Statement"][0]["Action"] == list(DENY_ACTIONS)
    assert not access.deny(ALICE_ARN, "team-eng", [AIPS[1], AIPS[2]]).changed
    # A new AIP for the subject changes the document: rewritten in place.
    widened = access.deny(ALICE_ARN, "team-eng", [AIPS[1], AIPS[2], AIPS[3]])
    assert widened.changed and widened.resources == (AIPS[1], AIPS[2], AIPS[3])
    # "*" anywhere means the wildcard.
    assert access.deny(ALICE_ARN, "team-eng", [AIPS[1], "*"]).resources == ("*",)


def test_role_with_path(iam: Any) -> None:
    access = IamAccess(iam)
    result = access.deny(ROLE_ARN, "team-eng", AIPS)  # 20 ARNs fit the role's 10,240 quota
    assert result.resources == tuple(AIPS) and not result.fell_back_to_wildcard
    doc = iam.get_role_policy(RoleName="app-role", PolicyName="bedrock-bot-deny-team-eng")["PolicyDocument"]
    assert doc == deny_document(AIPS)
    assert access.denied_subjects(ROLE_ARN) == ["team-eng"]
    assert access.allow(ROLE_ARN, "team-eng") is True
    assert iam.list_role_policies(RoleName="app-role")["PolicyNames"] == []
    assert access.allow(ROLE_ARN, "team-eng") is False


def test_denied_subjects_ignores_foreign_policies(iam: Any) -> None:
    iam.put_user_policy(UserName="alice", PolicyName="human-made", PolicyDocument=filler(200))
    access = IamAccess(iam)
    access.deny(ALICE_ARN, "team-eng", [AIPS[0]])
    access.deny(ALICE_ARN, "alice", None)
    assert access.denied_subjects(ALICE_ARN) == ["alice", "team-eng"]
    assert access.has_deny(ALICE_ARN, "team-eng") and not access.has_deny(ALICE_ARN, "team-ops")


def test_size_fallback_to_wildcard(iam: Any) -> None:
    # ~1,750 characters of other inline policies: 20 AIP ARNs cannot fit next to them, "*" can.
    iam.put_user_policy(UserName="alice", PolicyName="p1", PolicyDocument=filler(1000, 1))
    iam.put_user_policy(UserName="alice", PolicyName="p2", PolicyDocument=filler(746, 2))
    assert document_size(deny_document(AIPS)) + 1746 > INLINE_LIMITS["user"]
    assert document_size(WILDCARD_DOC) + 1746 == INLINE_LIMITS["user"]  # exactly at the quota

    result = IamAccess(iam).deny(ALICE_ARN, "alice", AIPS)
    assert result.fell_back_to_wildcard and result.changed and result.resources == ("*",)
    doc = iam.get_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")["PolicyDocument"]
    assert doc == WILDCARD_DOC
    # Idempotent once fallen back: same answer, no write.
    again = IamAccess(iam).deny(ALICE_ARN, "alice", AIPS)
    assert again.fell_back_to_wildcard and not again.changed


def test_own_existing_policy_is_not_counted_against_itself(iam: Any) -> None:
    room = INLINE_LIMITS["user"] - document_size(WILDCARD_DOC)
    iam.put_user_policy(UserName="alice", PolicyName="p1", PolicyDocument=filler(room, 1))
    access = IamAccess(iam)
    first = access.deny(ALICE_ARN, "alice", None)
    assert first.changed
    assert access.deny(ALICE_ARN, "alice", None).changed is False


def test_even_wildcard_does_not_fit(iam: Any) -> None:
    iam.put_user_policy(UserName="alice", PolicyName="p1", PolicyDocument=filler(1000, 1))
    iam.put_user_policy(UserName="alice", PolicyName="p2", PolicyDocument=filler(1000, 2))
    with pytest.raises(AwsError) as info:
        IamAccess(iam).deny(ALICE_ARN, "alice", AIPS)
    assert info.value.code == "LimitExceeded" and info.value.operation == "PutUserPolicy"
    assert "2000 of 2048" in str(info.value)
    assert sorted(user_policies(iam)) == ["p1", "p2"]


def test_dry_run_writes_nothing(iam: Any) -> None:
    iam.put_user_policy(UserName="alice", PolicyName="p1", PolicyDocument=filler(1745, 1))
    dry = IamAccess(iam, dry_run=True)
    result = dry.deny(ALICE_ARN, "alice", AIPS)
    assert result.dry_run and result.changed and result.fell_back_to_wildcard  # computed all the same
    assert user_policies(iam) == ["p1"]
    assert dry.allow(ALICE_ARN, "alice") is False

    IamAccess(iam).deny(ALICE_ARN, "alice", None)
    assert dry.deny(ALICE_ARN, "alice", None).changed is False
    assert dry.allow(ALICE_ARN, "alice") is True  # would delete …
    assert dry.has_deny(ALICE_ARN, "alice")  # … but did not
    assert sorted(user_policies(iam)) == ["bedrock-bot-deny-alice", "p1"]


def test_missing_principal_is_no_such_entity(iam: Any) -> None:
    access = IamAccess(iam)
    with pytest.raises(AwsError) as info:
        access.deny(f"arn:aws:iam::{ACCOUNT}:user/bob", "bob", None)
    assert info.value.code == "NoSuchEntity"
    with pytest.raises(AwsError) as info:
        access.denied_subjects(f"arn:aws:iam::{ACCOUNT}:role/nobody")
    assert info.value.code == "NoSuchEntity" and info.value.operation == "ListRolePolicies"


def test_bad_arn_is_value_error(iam: Any) -> None:
    with pytest.raises(ValueError, match="STS session"):
        IamAccess(iam).deny(f"arn:aws:sts::{ACCOUNT}:assumed-role/app-role/s1", "alice", None)


# ---------------------------------------------------------------- injected errors (Stubber)


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("iam", region_name="us-east-1")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def test_access_denied_on_put(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("list_user_policies", {"PolicyNames": [], "IsTruncated": False}, {"UserName": "alice"})
    stub.add_client_error("put_user_policy", "AccessDenied", "not authorized to perform: iam:PutUserPolicy",
                          403, expected_params={"UserName": "alice", "PolicyName": "bedrock-bot-deny-alice",
                                                "PolicyDocument": ANY})
    with pytest.raises(AwsError) as info:
        IamAccess(client).deny(ALICE_ARN, "alice", None)
    assert info.value.code == "AccessDenied" and info.value.operation == "PutUserPolicy"
    assert "AccessDenied" in str(info.value)


def test_no_such_entity_on_put(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_response("list_role_policies", {"PolicyNames": [], "IsTruncated": False},
                      {"RoleName": "app-role"})
    stub.add_client_error("put_role_policy", "NoSuchEntity", "The role with name app-role cannot be found.",
                          404)
    with pytest.raises(AwsError) as info:
        IamAccess(client).deny(ROLE_ARN, "alice", None)
    assert info.value.code == "NoSuchEntity" and info.value.operation == "PutRolePolicy"


def test_iam_limit_exceeded_on_scoped_put_falls_back(stubbed: tuple[Any, Stubber]) -> None:
    # IAM counts the quota itself; if it refuses the scoped deny for size, the wildcard goes in.
    client, stub = stubbed
    stub.add_response("list_user_policies", {"PolicyNames": [], "IsTruncated": False}, {"UserName": "alice"})
    stub.add_client_error("put_user_policy", "LimitExceeded", "Maximum policy size exceeded", 409)
    compact = json.dumps(WILDCARD_DOC, separators=(",", ":"))
    stub.add_response("put_user_policy", {}, {"UserName": "alice", "PolicyName": "bedrock-bot-deny-alice",
                                              "PolicyDocument": compact})
    result = IamAccess(client).deny(ALICE_ARN, "alice", AIPS[:2])
    assert result.fell_back_to_wildcard and result.changed and result.resources == ("*",)


def test_errors_on_delete_and_get_surface(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_client_error("delete_user_policy", "AccessDenied", "nope", 403)
    stub.add_client_error("get_user_policy", "Throttling", "Rate exceeded", 400)
    access = IamAccess(client)
    with pytest.raises(AwsError) as info:
        access.allow(ALICE_ARN, "alice")
    assert (info.value.operation, info.value.code) == ("DeleteUserPolicy", "AccessDenied")
    with pytest.raises(AwsError) as info:
        access.has_deny(ALICE_ARN, "alice")
    assert (info.value.operation, info.value.code) == ("GetUserPolicy", "Throttling")


def test_url_encoded_documents_are_read(stubbed: tuple[Any, Stubber]) -> None:
    # Real IAM returns documents URL-encoded; botocore normally decodes them, but not always.
    client, stub = stubbed
    client.meta.events.unregister("after-call.iam", json_decode_policies)
    other = quote(filler(1950, 1))
    ours = quote(json.dumps(WILDCARD_DOC))
    stub.add_response("list_user_policies", {"PolicyNames": ["bedrock-bot-deny-alice", "other"],
                                             "IsTruncated": False})
    stub.add_response("get_user_policy", {"UserName": "alice", "PolicyName": "bedrock-bot-deny-alice",
                                          "PolicyDocument": ours})
    stub.add_response("get_user_policy", {"UserName": "alice", "PolicyName": "other",
                                          "PolicyDocument": other})
    with pytest.raises(AwsError) as info:  # 1950 + 167 > 2048: the encoded document was measured decoded
        IamAccess(client).deny(ALICE_ARN, "alice", None)
    assert info.value.code == "LimitExceeded"


def test_connection_failure_is_aws_error() -> None:
    client = boto3.client("iam", region_name="us-east-1", endpoint_url="http://127.0.0.1:9",
                          config=Config(retries={"total_max_attempts": 1}, connect_timeout=1))
    with pytest.raises(AwsError) as info:
        IamAccess(client).deny(ALICE_ARN, "alice", None)
    assert info.value.code == "EndpointConnectionError" and info.value.operation == "ListUserPolicies"


# ---------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("arn", "kind", "name"), [
    ("arn:aws:iam::123456789012:user/alice", "user", "alice"),
    ("arn:aws:iam::123456789012:user/engineering/ml/alice.smith", "user", "alice.smith"),
    ("arn:aws:iam::123456789012:role/app-role", "role", "app-role"),
    ("arn:aws:iam::123456789012:role/service-role/Bedrock+Runner=1,x@y", "role", "Bedrock+Runner=1,x@y"),
    ("arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_Dev_0a1b",
     "role", "AWSReservedSSO_Dev_0a1b"),
    ("arn:aws-cn:iam::123456789012:user/alice", "user", "alice"),
    ("arn:aws-us-gov:iam::123456789012:role/gov/app", "role", "app"),
    ("  arn:aws:iam::123456789012:user/alice\n", "user", "alice"),
])
def test_parse_principal_accepts(arn: str, kind: str, name: str) -> None:
    ref = parse_principal(arn)
    assert (ref.kind, ref.name, ref.arn) == (kind, name, arn.strip())
    assert ref.aws_managed == ("AWSReservedSSO_" in arn)


@pytest.mark.parametrize(("arn", "reason"), [
    ("arn:aws:sts::123456789012:assumed-role/app-role/session-1", "role/app-role instead"),
    ("arn:aws:sts::123456789012:federated-user/bob", "STS session"),
    ("arn:aws:iam::123456789012:group/admins", "group"),
    ("arn:aws:iam::123456789012:root", "not a user or role"),
    ("arn:aws:iam::123456789012:policy/x", "policy"),
    ("arn:aws:iam::123456789012:user/", "not a valid IAM user name"),
    ("arn:aws:iam::123456789012:user/a//b", "path"),
    ("arn:aws:iam::123456789012:user/al ice", "name"),
    ("arn:aws:iam::12345:user/alice", "12 digits"),
    ("arn:aws:iam:us-east-1:123456789012:user/alice", "no region"),
    ("arn:aws:s3:::bucket", "s3 ARN"),
    ("arn:azure:iam::123456789012:user/alice", "not an ARN"),
    ("alice", "not an ARN"),
    ("", "not an ARN"),
    ("arn:aws:iam::123456789012:user/" + "a" * 65, "name"),
])
def test_parse_principal_refuses(arn: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)) as info:
        parse_principal(arn)
    assert "\n" not in str(info.value)


def test_policy_name_examples() -> None:
    assert policy_name("alice") == "bedrock-bot-deny-alice"
    assert policy_name("team-eng") == "bedrock-bot-deny-team-eng"
    odd = {policy_name(s) for s in ("a b", "a-b", "a/b", "a:b", "ä-b")}
    assert len(odd) == 5 and "bedrock-bot-deny-a-b" in odd
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    assert policy_name(long_a) != policy_name(long_b)
    assert len(policy_name(long_a)) == 128
    with pytest.raises(ValueError):
        policy_name("")


@given(st.text(min_size=1, max_size=300))
def test_policy_name_always_valid(subject: str) -> None:
    name = policy_name(subject)
    assert NAME_RE.match(name), name
    assert name.startswith(POLICY_PREFIX)
    assert policy_name(subject) == name


@given(st.from_regex(r"[A-Za-z0-9_+=,.@-]{1,111}", fullmatch=True))
def test_valid_subjects_are_kept_verbatim(subject: str) -> None:
    assert policy_name(subject) == POLICY_PREFIX + subject


def test_deny_document_and_size() -> None:
    assert deny_document(None) == WILDCARD_DOC == deny_document([])
    doc = deny_document(["b", "a", "b", ""])
    assert doc["Statement"][0]["Resource"] == ["a", "b"]
    compact = json.dumps(WILDCARD_DOC, separators=(",", ":"))
    assert document_size(WILDCARD_DOC) == len(compact)
    assert document_size(json.dumps(WILDCARD_DOC, indent=4)) == len(compact)
    assert document_size(quote(json.dumps(WILDCARD_DOC))) == len(compact)


def test_parse_document_forms() -> None:
    assert _parse_document(WILDCARD_DOC) == WILDCARD_DOC
    assert _parse_document(json.dumps(WILDCARD_DOC)) == WILDCARD_DOC
    assert _parse_document(quote(json.dumps(WILDCARD_DOC))) == WILDCARD_DOC
    assert _parse_document("%7Bnot json") is None
    assert _parse_document(None) is None
