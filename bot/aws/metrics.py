"""CloudWatch adapter: Bedrock token usage per Application Inference Profile, per hour.

Bedrock publishes per-invocation metrics in `AWS/Bedrock` with the single dimension
`ModelId`; for calls made through an AIP that value is the AIP *id* (`a1b2c3d4e5f6`).

Packing rule for `GetMetricData` (see `plan_calls`): a call carries at most 500 queries
and at most 100,800 datapoints (queries x hours in its time range). Among all choices
of "q queries per call, h hours per time chunk" with q <= 500 and q*h <= 100,800, take
the one with the fewest calls, ceil(hours / h) * ceil(queries / q); ties go to fewer time
chunks. A sync window (<= 201 hours) therefore costs ceil(queries / 500) calls — the
API's own batch limit — and a long backfill trades queries per call against time chunks.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.clients import aws_error
from bot.errors import AwsError

log = logging.getLogger(__name__)

NAMESPACE = "AWS/Bedrock"
DIMENSION = "ModelId"
TOKEN_METRICS = ("InputTokenCount", "OutputTokenCount", "Invocations")
CACHE_METRICS = ("CacheReadInputTokenCount", "CacheWriteInputTokenCount")
ALL_METRICS = TOKEN_METRICS + CACHE_METRICS
HOUR = timedelta(hours=1)
PERIOD_SECONDS = 3600

# CloudWatch metric name -> HourlyUsage field.
_FIELD = {
    "InputTokenCount": "input_tokens",
    "OutputTokenCount": "output_tokens",
    "CacheReadInputTokenCount": "cache_read_tokens",
    "CacheWriteInputTokenCount": "cache_write_tokens",
    "Invocations": "invocations",
}
# (model_id, hour) -> metric -> summed value; rounded once when rows are built.
_Totals = defaultdict[tuple[str, datetime], defaultdict[str, float]]
# Per-query statuses that mean the series is missing, not merely paginated.
_FAILED_STATUSES = ("InternalError", "Forbidden")


@dataclass(frozen=True)
class HourlyUsage:
    model_id: str  # the ModelId dimension value (AIP id)
    hour: datetime  # aware UTC, start of the hour
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    invocations: int = 0


@dataclass(frozen=True)
class CallPlan:
    """How a (queries x hours) read is split: `queries_per_call` x `hours_per_chunk`."""

    queries_per_call: int
    hours_per_chunk: int
    calls: int


def floor_hour(at: datetime) -> datetime:
    """The start of `at`'s UTC hour; `at` must be aware."""
    if at.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(at: datetime) -> datetime:
    floored = floor_hour(at)
    return floored if floored == at else floored + HOUR


def sync_window(now: datetime) -> tuple[datetime, datetime]:
    """(start, end) of a normal sync: the previous and the current hour up to `now`."""
    return floor_hour(now) - HOUR, now


