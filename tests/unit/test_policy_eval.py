"""The test evaluator (tests/policy_eval.py) on the examples of AWS's policy-evaluation pages:
https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html
(explicit deny > allow > implicit deny; an SCP must allow too) and the condition-operator
page reference_policies_elements_condition_operators.html (StringLike wildcards, Null,
missing keys, ForAllValues on an empty set, policy variables)."""

from __future__ import annotations

import pytest

from tests.policy_eval import decide

S3 = "arn:aws:s3:::amzn-s3-demo-bucket/home/alice/report.txt"


def doc(*statements: dict[str, object]) -> dict[str, object]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


ALLOW_S3 = doc({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})


def test_explicit_deny_beats_allow() -> None:
    deny = doc({"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::amzn-s3-demo-bucket/*"})
    assert decide([ALLOW_S3, deny], "s3:GetObject", S3, {}) == "Deny"
    assert decide([ALLOW_S3, deny], "s3:PutObject", S3, {}) == "Allow"


def test_no_allow_is_an_implicit_deny() -> None:
    assert decide([doc({"Effect": "Allow", "Action": "ec2:*", "Resource": "*"})], "s3:GetObject", S3,
                  {}) == "ImplicitDeny"


def test_an_scp_without_an_allow_denies_even_what_the_identity_policy_allows() -> None:
    scp = doc({"Effect": "Allow", "Action": "ec2:*", "Resource": "*"})
    assert decide([ALLOW_S3], "s3:GetObject", S3, {}, scps=[scp]) == "ImplicitDeny"


def test_actions_match_case_insensitively_resources_do_not() -> None:
    allow = doc({"Effect": "Allow", "Action": "S3:GetObj*", "Resource": "arn:aws:s3:::amzn-s3-demo-bucket/*"})
    assert decide([allow], "s3:GetObject", S3, {}) == "Allow"
    assert decide([allow], "s3:GetObject", S3.upper(), {}) == "ImplicitDeny"


def test_string_like_with_a_policy_variable() -> None:
    allow = doc({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*",
                 "Condition": {"StringLike": {"s3:prefix": ["home/${aws:username}/*"]}}})
    alice = {"aws:username": "alice", "s3:prefix": "home/alice/x"}
    assert decide([allow], "s3:ListBucket", "*", alice) == "Allow"
    assert decide([allow], "s3:ListBucket", "*", {"aws:username": "bob", "s3:prefix": "home/alice/x"}) \
        == "ImplicitDeny"
    assert decide([allow], "s3:ListBucket", "*", {"s3:prefix": "home/alice/x"}) == "ImplicitDeny"  # no value


@pytest.mark.parametrize(("context", "expected"),
                         [({}, "Allow"), ({"aws:TokenIssueTime": "t"}, "ImplicitDeny")])
def test_null_condition(context: dict[str, str], expected: str) -> None:
    allow = doc({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                 "Condition": {"Null": {"aws:TokenIssueTime": "true"}}})  # long-term credentials only
    assert decide([allow], "s3:GetObject", S3, context) == expected


def test_missing_key_string_not_equals_matches_positive_operators_do_not() -> None:
    deny = doc({"Effect": "Deny", "Action": "*", "Resource": "*",
                "Condition": {"StringNotEquals": {"aws:RequestedRegion": "eu-west-1"}}})
    assert decide([ALLOW_S3, deny], "s3:GetObject", S3, {}) == "Deny"
    assert decide([ALLOW_S3, deny], "s3:GetObject", S3, {"aws:RequestedRegion": "eu-west-1"}) == "Allow"


def test_for_all_values_is_true_on_an_empty_set() -> None:
    allow = doc({"Effect": "Allow", "Action": "bedrock:TagResource", "Resource": "*",
                 "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["bedrock-bot:access"]}}})
    assert decide([allow], "bedrock:TagResource", "*", {"aws:TagKeys": ["bedrock-bot:access"]}) == "Allow"
    assert decide([allow], "bedrock:TagResource", "*", {"aws:TagKeys": ["owner"]}) == "ImplicitDeny"
    assert decide([allow], "bedrock:TagResource", "*", {}) == "Allow"  # why AWS warns about it


def test_condition_keys_are_case_insensitive() -> None:
    deny = doc({"Effect": "Deny", "Action": "*", "Resource": "*",
                "Condition": {"StringEquals": {"aws:userid": "AROAEXAMPLE:alice"}}})
    assert decide([ALLOW_S3, deny], "s3:GetObject", S3, {"aws:userId": "AROAEXAMPLE:alice"}) == "Deny"


def test_unknown_operators_fail_loudly() -> None:
    odd = doc({"Effect": "Allow", "Action": "*", "Resource": "*",
               "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}})
    with pytest.raises(AssertionError):
        decide([odd], "s3:GetObject", S3, {"aws:CurrentTime": "2026-01-01T00:00:00Z"})
