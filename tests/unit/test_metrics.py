from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from math import ceil
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from bot.aws.metrics import (
    CACHE_METRICS,
    TOKEN_METRICS,
    CloudWatchMetrics,
    HourlyUsage,
    floor_hour,
    plan_calls,
    sync_window,
)
from bot.clock import FixedClock
from bot.errors import AwsError

H = timedelta(hours=1)
NOW = FixedClock(datetime(2025, 3, 14, 10, 37, 12, tzinfo=UTC))
QUERY_ID = re.compile(r"^[a-z][a-zA-Z0-9_]*$")
Series = Callable[[str, str], Mapping[datetime, float]]


def aip(i: int) -> str:
    """A realistic AIP id: 12 lowercase alphanumerics."""
    return f"p{i:011d}"


class FakeCloudWatch:
    """Answers like CloudWatch: hourly sums per query, pages cut at `page_size` datapoints,
    the query that continues on the next page marked PartialData, >500 queries refused."""

    def __init__(self, series: Series, page_size: int = 100_800) -> None:
        self.series = series
        self.page_size = page_size
        self.requests: list[dict[str, Any]] = []

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self.requests.append(request)
        queries = request["MetricDataQueries"]
        if len(queries) > 500:
            raise ClientError({"Error": {"Code": "ValidationError", "Message": "> 500"}},
                              "GetMetricData")
        points = list(self._points(queries, request["StartTime"], request["EndTime"]))
        offset = int(request.get("NextToken", 0))
        page, more = points[offset:offset + self.page_size], offset + self.page_size < len(points)
        results: dict[str, dict[str, Any]] = {}
        for qid, ts, value in page:
            result = results.setdefault(qid, {"Id": qid, "Label": qid, "Timestamps": [],
                                              "Values": [], "StatusCode": "Complete"})
            result["Timestamps"].append(ts)
            result["Values"].append(value)
        response: dict[str, Any] = {"MetricDataResults": list(results.values()), "Messages": []}
        if more:
            response["MetricDataResults"][-1]["StatusCode"] = "PartialData"
            response["NextToken"] = str(offset + self.page_size)
        return response

    def _points(self, queries: list[dict[str, Any]], start: datetime,
                end: datetime) -> Iterator[tuple[str, datetime, float]]:
        for query in queries:
            metric = query["MetricStat"]["Metric"]
            model_id = metric["Dimensions"][0]["Value"]
            for ts, value in sorted(self.series(model_id, metric["MetricName"]).items()):
                if start <= ts < end:
                    yield query["Id"], ts, value

    def hours_of(self, request: Mapping[str, Any]) -> int:
        return ceil((request["EndTime"] - request["StartTime"]) / H)


def steady(model_id: str, metric: str) -> dict[datetime, float]:
    """Every profile active in the current and previous hour; values derived from the id."""
    base = int(model_id[1:]) + 1
    scale = {"InputTokenCount": 100, "OutputTokenCount": 10, "Invocations": 1}.get(metric, 7)
    hour = floor_hour(NOW())
    return {hour - H: float(base * scale), hour: float(base * scale * 2)}


def all_metrics(n: int, metrics: tuple[str, ...] = TOKEN_METRICS) -> dict[str, tuple[str, ...]]:
    return {aip(i): metrics for i in range(n)}


def check_requests(fake: FakeCloudWatch) -> None:
    for request in fake.requests:
        queries = request["MetricDataQueries"]
        ids = [q["Id"] for q in queries]
        assert len(queries) <= CloudWatchMetrics.MAX_QUERIES
        assert len(queries) * fake.hours_of(request) <= CloudWatchMetrics.MAX_DATAPOINTS
        assert all(QUERY_ID.match(i) for i in ids) and len(set(ids)) == len(ids)
        assert request["ScanBy"] == "TimestampAscending"
        assert {q["MetricStat"]["Period"] for q in queries} == {3600}
        assert {q["MetricStat"]["Stat"] for q in queries} == {"Sum"}


