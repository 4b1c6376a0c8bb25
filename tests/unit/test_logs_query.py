"""The Logs Insights adapter for Bedrock invocation logs: the query text, metadata-key checks, and
`LogsInsights.run` against botocore's Stubber (parameters checked by the real CloudWatch Logs
service model; results shaped as GetQueryResults returns them)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from bot.aws.logs import METADATA_KEY_RE, LogsInsights, build_query, row_dict, validate_metadata_keys
from bot.errors import AwsError
from bot.services.logs_usage import parse_meter_spec, session_user

QID = "8a3b1c2d-4e5f-4a6b-9c7d-0e1f2a3b4c5d"
GROUP = "/aws/bedrock/modelinvocations"
START = datetime(2026, 11, 25, 9, tzinfo=UTC)
END = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


# ---- the query -------------------------------------------------------------------------------


def test_query_text_with_metadata_keys() -> None:
    assert build_query(["userId", "tenantId"]) == (
        "filter schemaType = 'ModelInvocationLog'\n"
        "| fields bin(1h) as hour, identity.arn as arn, modelId as model, "
        "requestMetadata.userId as md_userId, requestMetadata.tenantId as md_tenantId\n"
        "| stats sum(input.inputTokenCount) as in_tokens, sum(output.outputTokenCount) as out_tokens, "
        "sum(input.cacheReadInputTokenCount) as cache_read, "
        "sum(input.cacheWriteInputTokenCount) as cache_write, count(*) as requests "
        "by hour, arn, model, md_userId, md_tenantId\n"
        "| sort hour asc")


def test_query_text_without_metadata_keys() -> None:
    assert build_query([]) == (
        "filter schemaType = 'ModelInvocationLog'\n"
        "| fields bin(1h) as hour, identity.arn as arn, modelId as model\n"
        "| stats sum(input.inputTokenCount) as in_tokens, sum(output.outputTokenCount) as out_tokens, "
        "sum(input.cacheReadInputTokenCount) as cache_read, "
        "sum(input.cacheWriteInputTokenCount) as cache_write, count(*) as requests "
        "by hour, arn, model\n"
        "| sort hour asc")


def test_duplicate_keys_are_grouped_once() -> None:
    assert build_query(["userId", "userId"]) == build_query(["userId"])
    assert validate_metadata_keys(["b", "a", "b"]) == ["b", "a"]


@pytest.mark.parametrize("bad", ["", "user-id", "user.id", "user id", "x" * 65, "a|stats count(*)",
                                 "userId'", "é", "a\nb"])
def test_keys_that_cannot_be_queried_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be queried"):
        build_query(["userId", bad])


@given(st.text(max_size=70))
def test_a_key_is_accepted_exactly_when_it_is_an_identifier(key: str) -> None:
    ok = METADATA_KEY_RE.match(key) is not None
    assert ok == (1 <= len(key) <= 64 and all(c.isascii() and (c.isalnum() or c == "_") for c in key))
    if ok:
        assert f"requestMetadata.{key} as md_{key}" in build_query([key])
    else:
        with pytest.raises(ValueError):
            build_query([key])


# ---- result rows -----------------------------------------------------------------------------


def cells(**fields: str) -> list[dict[str, str]]:
    return [{"field": k, "value": v} for k, v in fields.items()]


def stats_row(hour: str, arn: str, model: str, inp: str, out: str, requests: str,
              **metadata: str) -> list[dict[str, str]]:
    """A GetQueryResults row of the stats query: a null group field is left out of the row."""
    return [{"field": "hour", "value": hour}, {"field": "arn", "value": arn},
            {"field": "model", "value": model},
            *({"field": f"md_{k}", "value": v} for k, v in metadata.items()),
            {"field": "in_tokens", "value": inp}, {"field": "out_tokens", "value": out},
            {"field": "requests", "value": requests}]


def test_row_dict_drops_ptr_and_generated_fields() -> None:
    row = [{"field": "@ptr", "value": "CmAKJwojMTIzNDU2Nzg5MDEyOi9hd3MvYmVkcm9jaxAHEjUaGAIGZ"},
           *cells(hour="2026-11-25 09:00:00.000", arn="arn:aws:iam::123456789012:user/alice"),
           {"field": "@timestamp", "value": "2026-11-25 09:14:03.118"}]
    assert row_dict(row) == {"hour": "2026-11-25 09:00:00.000",
                             "arn": "arn:aws:iam::123456789012:user/alice"}


# ---- LogsInsights.run with the Stubber -------------------------------------------------------


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("logs", region_name="us-east-1")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def expect_start(stub: Stubber, query: str, start: datetime = START, end: datetime = END) -> None:
    stub.add_response("start_query", {"queryId": QID}, {
        "logGroupName": GROUP, "startTime": int(start.timestamp()), "endTime": int(end.timestamp()),
        "queryString": query, "limit": 10_000})


def results(status: str, rows: list[list[dict[str, str]]] | None = None,
            **extra: Any) -> dict[str, Any]:
    return {"status": status, "results": rows or [], **extra}


def test_run_polls_until_complete_and_returns_rows(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    query = build_query(["userId"])
    expect_start(stub, query)
    stub.add_response("get_query_results", results("Scheduled"), {"queryId": QID})
    stub.add_response("get_query_results", results("Running"), {"queryId": QID})
    stub.add_response("get_query_results", results("Complete", [
        stats_row("2026-11-25 09:00:00.000", "arn:aws:iam::123456789012:user/alice", HAIKU,
                  "1500", "300", "3", userId="u-123"),
        stats_row("2026-11-25 10:00:00.000",
                  "arn:aws:sts::123456789012:assumed-role/bedrock-dev/alice", HAIKU, "42", "7", "1"),
    ], statistics={"recordsMatched": 4.0, "recordsScanned": 4.0, "bytesScanned": 18342.0}),
        {"queryId": QID})
    sleeps: list[float] = []

    rows = LogsInsights(client, sleep=sleeps.append).run(GROUP, START, END, query)

    assert rows == [
        {"hour": "2026-11-25 09:00:00.000", "arn": "arn:aws:iam::123456789012:user/alice",
         "model": HAIKU, "md_userId": "u-123", "in_tokens": "1500", "out_tokens": "300",
         "requests": "3"},
        {"hour": "2026-11-25 10:00:00.000",
         "arn": "arn:aws:sts::123456789012:assumed-role/bedrock-dev/alice", "model": HAIKU,
         "in_tokens": "42", "out_tokens": "7", "requests": "1"},
    ]
    assert sleeps == [0.25, 0.5]


def test_statistics_and_call_counts_are_kept(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    insights = LogsInsights(client, sleep=lambda _: None)
    for scanned in (1000.0, 2500.0):
        expect_start(stub, "q")
        stub.add_response("get_query_results", results(
            "Complete", statistics={"recordsMatched": 1.0, "recordsScanned": 3.0,
                                    "bytesScanned": scanned}), {"queryId": QID})
        assert insights.run(GROUP, START, END, "q") == []
    assert insights.bytes_scanned == 3500.0
    assert insights.last_statistics["recordsScanned"] == 3.0
    assert dict(insights.calls) == {"StartQuery": 2, "GetQueryResults": 2}


def test_result_pages_are_followed(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    expect_start(stub, "q")
    row = stats_row("2026-11-25 09:00:00.000", "arn:aws:iam::123456789012:user/a", HAIKU, "1", "1", "1")
    stub.add_response("get_query_results", results("Complete", [row], nextToken="page-2"),
                      {"queryId": QID})
    stub.add_response("get_query_results", results("Complete", [row]),
                      {"queryId": QID, "nextToken": "page-2"})
    assert len(LogsInsights(client, sleep=lambda _: None).run(GROUP, START, END, "q") or []) == 2


@pytest.mark.parametrize("status", ["Failed", "Cancelled", "Timeout"])
def test_a_query_that_ends_badly_is_an_aws_error(stubbed: tuple[Any, Stubber], status: str) -> None:
    client, stub = stubbed
    expect_start(stub, "q")
    stub.add_response("get_query_results", results("Running"), {"queryId": QID})
    stub.add_response("get_query_results", results(status), {"queryId": QID})
    with pytest.raises(AwsError) as err:
        LogsInsights(client, sleep=lambda _: None).run(GROUP, START, END, "q")
    assert err.value.code == f"Query{status}" and err.value.operation == "GetQueryResults"
    assert status in str(err.value)


def test_a_slow_query_is_stopped_and_left_for_the_next_sync(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    expect_start(stub, "q")
    for _ in range(3):  # polls after 0, 0.25 and 0.75 s; waiting 1 s more would pass max_wait
        stub.add_response("get_query_results", results("Running"), {"queryId": QID})
    stub.add_response("stop_query", {"success": True}, {"queryId": QID})
    sleeps: list[float] = []

    assert LogsInsights(client, sleep=sleeps.append, max_wait=1.0).run(GROUP, START, END, "q") is None
    assert sleeps == [0.25, 0.5]


def test_the_backoff_is_capped_and_bounded_by_max_wait(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    expect_start(stub, "q")
    for _ in range(13):
        stub.add_response("get_query_results", results("Running"), {"queryId": QID})
    stub.add_response("stop_query", {"success": True}, {"queryId": QID})
    sleeps: list[float] = []
    assert LogsInsights(client, sleep=sleeps.append).run(GROUP, START, END, "q") is None
    assert sleeps == [0.25, 0.5, 1.0, *[2.0] * 9] and sum(sleeps) <= 20.0


def test_a_failing_stop_still_means_next_sync(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    expect_start(stub, "q")
    stub.add_response("get_query_results", results("Running"), {"queryId": QID})
    stub.add_client_error("stop_query", "InvalidParameterException", "query is not running",
                          expected_params={"queryId": QID})
    assert LogsInsights(client, sleep=lambda _: None, max_wait=0).run(GROUP, START, END, "q") is None


def test_busy_account_quota_means_next_sync(stubbed: tuple[Any, Stubber]) -> None:
    client, stub = stubbed
    stub.add_client_error("start_query", "LimitExceededException",
                          "Account maximum query concurrency limit of [100] reached.")
    assert LogsInsights(client, sleep=lambda _: None).run(GROUP, START, END, "q") is None


@pytest.mark.parametrize(("code", "message"), [
    ("ResourceNotFoundException", "Log group '/aws/bedrock/modelinvocations' does not exist"),
    ("MalformedQueryException", "unexpected symbol found | at line 1"),
    ("AccessDeniedException", "not authorized to perform: logs:StartQuery"),
])
def test_other_aws_errors_surface(stubbed: tuple[Any, Stubber], code: str, message: str) -> None:
    client, stub = stubbed
    stub.add_client_error("start_query", code, message)
    with pytest.raises(AwsError) as err:
        LogsInsights(client, sleep=lambda _: None).run(GROUP, START, END, "q")
    assert (err.value.operation, err.value.code) == ("StartQuery", code)


def test_bad_arguments() -> None:
    insights = LogsInsights(object())
    with pytest.raises(ValueError, match="aware"):
        insights.run(GROUP, START.replace(tzinfo=None), END, "q")
    with pytest.raises(ValueError, match="after"):
        insights.run(GROUP, END, END - timedelta(hours=1), "q")
    with pytest.raises(ValueError):
        LogsInsights(object(), max_rows=10_001)


# ---- small parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "user"), [
    ("alice", "alice"), ("Alice", "alice"), ("alice@example.com", "alice"),
    ("botocore-session-1732531200", "botocore-session-1732531200")])
def test_session_user(name: str, user: str) -> None:
    assert session_user(name) == user


def test_parse_meter_spec() -> None:
    assert parse_meter_spec("userId=alice") == ("userId", "alice")
    assert parse_meter_spec(" tenantId=a=b ") == ("tenantId", "a=b")
    for bad in ("userId", "=x", "userId="):
        with pytest.raises(Exception, match="requestMetadata-key"):
            parse_meter_spec(bad)
