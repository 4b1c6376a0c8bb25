"""The usage stream's pure parts: subscription records, invocation log records, BOT_USAGE_STREAM,
the Kinesis adapter's request shapes (botocore's Stubber checks them against the service model)
and `tokens` as the ledger defines it."""

from __future__ import annotations

import contextlib
import gzip
import json
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bot.aws import invocation_records as ir
from bot.aws.invocation_records import (
    CONTROL_MESSAGE,
    LogEvent,
    MalformedRecord,
    NotInvocation,
    decode_subscription,
    encode_subscription,
    parse_invocation,
)
from bot.aws.usage_stream import IteratorExpired, KinesisStream, Shard, Throttled, sequence_key
from bot.config import load_settings
from bot.flows.usage_stream import _parents_first
from bot.services.ledger import Totals
from bot.services.stream_usage import dedupe_retention

GROUP = "/aws/bedrock/modelinvocations"
EID = "31953106606966983378809025079804211143289615424298221568"
AT_MS = 1_795_604_712_000  # 2026-11-25T10:25:12Z


def message(**over: Any) -> str:
    doc: dict[str, Any] = {
        "schemaType": "ModelInvocationLog", "schemaVersion": "1.0", "timestamp": "2026-11-25T10:05:12Z",
        "accountId": "123456789012", "identity": {"arn": "arn:aws:iam::123456789012:user/alice"},
        "region": "us-east-1", "requestId": "r-1", "operation": "ConverseStream",
        "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "input": {"inputContentType": "application/json", "inputTokenCount": 35,
                  "cacheReadInputTokenCount": 1200, "cacheWriteInputTokenCount": 300},
        "output": {"outputContentType": "application/json", "outputTokenCount": 446},
        "requestMetadata": {"userId": "u-4711", "n": 3},
    }
    doc.update(over)
    return json.dumps(doc)


# ---- subscription records ----------------------------------------------------------------


def test_a_data_message_round_trips() -> None:
    data = encode_subscription(GROUP, [(EID, AT_MS, "one"), ("7", AT_MS + 1, "two")])
    got = decode_subscription(data)
    assert (got.message_type, got.log_group) == ("DATA_MESSAGE", GROUP)
    assert got.events == (LogEvent(EID, AT_MS, "one"), LogEvent("7", AT_MS + 1, "two"))


def test_a_control_message_carries_no_events() -> None:
    data = encode_subscription(GROUP, [(EID, AT_MS, "CWL CONTROL MESSAGE: Checking health")],
                               message_type=CONTROL_MESSAGE)
    assert decode_subscription(data).events == ()


def _gz(data: bytes) -> bytes:
    """gzip with a fixed mtime: the bytes name the test, and xdist workers must agree on names."""
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize(("data", "reason"), [
    (b"plain bytes", "not gzip"),
    (_gz(b"{not json"), "not JSON"),
    (_gz(b"[1, 2]"), "not a JSON object"),
    (_gz(json.dumps({"messageType": "OTHER", "logGroup": "g", "logEvents": []}).encode()),
     "messageType"),
    (_gz(json.dumps({"messageType": "DATA_MESSAGE", "logEvents": []}).encode()), "logGroup"),
    (_gz(json.dumps({"messageType": "DATA_MESSAGE", "logGroup": "g",
                               "logEvents": [{"id": "x1", "timestamp": 1, "message": "m"}]}).encode()),
     "no valid id"),
    (_gz(json.dumps({"messageType": "DATA_MESSAGE", "logGroup": "g",
                               "logEvents": [{"id": "1", "timestamp": True, "message": "m"}]}).encode()),
     "timestamp or message"),
    (encode_subscription(GROUP, [(EID, AT_MS, "x")])[:-9], "truncated"),
])
def test_what_is_not_a_subscription_record_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        decode_subscription(data)


def test_a_gzip_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ir, "MAX_INFLATED", 1024 * 1024)
    with pytest.raises(MalformedRecord, match="inflates past"):
        decode_subscription(gzip.compress(b" " * (4 * 1024 * 1024)))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_error(data: bytes) -> None:
    with contextlib.suppress(MalformedRecord):
        decode_subscription(data)