# -- moto: the real request/response shapes end to end ------------------------------------


@pytest.fixture
def cloudwatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


def put(cw: Any, model_id: str, metric: str, at: datetime, value: float,
        extra: dict[str, str] | None = None) -> None:
    dims = [{"Name": "ModelId", "Value": model_id}]
    dims += [{"Name": k, "Value": v} for k, v in (extra or {}).items()]
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
        {"MetricName": metric, "Dimensions": dims, "Timestamp": at, "Value": value},
    ])


def test_moto_round_trip_sums_per_hour(cloudwatch: Any) -> None:
    ten = datetime(2025, 3, 14, 10, tzinfo=UTC)
    a, b = "a1b2c3d4e5f6", "z9y8x7w6v5u4"
    for minute, tokens in ((1, 100), (20, 250), (59, 50)):
        put(cloudwatch, a, "InputTokenCount", ten + timedelta(minutes=minute), tokens)
        put(cloudwatch, a, "Invocations", ten + timedelta(minutes=minute), 1)
    put(cloudwatch, a, "OutputTokenCount", ten + timedelta(minutes=5), 40)
    put(cloudwatch, a, "InputTokenCount", ten + H + timedelta(minutes=3), 7)
    put(cloudwatch, a, "CacheReadInputTokenCount", ten + H, 900)
    put(cloudwatch, b, "InputTokenCount", ten + 2 * H, 11)
    put(cloudwatch, b, "InputTokenCount", ten - H, 999)  # before the window
    put(cloudwatch, b, "InputTokenCount", ten + 3 * H, 999)  # at the exclusive end

    metrics = CloudWatchMetrics(cloudwatch)
    wanted = {a: (*TOKEN_METRICS, "CacheReadInputTokenCount"), b: TOKEN_METRICS}
    rows = metrics.hourly(wanted, ten + timedelta(minutes=17), ten + 3 * H)

    assert rows == [
        HourlyUsage(a, ten, input_tokens=400, output_tokens=40, invocations=3),
        HourlyUsage(a, ten + H, input_tokens=7, cache_read_tokens=900),
        HourlyUsage(b, ten + 2 * H, input_tokens=11),
    ]
    assert all(r.hour.tzinfo is not None and r.hour.utcoffset() == timedelta(0) for r in rows)
    assert metrics.calls == {"GetMetricData": 1}


def test_moto_active_model_ids(cloudwatch: Any) -> None:
    at = datetime(2025, 3, 14, 10, tzinfo=UTC)
    put(cloudwatch, "a1b2c3d4e5f6", "InputTokenCount", at, 1)
    put(cloudwatch, "a1b2c3d4e5f6", "OutputTokenCount", at, 1)
    put(cloudwatch, "a1b2c3d4e5f6", "CacheWriteInputTokenCount", at, 1)
    put(cloudwatch, "z9y8x7w6v5u4", "Invocations", at, 1)
    put(cloudwatch, "z9y8x7w6v5u4", "InvocationLatency", at, 1)  # not a usage metric
    put(cloudwatch, "q1w2e3r4t5y6", "InputTokenCount", at, 1, extra={"Other": "x"})
    cloudwatch.put_metric_data(Namespace="Custom", MetricData=[{
        "MetricName": "InputTokenCount", "Value": 1,
        "Dimensions": [{"Name": "ModelId", "Value": "elsewhere000"}]}])

    metrics = CloudWatchMetrics(cloudwatch)
    assert metrics.active_model_ids() == {
        "a1b2c3d4e5f6": frozenset({"InputTokenCount", "OutputTokenCount",
                                   "CacheWriteInputTokenCount"}),
        "z9y8x7w6v5u4": frozenset({"Invocations"}),
    }
    assert metrics.calls == {"ListMetrics": 1}


# -- call counts: the design target ceil(3 x active profiles / 500) -----------------


@pytest.mark.parametrize(("profiles", "calls"), [(1, 1), (100, 1), (166, 1), (167, 2),
                                                 (1_200, 8), (10_000, 60)])
