"""Pure parsers for the usage stream: CloudWatch Logs subscription records, and the Bedrock
model-invocation log records they carry.

A subscription filter delivers a Kinesis record per batch of log events: the record's data is a
gzip-compressed JSON document (Kinesis hands the bytes over as they were put)::

    {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/aws/bedrock/…",
     "logStream": "…", "subscriptionFilters": ["…"],
     "logEvents": [{"id": "3195…", "timestamp": 1432826855000, "message": "<one log line>"}]}

``CONTROL_MESSAGE`` records (sent when a subscription is created, to check the destination) carry
no usage. Each DATA_MESSAGE event's ``message`` is one model-invocation log record (JSON), of which
the bot reads::

    schemaType "ModelInvocationLog", timestamp, accountId, identity.arn, region, requestId,
    operation, modelId, input.inputTokenCount, input.cacheReadInputTokenCount,
    input.cacheWriteInputTokenCount, output.outputTokenCount, requestMetadata

The whole record is parsed (no field limit, unlike Logs Insights' 200 extracted fields), so the
token counts of a record with large request/response bodies are read too. See docs/usage-stream.md
for the AWS pages these formats come from.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DATA_MESSAGE = "DATA_MESSAGE"
CONTROL_MESSAGE = "CONTROL_MESSAGE"
SCHEMA_TYPE = "ModelInvocationLog"
# A Kinesis record is at most 10 MiB; CloudWatch Logs batches events of at most 1 MiB each.
# Anything inflating past this is not a subscription record (or is a gzip bomb).
MAX_INFLATED = 64 * 1024 * 1024
MAX_TOKENS = 10**12  # per call; larger is corrupt, not usage
METADATA_VALUE_MAX = 256  # Bedrock's own limit on a requestMetadata value
_EVENT_ID = re.compile(r"^[0-9]{1,64}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MalformedRecord(ValueError):
    """The Kinesis record is not a CloudWatch Logs subscription record."""


class NotInvocation(ValueError):
    """The log event is not a usable model-invocation log record (the reason says why)."""


@dataclass(frozen=True, slots=True)
class LogEvent:
    id: str
    timestamp_ms: int
    message: str


@dataclass(frozen=True, slots=True)
class SubscriptionMessage:
    message_type: str
    log_group: str
    events: tuple[LogEvent, ...]


@dataclass(frozen=True, slots=True)
class Invocation:
    """One Bedrock call, as its invocation log record tells it."""

    event_id: str  # the CloudWatch Logs event id: what duplicates are recognised by
    at: datetime  # aware UTC: when the call was logged
    model_id: str  # a model id, a model/system-profile ARN, or an application inference profile ARN
    identity_arn: str  # "" when the record names no caller
    metadata: dict[str, str]
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    request_id: str = ""
    operation: str = ""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


def decode_subscription(data: bytes) -> SubscriptionMessage:
    """The gzip JSON document of one Kinesis record. Raises MalformedRecord with a short reason."""
    try:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing only
        raw = inflater.decompress(data, MAX_INFLATED)
        if inflater.unconsumed_tail:
            raise MalformedRecord(f"inflates past {MAX_INFLATED} bytes")
        if not inflater.eof:
            raise MalformedRecord("truncated gzip data")
        doc = json.loads(raw)
    except zlib.error as exc:
        raise MalformedRecord(f"not gzip: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedRecord(f"not JSON: {str(exc)[:80]}") from None
    if not isinstance(doc, dict):
        raise MalformedRecord("not a JSON object")
    kind = doc.get("messageType")
    if kind not in (DATA_MESSAGE, CONTROL_MESSAGE):
        raise MalformedRecord(f"messageType {str(kind)[:40]!r}")
    group = doc.get("logGroup")
    events = doc.get("logEvents", [])
    if not isinstance(group, str) or not isinstance(events, list):
        raise MalformedRecord("logGroup or logEvents missing")
    if kind == CONTROL_MESSAGE:
        return SubscriptionMessage(kind, group, ())
    return SubscriptionMessage(kind, group, tuple(_event(e) for e in events))


def _event(raw: Any) -> LogEvent:
    if not isinstance(raw, dict):
        raise MalformedRecord("a log event is not an object")
    event_id, ts, message = raw.get("id"), raw.get("timestamp"), raw.get("message")
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise MalformedRecord("a log event has no valid id")
    if not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(message, str):
        raise MalformedRecord(f"log event {event_id}: timestamp or message missing")
    return LogEvent(event_id, ts, message)


def parse_invocation(event: LogEvent) -> Invocation:
    """The invocation log record in one log event. Raises NotInvocation with a short reason."""
    try:
        doc = json.loads(event.message)
    except (json.JSONDecodeError, RecursionError):
        raise NotInvocation("message is not JSON") from None
    if not isinstance(doc, dict) or doc.get("schemaType") != SCHEMA_TYPE:
        raise NotInvocation("not a ModelInvocationLog record")
    model = doc.get("modelId")
    if not isinstance(model, str) or not model.strip() or len(model) > 2048:
        raise NotInvocation("no modelId")
    inp, out = _object(doc.get("input")), _object(doc.get("output"))
    identity = _object(doc.get("identity"))
    arn = identity.get("arn")
    return Invocation(
        event_id=event.id,
        at=_when(doc.get("timestamp"), event.timestamp_ms),
        model_id=model.strip(),
        identity_arn=arn.strip() if isinstance(arn, str) and len(arn) <= 2048 else "",
        metadata=_metadata(doc.get("requestMetadata")),
        input_tokens=_tokens(inp, "inputTokenCount"),
        output_tokens=_tokens(out, "outputTokenCount"),
        cache_read_tokens=_tokens(inp, "cacheReadInputTokenCount"),
        cache_write_tokens=_tokens(inp, "cacheWriteInputTokenCount"),
        request_id=_short(doc.get("requestId")),
        operation=_short(doc.get("operation")),
    )


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens(section: dict[str, Any], key: str) -> int:
    """A token count: absent is 0 (a model without caching logs no cache fields)."""
    value = section.get(key)
    if value is None:
        return 0
    if not _is_int(value) or not 0 <= value <= MAX_TOKENS:
        raise NotInvocation(f"{key} is not a token count")
    return int(value)


def _when(stamp: Any, fallback_ms: int) -> datetime:
    """The record's ISO timestamp; the log event's own when it has none (or a bad one)."""
    if isinstance(stamp, str) and stamp:
        try:
            at = datetime.fromisoformat(stamp.strip().replace("Z", "+00:00"))
        except ValueError:
            at = None
        if at is not None:
            return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    try:
        return datetime.fromtimestamp(fallback_ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise NotInvocation("no usable timestamp") from None


def _metadata(value: Any) -> dict[str, str]:
    """requestMetadata string values (others, over-long or with control characters, dropped)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items()
            if isinstance(k, str) and isinstance(v, str) and 0 < len(v) <= METADATA_VALUE_MAX
            and not _CONTROL.search(v)}


def _short(value: Any) -> str:
    return value[:128] if isinstance(value, str) else ""


def encode_subscription(log_group: str, events: list[tuple[str, int, str]], *,
                        message_type: str = DATA_MESSAGE, owner: str = "123456789012",
                        log_stream: str = "stream", filter_name: str = "bedrock-bot-usage") -> bytes:
    """A subscription record as CloudWatch Logs writes it (for tests, benches and the demo)."""
    doc = {"messageType": message_type, "owner": owner, "logGroup": log_group, "logStream": log_stream,
           "subscriptionFilters": [filter_name],
           "logEvents": [{"id": i, "timestamp": ts, "message": m} for i, ts, m in events]}
    return gzip.compress(json.dumps(doc).encode(), compresslevel=6)