# ---- invocation log records ------------------------------------------------------------


def test_every_field_the_bot_reads() -> None:
    call = parse_invocation(LogEvent(EID, AT_MS, message()))
    assert call.event_id == EID
    assert call.at == datetime(2026, 11, 25, 10, 5, 12, tzinfo=UTC)  # the record's own timestamp
    assert call.model_id == "anthropic.claude-3-haiku-20240307-v1:0"
    assert call.identity_arn == "arn:aws:iam::123456789012:user/alice"
    assert call.metadata == {"userId": "u-4711"}  # non-string values dropped
    assert (call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens) == (
        35, 446, 1200, 300)
    assert call.tokens == 35 + 446 + 1200 + 300
    assert (call.request_id, call.operation) == ("r-1", "ConverseStream")


def test_large_bodies_do_not_hide_the_counts() -> None:
    """Logs Insights extracts at most 200 fields; the stream parses the whole record."""
    body = {f"field{i}": {"nested": i} for i in range(500)}
    call = parse_invocation(LogEvent(EID, AT_MS, message(
        input={"inputBodyJson": body, "inputTokenCount": 9, "cacheWriteInputTokenCount": 1},
        output={"outputBodyJson": body, "outputTokenCount": 8})))
    counts = (call.input_tokens, call.output_tokens, call.cache_read_tokens, call.cache_write_tokens)
    assert counts == (9, 8, 0, 1)


def test_absent_counts_are_zero_and_a_bad_timestamp_falls_back_to_the_event() -> None:
    call = parse_invocation(LogEvent(EID, AT_MS, message(input={}, output={}, timestamp="yesterday",
                                                         identity=None, requestMetadata="x")))
    assert (call.tokens, call.identity_arn, call.metadata) == (0, "", {})
    assert call.at == datetime.fromtimestamp(AT_MS / 1000, tz=UTC)


@pytest.mark.parametrize(("text", "reason"), [
    ("not json", "not JSON"),
    (json.dumps(["a"]), "not a ModelInvocationLog"),
    (message(schemaType="Other"), "not a ModelInvocationLog"),
    (message(modelId=""), "no modelId"),
    (message(modelId=7), "no modelId"),
    (message(input={"inputTokenCount": -1}), "inputTokenCount"),
    (message(input={"inputTokenCount": 1.5}), "inputTokenCount"),
    (message(input={"inputTokenCount": True}), "inputTokenCount"),
    (message(output={"outputTokenCount": "12"}), "outputTokenCount"),
    (message(input={"cacheReadInputTokenCount": 10**13}), "cacheReadInputTokenCount"),
])
def test_records_that_are_not_usage_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(NotInvocation, match=reason):
        parse_invocation(LogEvent(EID, AT_MS, text))


def test_metadata_values_bedrock_would_not_accept_are_dropped() -> None:
    call = parse_invocation(LogEvent(EID, AT_MS, message(requestMetadata={
        "ok": "v", "long": "x" * 257, "ctl": "a\nb", "empty": "", "num": 1})))
    assert call.metadata == {"ok": "v"}


# ---- BOT_USAGE_STREAM -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "name"), [
    ("bedrock-usage", "bedrock-usage"),
    ("  my_stream.v2 ", "my_stream.v2"),
    ("arn:aws:kinesis:us-east-1:123456789012:stream/bedrock-usage", "bedrock-usage"),
    ("", None),
])
def test_the_stream_is_a_name_or_an_arn(value: str, name: str | None) -> None:
    aws = load_settings(None, BOT_USAGE_STREAM=value).aws
    assert aws.usage_stream_name == name


