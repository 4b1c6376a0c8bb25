"""One enforcement method per principal kind, against moto (IAM, Organizations) and Stubber
(Bedrock tags, service-specific credentials: moto has neither), and the documents the bot
writes evaluated with tests/policy_eval.py: who is denied and who is not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from bot.aws.access import DENY_ACTIONS, IamAccess, deny_document
from bot.aws.enforcement import ACCESS_TAG, SESSIONS_POLICY, Enforcer, sessions_document
from bot.aws.principals import classify
from bot.errors import AwsError
from bot.iam_policy import permission_set_policy
from tests.policy_eval import decide

ACCOUNT, REGION = "123456789012", "us-east-1"
JOB = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-invocation-job/*"
PROJECT = f"arn:aws:bedrock-mantle:{REGION}:{ACCOUNT}:project/default"
FM = f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"
AIP = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/a1b2c3d4e5f6"
SSO_PATH = "/aws-reserved/sso.amazonaws.com/eu-west-1/"
SSO_ROLE = "AWSReservedSSO_Developers_0a1b2c3d4e5f"
ALLOW_ALL_BEDROCK = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["bedrock:*", "bedrock-mantle:*"], "Resource": "*"}]}
TRUST = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}]})


def session_arn(role: str, session: str) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"


@pytest.fixture
def iam() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("iam", region_name=REGION)


def role_policy(iam: Any, role: str, name: str) -> dict[str, Any]:
    raw = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
    return raw if isinstance(raw, dict) else json.loads(raw)


# ---------------------------------------------------------------- kinds


@pytest.mark.parametrize(("arn", "kind"), [
    (f"arn:aws:iam::{ACCOUNT}:user/alice", "user"),
    (f"arn:aws:iam::{ACCOUNT}:user/BedrockAPIKey_abc1", "apikey"),
    (f"arn:aws:iam::{ACCOUNT}:role/alice-notebook", "role"),
    (session_arn("data-science", "alice"), "session"),
    (session_arn(SSO_ROLE, "alice@example.com"), "sso"),
])
def test_classify(arn: str, kind: str) -> None:
    assert classify(arn).kind == kind


@pytest.mark.parametrize(("arn", "reason"), [
    (f"arn:aws:iam::{ACCOUNT}:role{SSO_PATH}{SSO_ROLE}", "link one session instead"),
    (f"arn:aws:sts::{ACCOUNT}:federated-user/bob", "not an assumed-role session"),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/r", "not an assumed-role session"),
])
def test_classify_refuses(arn: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        classify(arn)


# ---------------------------------------------------------------- shared-role sessions


def test_session_deny_blocks_alice_not_carol(iam: Any) -> None:
    role_id = iam.create_role(RoleName="data-science", AssumeRolePolicyDocument=TRUST)["Role"]["RoleId"]
    enf = Enforcer(iam)
    block = enf.block(session_arn("data-science", "alice"), "alice", None)
    assert (block.method, block.blocked, block.changed) == ("session-deny", True, True)
    assert enf.block(session_arn("data-science", "alice"), "alice", None).changed is False  # idempotent
    enf.block(session_arn("data-science", "dave"), "dave", None)
    doc = role_policy(iam, "data-science", SESSIONS_POLICY)
    assert doc == sessions_document([f"{role_id}:alice", f"{role_id}:dave"])
    # What IAM holds, evaluated next to the role's own broad Allow:
    for action in DENY_ACTIONS:
        assert decide([ALLOW_ALL_BEDROCK, doc], action, FM, {"aws:userid": f"{role_id}:alice"}) == "Deny"
        assert decide([ALLOW_ALL_BEDROCK, doc], action, FM, {"aws:userid": f"{role_id}:carol"}) == "Allow"
    # a longer session name that starts the same is not caught (StringEquals, not a prefix)
    assert decide([ALLOW_ALL_BEDROCK, doc], "bedrock:InvokeModel", FM,
                  {"aws:userid": f"{role_id}:alice2"}) == "Allow"

    assert enf.release(session_arn("data-science", "alice"), "alice") is True
    assert role_policy(iam, "data-science", SESSIONS_POLICY) == sessions_document([f"{role_id}:dave"])
    assert enf.is_blocked(session_arn("data-science", "alice"), "alice") is False
    enf.release(session_arn("data-science", "dave"), "dave")
    assert iam.list_role_policies(RoleName="data-science")["PolicyNames"] == []  # the last one deletes it


def test_session_deny_past_the_role_quota_refuses_and_never_blocks_the_role(iam: Any) -> None:
    iam.create_role(RoleName="shared", AssumeRolePolicyDocument=TRUST)
    filler = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{'b' * 9800}"}]}
    iam.put_role_policy(RoleName="shared", PolicyName="big", PolicyDocument=json.dumps(filler))
    with pytest.raises(AwsError, match="never blocks the whole role") as err:
        Enforcer(iam).block(session_arn("shared", "alice"), "alice", None)
    assert err.value.code == "LimitExceeded"
    assert iam.list_role_policies(RoleName="shared")["PolicyNames"] == ["big"]


# ---------------------------------------------------------------- SSO: never written


def test_sso_roles_are_never_written_even_though_moto_would(iam: Any) -> None:
    iam.create_role(RoleName=SSO_ROLE, Path=SSO_PATH, AssumeRolePolicyDocument=TRUST)
    iam.create_role(RoleName="Renamed", Path=SSO_PATH, AssumeRolePolicyDocument=TRUST)
    # moto accepts the write AWS refuses ("this role is only modifiable by AWS") …
    probe = json.dumps(deny_document(None))
    iam.put_role_policy(RoleName="Renamed", PolicyName="probe", PolicyDocument=probe)
    iam.delete_role_policy(RoleName="Renamed", PolicyName="probe")
    # … so the bot refuses on its own, whatever the method:
    with pytest.raises(AwsError) as err:
        IamAccess(iam).deny(f"arn:aws:iam::{ACCOUNT}:role{SSO_PATH}{SSO_ROLE}", "alice", None)
    assert err.value.code == "UnmodifiableEntity"
    with pytest.raises(AwsError, match="only modifiable by AWS"):
        Enforcer(iam).block(session_arn("Renamed", "alice"), "alice", None)  # an SSO role by its path
    none = Enforcer(iam).block(session_arn(SSO_ROLE, "alice@example.com"), "alice", None)
    assert (none.method, none.blocked, none.changed) == ("none", False, False)
    assert "no method configured" in none.reason
    for role in (SSO_ROLE, "Renamed"):
        assert iam.list_role_policies(RoleName=role)["PolicyNames"] == []


def test_sso_by_aip_tags_flips_the_tag_and_the_permission_set_then_denies(iam: Any) -> None:
    bedrock = boto3.client("bedrock", region_name=REGION)
    enf = Enforcer(iam, sso_method="tags", client=lambda service: bedrock)
    arn = session_arn(SSO_ROLE, "alice@example.com")
    with Stubber(bedrock) as stub:
        stub.add_response("list_tags_for_resource", {"tags": [{"key": ACCESS_TAG, "value": "allowed"},
                                                               {"key": "user", "value": "alice"}]},
                          {"resourceARN": AIP})
        stub.add_response("tag_resource", {}, {"resourceARN": AIP,
                                               "tags": [{"key": ACCESS_TAG, "value": "revoked"}]})
        block = enf.block(arn, "alice", None, [AIP])
        stub.assert_no_pending_responses()
    assert (block.method, block.blocked, block.changed) == ("aip-tags", True, True)

    baseline = permission_set_policy()
    alice = {"aws:PrincipalTag/bedrock-user": "alice", "aws:ResourceTag/user": "alice"}
    allowed = {**alice, f"aws:ResourceTag/{ACCESS_TAG}": "allowed"}
    revoked = {**alice, f"aws:ResourceTag/{ACCESS_TAG}": "revoked"}
    assert decide([baseline], "bedrock:InvokeModel", AIP, allowed) == "Allow"
    assert decide([baseline], "bedrock:InvokeModel", AIP, revoked) == "ImplicitDeny"
    assert decide([baseline], "bedrock:InvokeModelWithResponseStream", AIP, revoked) == "ImplicitDeny"
    # bob's session cannot use alice's AIP even while it is allowed (owner tag ≠ caller's tag)
    bob = {**allowed, "aws:PrincipalTag/bedrock-user": "bob"}
    assert decide([baseline], "bedrock:InvokeModel", AIP, bob) == "ImplicitDeny"
    # the foundation model: only reached through a profile, never directly
    assert decide([baseline], "bedrock:InvokeModel", FM, {}) == "ImplicitDeny"
    assert decide([baseline], "bedrock:InvokeModel", FM, {"bedrock:InferenceProfileArn": AIP}) == "Allow"
    for action in ("bedrock:CreateModelInvocationJob", "bedrock:CallWithBearerToken",
                   "bedrock-mantle:CreateInference"):
        assert decide([baseline], action, "*", allowed) == "ImplicitDeny"

    with Stubber(bedrock) as stub:  # restore: back to allowed; already-allowed AIPs untouched
        stub.add_response("list_tags_for_resource", {"tags": [{"key": ACCESS_TAG, "value": "revoked"}]},
                          {"resourceARN": AIP})
        stub.add_response("tag_resource", {}, {"resourceARN": AIP,
                                               "tags": [{"key": ACCESS_TAG, "value": "allowed"}]})
        assert enf.release(arn, "alice", (), [AIP]) is True
        stub.assert_no_pending_responses()


def test_sso_by_scp_denies_the_session_in_organizations(iam: Any) -> None:
    made = iam.create_role(RoleName=SSO_ROLE, Path=SSO_PATH, AssumeRolePolicyDocument=TRUST)
    role_id = made["Role"]["RoleId"]
    org = boto3.client("organizations", region_name=REGION)
    org.create_organization(FeatureSet="ALL")
    root = org.list_roots()["Roots"][0]["Id"]
    enf = Enforcer(iam, sso_method="scp", client=lambda service: org, scp_target=root)
    arn = session_arn(SSO_ROLE, "alice@example.com")
    block = enf.block(arn, "alice", None)
    assert (block.method, block.blocked, block.changed) == ("scp", True, True)
    assert enf.block(arn, "alice", None).changed is False
    [summary] = [p for p in org.list_policies(Filter="SERVICE_CONTROL_POLICY")["Policies"]
                 if p["Name"] == SESSIONS_POLICY]
    scp = json.loads(org.describe_policy(PolicyId=summary["Id"])["Policy"]["Content"])
    targets = org.list_targets_for_policy(PolicyId=summary["Id"])["Targets"]
    assert [t["TargetId"] for t in targets] == [root]
    full_access = {"Version": "2012-10-17",
                   "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    assert decide([ALLOW_ALL_BEDROCK], "bedrock:InvokeModel", AIP,
                  {"aws:userid": f"{role_id}:alice@example.com"}, scps=[full_access, scp]) == "Deny"
    assert decide([ALLOW_ALL_BEDROCK], "bedrock:InvokeModel", AIP,
                  {"aws:userid": f"{role_id}:carol@example.com"}, scps=[full_access, scp]) == "Allow"
    assert iam.list_role_policies(RoleName=SSO_ROLE)["PolicyNames"] == []  # the role is untouched
    assert enf.release(arn, "alice") is True
    assert enf.is_blocked(arn, "alice") is False


def test_scp_method_without_a_target_is_reported_not_blocked(iam: Any) -> None:
    block = Enforcer(iam, sso_method="scp").block(session_arn(SSO_ROLE, "alice"), "alice", None)
    assert not block.blocked and "BOT_SCP_TARGET" in block.reason


# ---------------------------------------------------------------- API keys


class _KeysViaStub:
    """moto's IAM for policies; a stubbed IAM client for service-specific credentials (moto
    has no such API)."""

    def __init__(self, moto_iam: Any, stubbed: Any) -> None:
        self._moto, self._stubbed = moto_iam, stubbed

    def __getattr__(self, name: str) -> Any:
        target = self._stubbed if "service_specific_credential" in name else self._moto
        return getattr(target, name)


def _creds(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"ServiceSpecificCredentials": [
        {"UserName": "BedrockAPIKey_abc1", "Status": status, "ServiceUserName": "BedrockAPIKey_abc1-at",
         "CreateDate": "2026-11-01T00:00:00Z", "ServiceSpecificCredentialId": cid,
         "ServiceName": "bedrock.amazonaws.com"} for cid, status in pairs]}


def test_api_key_credentials_off_and_exactly_those_back_on(iam: Any) -> None:
    iam.create_user(UserName="BedrockAPIKey_abc1")
    stubbed = boto3.client("iam", region_name=REGION)
    enf = Enforcer(_KeysViaStub(iam, stubbed))
    arn = f"arn:aws:iam::{ACCOUNT}:user/BedrockAPIKey_abc1"
    listing = {"UserName": "BedrockAPIKey_abc1", "ServiceName": "bedrock.amazonaws.com"}
    a, b, c = "ACCAEXAMPLEA000000001", "ACCAEXAMPLEB000000002", "ACCAEXAMPLEC000000003"
    with Stubber(stubbed) as stub:
        stub.add_response("list_service_specific_credentials",
                          _creds((a, "Active"), (b, "Inactive"), (c, "Active")), listing)
        for cid in (a, c):
            stub.add_response("update_service_specific_credential", {}, {
                "UserName": "BedrockAPIKey_abc1", "ServiceSpecificCredentialId": cid, "Status": "Inactive"})
        block = enf.block(arn, "alice", None)
        stub.assert_no_pending_responses()
    assert (block.method, block.blocked, block.credentials) == ("api-key", True, (a, c))
    raw = iam.get_user_policy(UserName="BedrockAPIKey_abc1", PolicyName="bedrock-bot-deny-alice")
    doc = raw["PolicyDocument"]
    assert decide([ALLOW_ALL_BEDROCK, doc], "bedrock:CallWithBearerToken", "*", {}) == "Deny"
    assert decide([ALLOW_ALL_BEDROCK, doc], "bedrock-mantle:CallWithBearerToken", "*", {}) == "Deny"
    with Stubber(stubbed) as stub:  # b was inactive before the bot: it stays inactive
        stub.add_response("list_service_specific_credentials",
                          _creds((a, "Inactive"), (b, "Inactive"), (c, "Inactive")), listing)
        for cid in (a, c):
            stub.add_response("update_service_specific_credential", {}, {
                "UserName": "BedrockAPIKey_abc1", "ServiceSpecificCredentialId": cid, "Status": "Active"})
        assert enf.release(arn, "alice", (a, c)) is True
        stub.assert_no_pending_responses()
    assert iam.list_user_policies(UserName="BedrockAPIKey_abc1")["PolicyNames"] == []


# ---------------------------------------------------------------- the deny covers every entry point


@pytest.mark.parametrize(("entry", "action", "resource"), [
    ("InvokeModel", "bedrock:InvokeModel", FM),
    ("Converse", "bedrock:InvokeModel", AIP),  # Converse is authorized as InvokeModel
    ("streaming", "bedrock:InvokeModelWithResponseStream", FM),
    ("batch", "bedrock:CreateModelInvocationJob", JOB),
    ("async", "bedrock:InvokeModel", FM),  # StartAsyncInvoke needs bedrock:InvokeModel
    ("API key", "bedrock:CallWithBearerToken", "*"),
    ("mantle", "bedrock-mantle:CreateInference", PROJECT),
    ("mantle API key", "bedrock-mantle:CallWithBearerToken", "*"),
])
def test_user_deny_covers_every_entry_point(entry: str, action: str, resource: str) -> None:
    assert decide([ALLOW_ALL_BEDROCK, deny_document(None)], action, resource, {}) == "Deny", entry
    assert decide([ALLOW_ALL_BEDROCK], action, resource, {}) == "Allow", entry
