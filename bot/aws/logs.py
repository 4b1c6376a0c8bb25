"""CloudWatch Logs Insights adapter: Bedrock model-invocation logs summed per hour.

Bedrock's model-invocation logging writes one JSON record per call (``schemaType``
``ModelInvocationLog``) with ``identity.arn``, ``modelId``, ``input.inputTokenCount``,
``output.outputTokenCount`` (and, for prompt caching, ``input.cacheReadInputTokenCount`` /
``input.cacheWriteInputTokenCount``) and the caller's ``requestMetadata``. Logs Insights flattens
nested JSON with dots, so those are the field names a query uses.

`build_query` sums tokens and counts requests per (hour, identity.arn, modelId, each configured
``requestMetadata`` key). `LogsInsights.run` starts the query over a time range, polls with a
bounded backoff and gives back the result rows as plain dicts; a query that does not finish
within `max_wait` seconds is stopped and reported as None ("try again next sync").

Logs Insights charges per GB *scanned* — every event in [startTime, endTime] of the log group,
whatever the query filters — so callers pass the narrowest whole-hour range they need.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.clients import aws_error
from bot.errors import AwsError

log = logging.getLogger(__name__)

# A requestMetadata key the query can name: it becomes part of a field path
# (`requestMetadata.<key>`) and of an alias (`md_<key>`), so only identifier characters.
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}\Z")
METADATA_PREFIX = "md_"
# Result field names (the aliases in `build_query`).
HOUR_FIELD, ARN_FIELD, MODEL_FIELD = "hour", "arn", "model"
IN_FIELD, OUT_FIELD, REQUESTS_FIELD = "in_tokens", "out_tokens", "requests"
CACHE_READ_FIELD, CACHE_WRITE_FIELD = "cache_read", "cache_write"
MAX_ROWS = 10_000  # StartQuery's `limit` (and one GetQueryResults page)
DONE, RUNNING = "Complete", ("Scheduled", "Running", "Unknown")
FAILED = ("Failed", "Cancelled", "Timeout")
# Busy, not broken: the account's concurrent-query quota is shared; the next sync tries again.
_RETRY_NEXT_SYNC = ("LimitExceededException",)


def metadata_field(key: str) -> str:
    """The result field (alias) that carries `requestMetadata.<key>`."""
    return METADATA_PREFIX + key


def validate_metadata_keys(keys: Sequence[str]) -> list[str]:
    """The keys in order, duplicates dropped; ValueError naming the first unusable one."""
    out: list[str] = []
    for key in keys:
        if not isinstance(key, str) or not METADATA_KEY_RE.fullmatch(key):
            raise ValueError(f"requestMetadata key {str(key)[:80]!r} cannot be queried: use 1-64 "
                             "letters, digits or _ (BOT_METADATA_KEYS)")
        if key not in out:
            out.append(key)
    return out


def build_query(metadata_keys: Sequence[str]) -> str:
    """The Logs Insights query: tokens and requests per hour, caller, model and metadata value.

    A record without one of the grouped fields (no requestMetadata, say) still counts: Logs
    Insights groups it under an empty value and leaves that field out of the result row.
    """
    keys = validate_metadata_keys(metadata_keys)
    fields = [f"bin(1h) as {HOUR_FIELD}", f"identity.arn as {ARN_FIELD}", f"modelId as {MODEL_FIELD}",
              *(f"requestMetadata.{k} as {metadata_field(k)}" for k in keys)]
    group = [HOUR_FIELD, ARN_FIELD, MODEL_FIELD, *(metadata_field(k) for k in keys)]
    sums = [f"sum(input.inputTokenCount) as {IN_FIELD}",
            f"sum(output.outputTokenCount) as {OUT_FIELD}",
            f"sum(input.cacheReadInputTokenCount) as {CACHE_READ_FIELD}",
            f"sum(input.cacheWriteInputTokenCount) as {CACHE_WRITE_FIELD}",
            f"count(*) as {REQUESTS_FIELD}"]
    return "\n".join([
        "filter schemaType = 'ModelInvocationLog'",
        "| fields " + ", ".join(fields),
        "| stats " + ", ".join(sums) + " by " + ", ".join(group),
        f"| sort {HOUR_FIELD} asc",
    ])


def row_dict(row: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """One GetQueryResults row ([{field, value}, …]) as a dict; `@ptr` and other @ fields dropped."""
    out: dict[str, str] = {}
    for cell in row:
        name = cell.get("field")
        if not name or name.startswith("@") or cell.get("value") is None:
            continue
        out[str(name)] = str(cell["value"])
    return out


def _epoch(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return int(at.timestamp())


class LogsInsights:
    """Runs one Logs Insights query to completion, within a bounded wait.

    `sleep` is injected so tests never sleep; the wait is the sum of the backoff delays
    (0.25 s doubling to 2 s), so `max_wait` bounds the polling, not the AWS calls themselves.
    """

    FIRST_DELAY = 0.25
    MAX_DELAY = 2.0

    def __init__(self, logs_client: Any, sleep: Callable[[float], None] = time.sleep,
                 max_wait: float = 20.0, max_rows: int = MAX_ROWS) -> None:
        if max_wait < 0:
            raise ValueError("max_wait must be >= 0")
        if not 1 <= max_rows <= MAX_ROWS:
            raise ValueError(f"max_rows must be 1..{MAX_ROWS}")
        self.logs = logs_client
        self.sleep = sleep
        self.max_wait = max_wait
        self.max_rows = max_rows
        self.calls: Counter[str] = Counter()
        self.bytes_scanned = 0.0  # over every completed query of this instance
        self.last_statistics: dict[str, float] = {}

    def run(self, log_group: str, start: datetime, end: datetime,
            query: str) -> list[dict[str, str]] | None:
        """Rows of a completed query; None when it did not complete in time (stopped) or the
        account's concurrent-query quota is full — either way, run it again next sync.

        Raises AwsError for a query that Failed / was Cancelled / timed out on the AWS side, and
        for any AWS error (unknown log group, malformed query, AccessDenied …).
        """
        start_s, end_s = _epoch(start), _epoch(end)
        if end_s <= start_s:
            raise ValueError("end must be after start")
        try:
            query_id = self._call("StartQuery", self.logs.start_query, logGroupName=log_group,
                                  startTime=start_s, endTime=end_s, queryString=query,
                                  limit=self.max_rows)["queryId"]
        except AwsError as exc:
            if exc.code in _RETRY_NEXT_SYNC:
                log.warning("Logs Insights busy (%s): the invocation-log sync retries next time", exc.code)
                return None
            raise
        waited, delay = 0.0, self.FIRST_DELAY
        while True:
            resp = self._call("GetQueryResults", self.logs.get_query_results, queryId=query_id)
            status = str(resp.get("status", "Unknown"))
            if status == DONE:
                return self._collect(query_id, resp)
            if status in FAILED:
                raise AwsError("GetQueryResults", f"Query{status}",
                               f"Logs Insights query {query_id} on {log_group[:200]} ended {status}")
            if waited + delay > self.max_wait:
                self._stop(query_id)
                log.warning("Logs Insights query %s not complete after %.1f s: stopped, retried "
                            "next sync", query_id, waited)
                return None
            self.sleep(delay)
            waited += delay
            delay = min(delay * 2, self.MAX_DELAY)

    def _collect(self, query_id: str, resp: Mapping[str, Any]) -> list[dict[str, str]]:
        rows = [row_dict(r) for r in resp.get("results", [])]
        token = resp.get("nextToken")
        while token and len(rows) < self.max_rows:
            page = self._call("GetQueryResults", self.logs.get_query_results, queryId=query_id,
                              nextToken=token)
            rows.extend(row_dict(r) for r in page.get("results", []))
            token = page.get("nextToken")
        stats = {k: float(v) for k, v in (resp.get("statistics") or {}).items()
                 if isinstance(v, int | float)}
        self.last_statistics = stats
        self.bytes_scanned += stats.get("bytesScanned", 0.0)
        return rows

    def _stop(self, query_id: str) -> None:
        """Best effort: a query that just finished or already stopped can't be stopped."""
        try:
            self._call("StopQuery", self.logs.stop_query, queryId=query_id)
        except AwsError as exc:
            log.info("StopQuery %s: %s", query_id, exc)

    def _call(self, op: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        self.calls[op] += 1
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(op, exc) from exc
