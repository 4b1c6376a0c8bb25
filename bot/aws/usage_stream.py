"""Kinesis adapter for the usage stream (``BOT_USAGE_STREAM``): shards, iterators, records.

Only the four read calls the bot's role is granted (``iam-policy``): DescribeStreamSummary,
ListShards, GetShardIterator and GetRecords (Kinesis Data Streams API reference). Reading is
pull-based and free of charge in provisioned mode; what a read costs is the per-shard limit of
5 GetRecords calls a second, so a caller paces itself rather than polling in a tight loop.

Positions: a shard is read from just after the last sequence number the bot committed
(``AFTER_SEQUENCE_NUMBER``), or from its oldest record (``TRIM_HORIZON``) the first time.
A shard iterator expires 5 minutes after it was handed out (``IteratorExpired``): the caller gets
a new one from its checkpoint. ``NextShardIterator`` is absent once a closed shard (after a
reshard) has been read to its end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.clients import aws_error
from bot.errors import AwsError

MAX_RECORDS_PER_CALL = 10_000  # GetRecords' own ceiling on Limit


class IteratorExpired(AwsError):
    """ExpiredIteratorException: get a new iterator from the checkpoint."""


class Throttled(AwsError):
    """ProvisionedThroughputExceededException (or a KMS throttle): try this shard later."""


_RAISE_AS = {"ExpiredIteratorException": IteratorExpired,
             "ProvisionedThroughputExceededException": Throttled,
             "KMSThrottlingException": Throttled}


@dataclass(frozen=True, slots=True)
class StreamRecord:
    sequence: str  # decimal string, ordered within its shard
    data: bytes


@dataclass(frozen=True, slots=True)
class Shard:
    id: str
    parent: str | None
    closed: bool  # has an ending sequence number: it was split or merged away


@dataclass(frozen=True, slots=True)
class Page:
    records: list[StreamRecord]
    next_iterator: str | None  # None: a closed shard read to its end
    behind_ms: int  # how far the last record is behind the shard's tip


@dataclass(frozen=True, slots=True)
class StreamSummary:
    arn: str
    status: str
    retention_hours: int
    open_shards: int


class KinesisStream:
    """Read one stream, named by its name or its ARN."""

    def __init__(self, client: Any, stream: str) -> None:
        self._k = client
        self.stream = stream
        self._target = {"StreamARN": stream} if stream.startswith("arn:") else {"StreamName": stream}
        self.calls: Counter[str] = Counter()

    def summary(self) -> StreamSummary:
        page = self._call("DescribeStreamSummary", self._k.describe_stream_summary, **self._target)
        d = page["StreamDescriptionSummary"]
        return StreamSummary(str(d["StreamARN"]), str(d["StreamStatus"]), int(d["RetentionPeriodHours"]),
                             int(d.get("OpenShardCount", 0)))

    def shards(self) -> list[Shard]:
        """Every shard still holding records (closed ones included, until their data expires)."""
        found: list[Shard] = []
        request: dict[str, Any] = dict(self._target)
        while True:
            page = self._call("ListShards", self._k.list_shards, **request)
            for s in page.get("Shards", []):
                ending = s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
                found.append(Shard(str(s["ShardId"]), s.get("ParentShardId"), ending is not None))
            token = page.get("NextToken")
            if not token:
                return found
            request = {"NextToken": token}  # the stream must not be named again with a token

    def iterator(self, shard_id: str, after: str | None) -> str:
        """Just after sequence `after`, or the shard's oldest record when `after` is None."""
        request: dict[str, Any] = {**self._target, "ShardId": shard_id}
        if after is None:
            request["ShardIteratorType"] = "TRIM_HORIZON"
        else:
            request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        page = self._call("GetShardIterator", self._k.get_shard_iterator, **request)
        return str(page["ShardIterator"])

    def read(self, iterator: str, limit: int = MAX_RECORDS_PER_CALL) -> Page:
        limit = max(1, min(limit, MAX_RECORDS_PER_CALL))
        page = self._call("GetRecords", self._k.get_records, ShardIterator=iterator, Limit=limit)
        records = [StreamRecord(str(r["SequenceNumber"]), bytes(r["Data"])) for r in page.get("Records", [])]
        return Page(records, page.get("NextShardIterator"), int(page.get("MillisBehindLatest", 0) or 0))

    def _call(self, operation: str, method: Callable[..., Any], **request: Any) -> dict[str, Any]:
        self.calls[operation] += 1
        try:
            response: dict[str, Any] = method(**request)
        except ClientError as exc:
            err = aws_error(operation, exc)
            kind = _RAISE_AS.get(err.code)
            if kind is not None:
                raise kind(operation, err.code, str(exc)[:300]) from exc
            raise err from exc
        except BotoCoreError as exc:
            raise aws_error(operation, exc) from exc
        return response


def sequence_key(sequence: str) -> int:
    """Kinesis sequence numbers are decimal strings of varying length: compare them as numbers."""
    return int(sequence)
