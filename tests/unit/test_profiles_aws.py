"""The Bedrock AIP adapter against botocore's Stubber (which checks every call's parameters
against the real service model), and the pure helpers around it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from bot.aws.profiles import (
    FM_ID_RE,
    PROFILE_ARN_RE,
    PROFILE_ID_RE,
    PROFILE_NAME_RE,
    AwsProfiles,
    InferenceProfileInfo,
    ProfilesBackend,
    derive_profile_name,
    managed_tags,
    model_id_of,
    resolve_model_source,
)
from bot.errors import AwsError, BadInput

ACCOUNT = "123456789012"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
HAIKU_ARN = f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}"
SYSTEM_ARN = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/us.{HAIKU}"
AIP_ID = "a1b2c3d4e5f6"
AIP_ARN = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/{AIP_ID}"


@pytest.fixture(autouse=True)
def _dummy_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_CONFIG_FILE": "/dev/null",
                       "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bedrock() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("bedrock", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def profiles(bedrock: tuple[Any, Stubber]) -> AwsProfiles:
    return AwsProfiles(bedrock[0], account_id=ACCOUNT)


def _summary(profile_id: str, name: str) -> dict[str, Any]:
    return {
        "inferenceProfileName": name,
        "description": "made by the bot",
        "createdAt": datetime(2026, 11, 1, tzinfo=UTC),
        "inferenceProfileArn": f"arn:aws:bedrock:us-east-1:{ACCOUNT}"
                               f":application-inference-profile/{profile_id}",
        "models": [{"modelArn": HAIKU_ARN},
                   {"modelArn": f"arn:aws:bedrock:us-west-2::foundation-model/{HAIKU}"}],
        "inferenceProfileId": profile_id,
        "status": "ACTIVE",
        "type": "APPLICATION",
    }


# --- AwsProfiles --------------------------------------------------------------------------


def test_is_a_profiles_backend(profiles: AwsProfiles) -> None:
    assert isinstance(profiles, ProfilesBackend)


def test_create_sends_tags_token_and_description(
        profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_response(
        "create_inference_profile",
        {"inferenceProfileArn": AIP_ARN, "status": "ACTIVE"},
        {
            "inferenceProfileName": "alice-haiku",
            "description": "alice haiku",
            "clientRequestToken": "tok-123",
            "modelSource": {"copyFrom": HAIKU_ARN},
            "tags": [{"key": "user", "value": "alice"},
                     {"key": "managed-by", "value": "bedrock-bot"}],
        },
    )
    info = profiles.create("alice-haiku", HAIKU_ARN, {"user": "alice", "managed-by": "bedrock-bot"},
                           "alice haiku", "tok-123")
    assert info == InferenceProfileInfo(
        id=AIP_ID, arn=AIP_ARN, name="alice-haiku", model_source=HAIKU_ARN,
        model_arns=(HAIKU_ARN,), status="ACTIVE", type="APPLICATION",
        description="alice haiku", tags={"user": "alice", "managed-by": "bedrock-bot"},
    )
    assert PROFILE_ID_RE.match(info.id) and PROFILE_ARN_RE.match(info.arn)


def test_create_omits_an_empty_description(
        profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_response(
        "create_inference_profile", {"inferenceProfileArn": AIP_ARN, "status": "ACTIVE"},
        {"inferenceProfileName": "p", "clientRequestToken": "t1",
         "modelSource": {"copyFrom": SYSTEM_ARN}, "tags": [{"key": "team", "value": "team-eng"}]},
    )
    info = profiles.create("p", SYSTEM_ARN, {"team": "team-eng"}, "", "t1")
    assert (info.description, info.model_source) == ("", SYSTEM_ARN)


def test_get_found(profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_response("get_inference_profile", _summary(AIP_ID, "alice-haiku"),
                         {"inferenceProfileIdentifier": AIP_ARN})
    info = profiles.get(AIP_ARN)
    assert info is not None
    assert (info.id, info.arn, info.name) == (AIP_ID, AIP_ARN, "alice-haiku")
    assert info.model_source == HAIKU_ARN
    assert len(info.model_arns) == 2
    assert (info.status, info.type, info.description, info.tags) == (
        "ACTIVE", "APPLICATION", "made by the bot", None)


def test_get_missing_is_none(profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_client_error("get_inference_profile", "ResourceNotFoundException",
                             "not found", 404,
                             expected_params={"inferenceProfileIdentifier": AIP_ID})
    assert profiles.get(AIP_ID) is None


def test_get_other_errors_raise(profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_client_error("get_inference_profile", "AccessDeniedException", "no", 403)
    with pytest.raises(AwsError) as err:
        profiles.get(AIP_ID)
    assert (err.value.operation, err.value.code) == ("GetInferenceProfile", "AccessDeniedException")


def test_list_application_follows_pages(profiles: AwsProfiles,
                                        bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_response(
        "list_inference_profiles",
        {"inferenceProfileSummaries": [_summary("aaaaaaaaaaa1", "one"),
                                       _summary("aaaaaaaaaaa2", "two")], "nextToken": "page2"},
        {"typeEquals": "APPLICATION", "maxResults": 1000},
    )
    stubber.add_response(
        "list_inference_profiles",
        {"inferenceProfileSummaries": [_summary("aaaaaaaaaaa3", "three")]},
        {"typeEquals": "APPLICATION", "maxResults": 1000, "nextToken": "page2"},
    )
    found = profiles.list_application()
    assert [p.name for p in found] == ["one", "two", "three"]
    assert all(p.tags is None and p.type == "APPLICATION" for p in found)


def test_tags_of(profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_response("list_tags_for_resource",
                         {"tags": [{"key": "user", "value": "alice"},
                                   {"key": "cost-center", "value": "42"}]},
                         {"resourceARN": AIP_ARN})
    assert profiles.tags_of(AIP_ARN) == {"user": "alice", "cost-center": "42"}


def test_delete_is_idempotent(profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    client, stubber = bedrock
    statuses: list[int] = []
    client.meta.events.register("after-call.bedrock.DeleteInferenceProfile",
                                lambda http_response, **_: statuses.append(http_response.status_code))
    stubber.add_response("delete_inference_profile", {}, {"inferenceProfileIdentifier": AIP_ARN})
    stubber.add_client_error("delete_inference_profile", "ResourceNotFoundException", "gone", 404,
                             expected_params={"inferenceProfileIdentifier": AIP_ARN})
    profiles.delete(AIP_ARN)
    profiles.delete(AIP_ARN)  # already gone: Bedrock's 404 is swallowed, not raised
    stubber.assert_no_pending_responses()
    assert statuses == [200, 404]  # both deletes reached Bedrock; the second was told "gone"


def test_delete_conflict_raises(profiles: AwsProfiles, bedrock: tuple[Any, Stubber]) -> None:
    _, stubber = bedrock
    stubber.add_client_error("delete_inference_profile", "ConflictException", "in use", 409)
    with pytest.raises(AwsError, match="ConflictException"):
        profiles.delete(AIP_ID)


@pytest.mark.parametrize(("code", "status"), [("AccessDeniedException", 403),
                                              ("ThrottlingException", 429),
                                              ("ConflictException", 409)])
def test_create_errors_become_aws_errors(profiles: AwsProfiles, bedrock: tuple[Any, Stubber],
                                         code: str, status: int) -> None:
    _, stubber = bedrock
    stubber.add_client_error("create_inference_profile", code, "nope", status)
    with pytest.raises(AwsError) as err:
        profiles.create("p", HAIKU_ARN, {}, "", "t1")
    assert (err.value.operation, err.value.code) == ("CreateInferenceProfile", code)
    assert code in str(err.value)


def test_botocore_errors_become_aws_errors() -> None:
    class Unreachable:
        def list_inference_profiles(self, **_: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="https://bedrock.us-east-1.amazonaws.com")

    with pytest.raises(AwsError) as err:
        AwsProfiles(Unreachable(), account_id=ACCOUNT).list_application()  # type: ignore[arg-type]
    assert (err.value.operation, err.value.code) == (
        "ListInferenceProfiles", "EndpointConnectionError")


def test_account_id_from_sts_once(bedrock: tuple[Any, Stubber]) -> None:
    sts = boto3.client("sts", region_name="us-east-1")
    with Stubber(sts) as sts_stub:
        sts_stub.add_response("get_caller_identity", {
            "UserId": "AIDAEXAMPLE", "Account": ACCOUNT,
            "Arn": f"arn:aws:iam::{ACCOUNT}:user/bot"}, {})
        profiles = AwsProfiles(bedrock[0], sts_client=sts)
        assert profiles.account_id() == ACCOUNT
        assert profiles.account_id() == ACCOUNT  # cached: a second STS call would fail
        sts_stub.assert_no_pending_responses()


def test_account_id_sts_failure_is_aws_error(bedrock: tuple[Any, Stubber]) -> None:
    sts = boto3.client("sts", region_name="us-east-1")
    with Stubber(sts) as sts_stub:
        sts_stub.add_client_error("get_caller_identity", "ExpiredToken", "expired", 403)
        with pytest.raises(AwsError) as err:
            AwsProfiles(bedrock[0], sts_client=sts).account_id()
    assert (err.value.operation, err.value.code) == ("GetCallerIdentity", "ExpiredToken")


def test_given_account_id_needs_no_sts(profiles: AwsProfiles) -> None:
    assert profiles.account_id() == ACCOUNT


def test_needs_account_or_sts(bedrock: tuple[Any, Stubber]) -> None:
    with pytest.raises(ValueError, match="account id or an STS client"):
        AwsProfiles(bedrock[0])


# --- resolve_model_source / model_id_of ---------------------------------------------------


@pytest.mark.parametrize(("model", "expected"), [
    (HAIKU, HAIKU_ARN),
    ("amazon.nova-lite-v1:0", "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0"),
    ("meta.llama3-1-8b-instruct-v1:0",
     "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-1-8b-instruct-v1:0"),
    ("cohere.command-r-v1:0", "arn:aws:bedrock:us-east-1::foundation-model/cohere.command-r-v1:0"),
    ("amazon.titan-text-express-v1",
     "arn:aws:bedrock:us-east-1::foundation-model/amazon.titan-text-express-v1"),
    (HAIKU_ARN, HAIKU_ARN),
    (f"us.{HAIKU}", SYSTEM_ARN),
    (f"eu.{HAIKU}", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/eu.{HAIKU}"),
    (f"apac.{HAIKU}", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/apac.{HAIKU}"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0",
     f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/"
     "global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    (f"us-gov.{HAIKU}", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/us-gov.{HAIKU}"),
    (f"jp.{HAIKU}", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/jp.{HAIKU}"),
    (f"au.{HAIKU}", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/au.{HAIKU}"),
    (f"ca.{HAIKU}", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/ca.{HAIKU}"),
    (SYSTEM_ARN, SYSTEM_ARN),
    (f"arn:aws:bedrock:eu-west-1:{ACCOUNT}:inference-profile/eu.{HAIKU}",
     f"arn:aws:bedrock:eu-west-1:{ACCOUNT}:inference-profile/eu.{HAIKU}"),
])
def test_resolve_model_source(model: str, expected: str) -> None:
    assert resolve_model_source(model, "us-east-1", ACCOUNT) == expected


def test_resolve_uses_the_regions_partition() -> None:
    assert resolve_model_source(HAIKU, "us-gov-west-1", ACCOUNT) == (
        f"arn:aws-us-gov:bedrock:us-gov-west-1::foundation-model/{HAIKU}")


@pytest.mark.parametrize("model", [
    "", " ", f" {HAIKU}", f"{HAIKU}\n", "claude", "Anthropic.Claude-3", "anthropic.",
    f"{HAIKU}; rm -rf /", "$(whoami)", f"`{HAIKU}`", "a" * 2049,
    AIP_ARN,
    f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/{HAIKU}",  # no geo prefix
    f"arn:aws:bedrock:us-east-1::custom-model/{HAIKU}",
    f"arn:aws:s3:::bucket/{HAIKU}",
    f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}/x",
    f"xx.{HAIKU}:0:1:2",
])
def test_resolve_refuses(model: str) -> None:
    with pytest.raises(BadInput) as err:
        resolve_model_source(model, "us-east-1", ACCOUNT)
    assert "foundation-model id" in err.value.reason
    assert "\n" not in err.value.reason


def test_fm_id_re() -> None:
    assert FM_ID_RE.match(HAIKU)
    assert not FM_ID_RE.match(f"{HAIKU}\n")


@pytest.mark.parametrize(("source", "expected"), [
    (HAIKU_ARN, HAIKU),
    (SYSTEM_ARN, HAIKU),
    (f"arn:aws:bedrock:eu-west-1:{ACCOUNT}:inference-profile/eu.amazon.nova-lite-v1:0",
     "amazon.nova-lite-v1:0"),
    (f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCOUNT}:inference-profile/us-gov.{HAIKU}", HAIKU),
    (f"apac.{HAIKU}", HAIKU),
    (HAIKU, HAIKU),
])
def test_model_id_of(source: str, expected: str) -> None:
    assert model_id_of(source) == expected


@pytest.mark.parametrize("source", [AIP_ARN, "", "junk"])
def test_model_id_of_refuses(source: str) -> None:
    with pytest.raises(BadInput):
        model_id_of(source)


# --- derive_profile_name ------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "model", "suffix", "expected"), [
    ("alice", HAIKU, "", "alice-anthropic-claude-3-haiku-20240307-v1-0"),
    ("alice", "amazon.nova-lite-v1:0", "2", "alice-amazon-nova-lite-v1-0-2"),
    ("team-eng", f"us.{HAIKU}", "", "team-eng-us-anthropic-claude-3-haiku-20240307-v1-0"),
    ("team-eng", HAIKU_ARN, "", "team-eng-anthropic-claude-3-haiku-20240307-v1-0"),
    ("j.doe", "cohere.command-r-v1:0", "", "j-doe-cohere-command-r-v1-0"),
    ("o_neil__x", "m", "", "o_neil_x-m"),
    ("a_-b", "m", "", "a-b-m"),
    ("zoë", "m", "", "zoe-m"),
    ("--alice--", "..m..", "", "alice-m"),
    ("🙂", "amazon.nova-lite-v1:0", "", "amazon-nova-lite-v1-0"),
    ("", "", "", "profile"),
    ("!!!", "???", "", "profile"),
    ("", "", "3", "profile-3"),
])
def test_derive_profile_name(subject: str, model: str, suffix: str, expected: str) -> None:
    assert derive_profile_name(subject, model, suffix) == expected


def test_derive_profile_name_cuts_on_a_boundary() -> None:
    name = derive_profile_name("team-platform-engineering-europe",
                               "us.anthropic.claude-3-5-sonnet-20240620-v1:0")
    assert name == "team-platform-engineering-europe-us-anthropic-claude-3-5-sonnet"
    assert len(name) <= 64


def test_derive_profile_name_makes_room_for_the_suffix() -> None:
    # A half-word is dropped rather than kept: "yyy…" cut mid-way reads as a different model.
    assert derive_profile_name("x" * 40, "y" * 40) == "x" * 40
    assert derive_profile_name("x" * 40, "y" * 40, "12") == "x" * 40 + "-12"
    long_model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    with_suffix = derive_profile_name("team-platform-engineering", long_model, "12")
    assert with_suffix == "team-platform-engineering-anthropic-claude-3-5-sonnet-12"
    assert len(with_suffix) <= 64
    # No separator in reach: a hard cut.
    assert derive_profile_name("a" * 100, "b") == "a" * 64
    assert derive_profile_name("a" * 100, "b", "2") == "a" * 62 + "-2"


@given(st.text(max_size=150), st.text(max_size=150), st.text(max_size=24))
def test_derive_profile_name_is_always_valid(subject: str, model: str, suffix: str) -> None:
    name = derive_profile_name(subject, model, suffix)
    assert 1 <= len(name) <= 64
    assert PROFILE_NAME_RE.match(name)
    assert name[-1] not in " _-"


# --- managed_tags -------------------------------------------------------------------------


def test_managed_tags() -> None:
    assert managed_tags("user", "alice", {}) == {"user": "alice", "managed-by": "bedrock-bot"}
    assert managed_tags("team", "team-eng", {"cost-center": "42", "env": ""}) == {
        "team": "team-eng", "managed-by": "bedrock-bot", "cost-center": "42", "env": ""}
    assert len(managed_tags("user", "a", {f"k{i}": "v" for i in range(48)})) == 50


@pytest.mark.parametrize(("kind", "extra", "reason"), [
    ("org", {}, "user or team"),
    ("user", {"user": "bob"}, "set by the bot"),
    ("user", {"team": "team-x"}, "set by the bot"),
    ("team", {"Managed-By": "me"}, "set by the bot"),
    ("user", {"aws:createdBy": "x"}, "aws:"),
    ("user", {"AWS:thing": "x"}, "aws:"),
    ("user", {"": "x"}, "1-128"),
    ("user", {"k" * 129: "x"}, "1-128"),
    ("user", {"k": "v" * 257}, "256"),
    ("user", {"k": "a;b"}, "letters, digits"),
    ("user", {"k!": "v"}, "letters, digits"),
    ("user", {"k": "line\nbreak"}, "letters, digits"),
    ("user", {"k": "ünïcode"}, "letters, digits"),
    ("user", {f"k{i}": "v" for i in range(49)}, "at most"),
])
def test_managed_tags_refuses(kind: str, extra: dict[str, str], reason: str) -> None:
    with pytest.raises(BadInput, match=reason):
        managed_tags(kind, "alice", extra)