@pytest.mark.parametrize(("value", "reason"), [
    ("has space", "not a Kinesis stream"),
    ("x" * 129, "not a Kinesis stream"),
    ("arn:aws:sqs:us-east-1:123456789012:queue", "not a Kinesis stream"),
    ("arn:aws:kinesis:eu-west-1:123456789012:stream/s", "eu-west-1, but AWS_REGION is us-east-1"),
])
def test_a_bad_stream_stops_the_bot_with_the_reason(value: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        load_settings(None, BOT_USAGE_STREAM=value, AWS_REGION="us-east-1")


# ---- the Kinesis adapter, against botocore's model --------------------------------------


def _kinesis() -> Any:
    return boto3.client("kinesis", region_name="us-east-1")


def test_requests_name_the_stream_by_arn_and_page_without_it() -> None:
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/s"
    client = _kinesis()
    shard = {"ShardId": "shardId-000000000001",
             "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"},
             "SequenceNumberRange": {"StartingSequenceNumber": "1", "EndingSequenceNumber": "9"},
             "ParentShardId": "shardId-000000000000"}
    with Stubber(client) as stub:
        stub.add_response("list_shards", {"Shards": [], "NextToken": "t1"}, {"StreamARN": arn})
        stub.add_response("list_shards", {"Shards": [shard]}, {"NextToken": "t1"})
        stub.add_response("get_shard_iterator", {"ShardIterator": "it-1"},
                          {"StreamARN": arn, "ShardId": "shardId-000000000001",
                           "ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": "42"})
        stub.add_response("get_records", {"Records": [{"SequenceNumber": "43", "Data": b"d",
                                                       "PartitionKey": "k"}],
                                          "MillisBehindLatest": 0},
                          {"ShardIterator": "it-1", "Limit": 10_000})
        stream = KinesisStream(client, arn)
        assert stream.shards() == [Shard("shardId-000000000001", "shardId-000000000000", True)]
        assert stream.iterator("shardId-000000000001", "42") == "it-1"
        page = stream.read("it-1", 50_000)
        stub.assert_no_pending_responses()
    assert (page.next_iterator, page.behind_ms, [r.sequence for r in page.records]) == (None, 0, ["43"])
    assert dict(stream.calls) == {"ListShards": 2, "GetShardIterator": 1, "GetRecords": 1}


@pytest.mark.parametrize(("code", "kind"), [("ExpiredIteratorException", IteratorExpired),
                                            ("ProvisionedThroughputExceededException", Throttled)])
def test_the_errors_a_reader_recovers_from_have_their_own_types(code: str, kind: type) -> None:
    client = _kinesis()
    with Stubber(client) as stub:
        stub.add_client_error("get_records", service_error_code=code, http_status_code=400)
        with pytest.raises(kind):
            KinesisStream(client, "s").read("it")


def test_sequence_numbers_compare_as_numbers() -> None:
    assert sequence_key("9") < sequence_key("10")


def test_parents_are_read_before_their_children() -> None:
    shards = [Shard("c1", "p", False), Shard("p", None, True), Shard("c2", "p", False),
              Shard("o", "gone", False)]
    order = [s.id for s in _parents_first(shards)]
    assert sorted(order) == ["c1", "c2", "o", "p"]
    assert order.index("p") < order.index("c1") and order.index("p") < order.index("c2")


def test_event_ids_are_kept_past_any_redelivery() -> None:
    # CloudWatch Logs retries for 24 h; the copy may then wait the stream's retention to be read.
    assert dedupe_retention(24).total_seconds() == (24 + 24 + 1) * 3600
    assert dedupe_retention(168).total_seconds() == (24 + 168 + 1) * 3600


# ---- tokens, as limits count them ------------------------------------------------------


def test_tokens_include_cache_reads_and_writes_and_input_includes_cache() -> None:
    t = Totals(input_tokens=100, output_tokens=20, cache_read_tokens=1000, cache_write_tokens=50,
               requests=3, cost_micro_usd=9)
    assert t.tokens == 1170
    assert t.metric("tokens") == 1170
    assert t.metric("input_tokens") == 1150
    assert t.metric("output_tokens") == 20
    assert (t.metric("requests"), t.metric("cost_usd")) == (3, 9)


def test_the_usage_card_shows_input_with_its_cache_tokens() -> None:
    from bot.render.usage import tokens_in

    assert tokens_in(Totals(input_tokens=100, cache_read_tokens=5000, cache_write_tokens=300)) == \
        "5.4k (incl. 5.3k cache)"
    assert tokens_in(Totals(input_tokens=100)) == "100"