def plan_calls(n_queries: int, hours: int, max_queries: int = 500,
               max_datapoints: int = 100_800) -> CallPlan:
    """The packing rule (module docstring). For a fixed q the best h is the largest allowed,
    so trying every q in 1..500 finds the optimum in at most 500 steps."""
    if n_queries < 0 or hours < 0:
        raise ValueError("n_queries and hours must be >= 0")
    if n_queries == 0 or hours == 0:
        return CallPlan(0, 0, 0)
    best: tuple[int, int, int] | None = None  # (calls, chunks, -q)
    for q in range(min(max_queries, n_queries), 0, -1):
        h = min(hours, max_datapoints // q)
        if h == 0:
            continue
        chunks = ceil(hours / h)
        key = (chunks * ceil(n_queries / q), chunks, -q)
        if best is None or key < best:
            best = key
    if best is None:  # only when max_datapoints < 1
        raise ValueError("max_datapoints must be >= 1")
    calls, chunks, _ = best
    # Even out batch and chunk sizes: never more calls, and no tiny trailing call.
    per_call, per_chunk = ceil(n_queries / (calls // chunks)), ceil(hours / chunks)
    return CallPlan(per_call, per_chunk, ceil(n_queries / per_call) * ceil(hours / per_chunk))


def _split(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class CloudWatchMetrics:
    MAX_QUERIES = 500  # GetMetricData's per-call limit
    MAX_DATAPOINTS = 100_800  # GetMetricData's per-call datapoint limit

    def __init__(self, cw_client: Any) -> None:
        self._cw = cw_client
        self.calls: Counter[str] = Counter()  # API calls made, by operation (pages included)
        # GetMetricData's billing unit: metrics (queries) requested, counted per request sent
        self.metrics_requested = 0

    # -- discovery -------------------------------------------------------------------

    def active_model_ids(self, recently_active: bool = True) -> dict[str, frozenset[str]]:
        """{ModelId value: names of the usage metrics published for it}.

        ListMetrics is free. No dimension filter is sent: a name-only filter is not
        understood by moto (offline mode), so metrics with other dimensions are
        dropped here instead.
        """
        found: dict[str, set[str]] = defaultdict(set)
        request: dict[str, Any] = {"Namespace": NAMESPACE}
        if recently_active:
            request["RecentlyActive"] = "PT3H"
        while True:
            page = self._call("ListMetrics", self._cw.list_metrics, request)
            for metric in page.get("Metrics", []):
                model_id = _only_model_id(metric)
                if model_id and metric.get("MetricName") in ALL_METRICS:
                    found[model_id].add(metric["MetricName"])
            token = page.get("NextToken")
            if not token:
                return {model_id: frozenset(names) for model_id, names in found.items()}
            request = {**request, "NextToken": token}

    # -- hourly sums -----------------------------------------------------------------

    def hourly(self, wanted: Mapping[str, Iterable[str]], start: datetime,
               end: datetime) -> list[HourlyUsage]:
        """Hourly sums for each (model_id, metric) in `wanted`, for hours in [start, end).

        `start` is floored to its hour; an hour is included when it begins before `end`
        (so a partial current hour is read). Returns one row per (model_id, hour) that has
        any datapoint, sorted by model_id then hour. Calls are packed by `plan_calls`;
        AWS failures (after the client's retries) raise `AwsError`.
        """
        first, stop = floor_hour(start), ceil_hour(_aware(end))
        if stop <= first:
            raise ValueError("end must be after start")
        series = _series(wanted)
        if not series:
            return []
        hours = (stop - first) // HOUR
        plan = plan_calls(len(series), hours, self.MAX_QUERIES, self.MAX_DATAPOINTS)
        totals: _Totals = defaultdict(lambda: defaultdict(float))
        for chunk_start in range(0, hours, plan.hours_per_chunk):
            t0 = first + chunk_start * HOUR
            t1 = min(stop, t0 + plan.hours_per_chunk * HOUR)
            for batch in _split(series, plan.queries_per_call):
                self._read(batch, t0, t1, totals)
        return [
            HourlyUsage(model_id, hour, **{_FIELD[m]: round(v) for m, v in sums.items()})
            for (model_id, hour), sums in sorted(totals.items())
        ]

    @staticmethod
    def calls_needed(n_queries: int, hours: int) -> int:
        """GetMetricData calls `hourly` makes for n queries over `hours` (one page each)."""
        return plan_calls(n_queries, hours, CloudWatchMetrics.MAX_QUERIES,
                          CloudWatchMetrics.MAX_DATAPOINTS).calls

    def _read(self, batch: Sequence[tuple[str, str]], t0: datetime, t1: datetime,
              totals: _Totals) -> None:
        """One GetMetricData request (all its pages), added into `totals`."""
        ids = {f"q{i}": series for i, series in enumerate(batch)}

        def add(qid: str, hour: datetime, value: float) -> None:
            model_id, metric = ids[qid]
            totals[(model_id, hour)][metric] += value

        self.read_queries([_query(qid, m, name) for qid, (m, name) in ids.items()], t0, t1, add,
                          ids.__getitem__)

    def read_queries(self, queries: Sequence[dict[str, Any]], t0: datetime, t1: datetime,
                     add: Callable[[str, datetime, float], None],
                     name_of: Callable[[str], tuple[str, str]]) -> None:
        """One GetMetricData request for prepared `queries` (all its pages): `add(query id, hour,
        value)` for each datapoint in [t0, t1); `name_of(query id)` names a failed series."""
        request: dict[str, Any] = {
            "MetricDataQueries": list(queries),
            "StartTime": t0,
            "EndTime": t1,
            "ScanBy": "TimestampAscending",
        }
        while True:
            self.metrics_requested += len(queries)
            page = self._call("GetMetricData", self._cw.get_metric_data, request)
            for message in page.get("Messages", []):
                log.warning("GetMetricData: %s: %s", message.get("Code"), message.get("Value"))
            for result in page.get("MetricDataResults", []):
                key, metric = name_of(result["Id"])
                _check_status(result, str(key), metric)
                for ts, value in zip(result.get("Timestamps", []), result.get("Values", []),
                                     strict=False):
                    hour = floor_hour(_aware(ts))
                    if t0 <= hour < t1:  # ignore anything outside what was asked
                        add(result["Id"], hour, value)
            token = page.get("NextToken")
            if not token:  # PartialData results continue on the next page
                return
            request = {**request, "NextToken": token}

    def list_metrics(self, namespace: str, recently_active: bool) -> list[dict[str, Any]]:
        """Every metric ListMetrics lists in `namespace` (all pages; free)."""
        request: dict[str, Any] = {"Namespace": namespace}
        if recently_active:
            request["RecentlyActive"] = "PT3H"
        out: list[dict[str, Any]] = []
        while True:
            page = self._call("ListMetrics", self._cw.list_metrics, request)
            out.extend(page.get("Metrics", []))
            token = page.get("NextToken")
            if not token:
                return out
            request = {**request, "NextToken": token}

    def _call(self, operation: str, method: Any, request: dict[str, Any]) -> dict[str, Any]:
        self.calls[operation] += 1
        try:
            response: dict[str, Any] = method(**request)
        except (ClientError, BotoCoreError) as exc:
            raise aws_error(operation, exc) from exc
        return response


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return at.astimezone(UTC)


def _series(wanted: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """Sorted, de-duplicated (model_id, metric) pairs; unknown metric names are a bug."""
    pairs: set[tuple[str, str]] = set()
    for model_id, metrics in wanted.items():
        if not model_id:
            raise ValueError("empty ModelId")
        for metric in metrics:
            if metric not in _FIELD:
                raise ValueError(f"not a Bedrock usage metric: {metric!r}")
            pairs.add((model_id, metric))
    return sorted(pairs)


def _query(query_id: str, model_id: str, metric: str) -> dict[str, Any]:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": NAMESPACE,
                "MetricName": metric,
                "Dimensions": [{"Name": DIMENSION, "Value": model_id}],
            },
            "Period": PERIOD_SECONDS,
            "Stat": "Sum",
        },
        "ReturnData": True,
    }


def _only_model_id(metric: Mapping[str, Any]) -> str | None:
    dims = metric.get("Dimensions") or []
    if len(dims) == 1 and dims[0].get("Name") == DIMENSION and dims[0].get("Value"):
        return str(dims[0]["Value"])
    return None


def _check_status(result: Mapping[str, Any], model_id: str, metric: str) -> None:
    """A failed series would be read as zero usage; fail the sync instead (it re-reads)."""
    status = result.get("StatusCode", "Complete")
    if status in _FAILED_STATUSES:
        detail = "; ".join(f"{m.get('Code')}: {m.get('Value')}" for m in result.get("Messages", []))
        message = f"{metric} for {model_id}: {detail or status}"
        raise AwsError("GetMetricData", status, message[:300])