def test_sync_calls_meet_the_target(profiles: int, calls: int) -> None:
    fake = FakeCloudWatch(steady)
    metrics = CloudWatchMetrics(fake)
    start, end = sync_window(NOW())

    rows = metrics.hourly(all_metrics(profiles), start, end)

    assert calls == ceil(3 * profiles / 500) == CloudWatchMetrics.calls_needed(3 * profiles, 2)
    assert metrics.calls == {"GetMetricData": calls}
    check_requests(fake)
    assert len(rows) == 2 * profiles
    last = profiles - 1
    assert rows[-2:] == [
        HourlyUsage(aip(last), floor_hour(NOW()) - H, input_tokens=100 * profiles,
                    output_tokens=10 * profiles, invocations=profiles),
        HourlyUsage(aip(last), floor_hour(NOW()), input_tokens=200 * profiles,
                    output_tokens=20 * profiles, invocations=2 * profiles),
    ]


@pytest.mark.parametrize("now", [
    NOW(),  # mid-month: Feb 1 .. Mar 14 10:37
    datetime(2025, 8, 31, 23, 30, tzinfo=UTC),  # worst case: Jul 1 .. Aug 31, 1,488 hours
])
def test_two_month_backfill_respects_the_datapoint_limit(now: datetime) -> None:
    # 1,200 profiles, each used in a sparse set of hours since the start of last month.
    first = floor_hour((now.replace(day=1) - timedelta(days=1)).replace(day=1, hour=0))
    hours = (floor_hour(now) - first) // H + 1

    def sparse(model_id: str, metric: str) -> dict[datetime, float]:
        seed = int(model_id[1:])
        return {first + k * H: float(seed + k) for k in range(seed % 97, hours, 101)}

    fake = FakeCloudWatch(sparse)
    metrics = CloudWatchMetrics(fake)
    wanted = all_metrics(1_200, TOKEN_METRICS + CACHE_METRICS)

    rows = metrics.hourly(wanted, first, now)

    n_queries, calls = 1_200 * 5, len(fake.requests)
    check_requests(fake)  # every call: <= 500 queries and queries x hours <= 100,800
    assert metrics.calls["GetMetricData"] == calls == CloudWatchMetrics.calls_needed(n_queries,
                                                                                    hours)
    # No worse than either simple strategy (fewer queries per call / 201-hour chunks) ...
    assert calls <= min(ceil(n_queries / (100_800 // hours)), 12 * ceil(hours / 201))
    assert calls <= ceil(n_queries * hours / 100_800) + 1  # ... and next to the lower bound
    expected = {(m, h): int(v) for m in wanted for h, v in sparse(m, "").items()}
    assert {(r.model_id, r.hour): r.input_tokens for r in rows} == expected
    assert all(r.input_tokens == r.output_tokens == r.cache_read_tokens == r.cache_write_tokens
               == r.invocations for r in rows)


# -- paging, partial data, failures -------------------------------------------------------


def test_next_token_pages_are_merged() -> None:
    whole = CloudWatchMetrics(FakeCloudWatch(steady)).hourly(all_metrics(30), *sync_window(NOW()))
    fake = FakeCloudWatch(steady, page_size=7)  # 180 datapoints -> 26 pages, splits series
    metrics = CloudWatchMetrics(fake)

    paged = metrics.hourly(all_metrics(30), *sync_window(NOW()))

    assert paged == whole
    assert metrics.calls == {"GetMetricData": 26}
    tokens = [r.get("NextToken") for r in fake.requests]
    assert tokens == [None, *(str(7 * i) for i in range(1, 26))]


def test_partial_data_and_messages_keep_paging(caplog: pytest.LogCaptureFixture) -> None:
    hour = floor_hour(NOW())
    pages = [
        {"MetricDataResults": [{"Id": "q0", "Timestamps": [hour - H], "Values": [5.0],
                                "StatusCode": "PartialData"}],
         "Messages": [{"Code": "MaxDatapointsExceeded", "Value": "more to come"}],
         "NextToken": "t1"},
        {"MetricDataResults": [{"Id": "q0", "Timestamps": [hour], "Values": [2.6],
                                "StatusCode": "Complete"},
                               {"Id": "q1", "Timestamps": [hour, hour], "Values": [1.4, 1.0],
                                "StatusCode": "Complete"}]},
    ]
    client = ScriptedClient(pages)
    metrics = CloudWatchMetrics(client)

    with caplog.at_level(logging.WARNING, logger="bot.aws.metrics"):
        rows = metrics.hourly({"a1b2c3d4e5f6": ("InputTokenCount", "Invocations")},
                              *sync_window(NOW()))

    assert rows == [HourlyUsage("a1b2c3d4e5f6", hour - H, input_tokens=5),
                    HourlyUsage("a1b2c3d4e5f6", hour, input_tokens=3, invocations=2)]
    assert client.tokens == [None, "t1"]
    assert "MaxDatapointsExceeded" in caplog.text


def test_failed_series_is_an_error_not_zero_usage() -> None:
    page = {"MetricDataResults": [{"Id": "q0", "Timestamps": [], "Values": [],
                                   "StatusCode": "InternalError",
                                   "Messages": [{"Code": "InternalError", "Value": "oops"}]}]}
    metrics = CloudWatchMetrics(ScriptedClient([page]))
    with pytest.raises(AwsError, match="GetMetricData failed: InternalError") as err:
        metrics.hourly({"a1b2c3d4e5f6": ("InputTokenCount",)}, *sync_window(NOW()))
    assert err.value.code == "InternalError" and "a1b2c3d4e5f6" in str(err.value)


class ScriptedClient:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.tokens: list[str | None] = []

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self.tokens.append(request.get("NextToken"))
        return self.pages[len(self.tokens) - 1]


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    client = boto3.client("cloudwatch", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_request_shape_validates_against_the_service_model(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    start, end = sync_window(NOW())
    query = {"Id": "q0", "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": "AWS/Bedrock", "MetricName": "InputTokenCount",
                   "Dimensions": [{"Name": "ModelId", "Value": "a1b2c3d4e5f6"}]},
        "Period": 3600, "Stat": "Sum"}}
    stubber.add_response(
        "get_metric_data",
        {"MetricDataResults": [{"Id": "q0", "Timestamps": [start], "Values": [42.0],
                                "StatusCode": "Complete"}]},
        {"MetricDataQueries": [query], "StartTime": start, "EndTime": start + 2 * H,
         "ScanBy": "TimestampAscending"},
    )
    rows = CloudWatchMetrics(client).hourly({"a1b2c3d4e5f6": ["InputTokenCount"]}, start, end)
    assert rows == [HourlyUsage("a1b2c3d4e5f6", start, input_tokens=42)]


def test_throttling_becomes_aws_error(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("get_metric_data", service_error_code="Throttling",
                             service_message="Rate exceeded", http_status_code=400)
    stubber.add_client_error("list_metrics", service_error_code="AccessDenied",
                             http_status_code=403)
    metrics = CloudWatchMetrics(client)
    with pytest.raises(AwsError, match="AWS GetMetricData failed: Throttling: Rate exceeded"):
        metrics.hourly({"a1b2c3d4e5f6": TOKEN_METRICS}, *sync_window(NOW()))
    with pytest.raises(AwsError, match="ListMetrics failed: AccessDenied"):
        metrics.active_model_ids()
    assert metrics.calls == {"GetMetricData": 1, "ListMetrics": 1}


def test_list_metrics_pages_and_filters(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed

    def metric(name: str, *dims: tuple[str, str]) -> dict[str, Any]:
        return {"Namespace": "AWS/Bedrock", "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims]}

    stubber.add_response("list_metrics", {"NextToken": "n1", "Metrics": [
        metric("InputTokenCount", ("ModelId", "a1b2c3d4e5f6")),
        metric("InputTokenCount"),  # the account-wide series
        metric("InvocationThrottles", ("ModelId", "a1b2c3d4e5f6")),
    ]}, {"Namespace": "AWS/Bedrock", "RecentlyActive": "PT3H"})
    stubber.add_response("list_metrics", {"Metrics": [
        metric("CacheReadInputTokenCount", ("ModelId", "a1b2c3d4e5f6")),
        metric("Invocations", ("ModelId", "anthropic.claude-3-haiku-20240307-v1:0")),
    ]}, {"Namespace": "AWS/Bedrock", "RecentlyActive": "PT3H", "NextToken": "n1"})
    stubber.add_response("list_metrics", {"Metrics": []}, {"Namespace": "AWS/Bedrock"})

    metrics = CloudWatchMetrics(client)
    assert metrics.active_model_ids() == {
        "a1b2c3d4e5f6": frozenset({"InputTokenCount", "CacheReadInputTokenCount"}),
        "anthropic.claude-3-haiku-20240307-v1:0": frozenset({"Invocations"}),
    }
    assert metrics.active_model_ids(recently_active=False) == {}
    assert metrics.calls == {"ListMetrics": 3}


# -- inputs and the packing rule ----------------------------------------------------------


def test_bad_inputs() -> None:
    metrics = CloudWatchMetrics(FakeCloudWatch(steady))
    start, end = sync_window(NOW())
    with pytest.raises(ValueError, match="aware"):
        metrics.hourly({"a1b2c3d4e5f6": TOKEN_METRICS}, start.replace(tzinfo=None), end)
    with pytest.raises(ValueError, match="not a Bedrock usage metric"):
        metrics.hourly({"a1b2c3d4e5f6": ["InvocationLatency"]}, start, end)
    with pytest.raises(ValueError, match="after start"):
        metrics.hourly({"a1b2c3d4e5f6": TOKEN_METRICS}, end, start)
    assert metrics.hourly({}, start, end) == []
    assert metrics.hourly({"a1b2c3d4e5f6": ()}, start, end) == []
    assert not metrics.calls


def test_non_utc_input_is_normalised() -> None:
    fake = FakeCloudWatch(steady)
    start = (floor_hour(NOW()) - H).astimezone(timezone(timedelta(hours=-5)))
    CloudWatchMetrics(fake).hourly({"p00000000001": ["Invocations"]}, start, NOW())
    assert fake.requests[0]["StartTime"] == floor_hour(NOW()) - H
    assert fake.requests[0]["StartTime"].tzinfo == UTC


@given(st.integers(1, 20_000), st.integers(1, 24 * 455))
def test_packing_rule(n_queries: int, hours: int) -> None:
    plan = plan_calls(n_queries, hours)
    assert 1 <= plan.queries_per_call <= 500
    assert plan.queries_per_call * plan.hours_per_chunk <= 100_800
    chunks = ceil(hours / plan.hours_per_chunk)
    assert plan.calls == ceil(n_queries / plan.queries_per_call) * chunks
    assert plan.calls == CloudWatchMetrics.calls_needed(n_queries, hours)
    assert plan.calls >= max(ceil(n_queries / 500), ceil(n_queries * hours / 100_800))
    if hours <= 100_800 // 500:  # any sync window: only the 500-query limit binds
        assert plan.calls == ceil(n_queries / 500)


def test_calls_needed_edges() -> None:
    assert CloudWatchMetrics.calls_needed(0, 2) == 0
    assert CloudWatchMetrics.calls_needed(3_600, 0) == 0
    assert CloudWatchMetrics.calls_needed(3_600, 201) == 8
    assert CloudWatchMetrics.calls_needed(3_600, 202) == 8  # 499 queries x 202 h still fits
    assert CloudWatchMetrics.calls_needed(3_600, 300) == 11  # not 2 chunks x 8 = 16
    assert CloudWatchMetrics.calls_needed(1, 100_801) == 2
