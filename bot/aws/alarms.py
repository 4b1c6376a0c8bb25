"""CloudWatch metric-math alarms that back up a token/request limit (DESIGN §4 "Alarms/budgets").

One alarm per limit, named ``bedrock-bot-limit-<limit id>``, so a notification maps back to its
limit (`parse_alarm_name`). The alarm sums the subject's AIP metrics in ``AWS/Bedrock`` (dimension
``ModelId`` = AIP id) with ``SUM([m0, m1, ...])`` and goes to ALARM when the sum reaches the
limit's amount; ALARM and OK both notify the bot's topic.

What CloudWatch can express (PutMetricAlarm, botocore's service model and the CloudWatch guide):

- The evaluation range is ``Period x EvaluationPeriods``; at most 604,800 s (7 days), and at most
  86,400 s for periods under an hour. Periods are multiples of 60.
- The default *sliding* evaluation window re-evaluates (about once a minute) the range that ends
  at the evaluation time. With ``EvaluationPeriods=1`` the one datapoint is the metric's Sum over
  the last ``Period`` seconds: a rolling window. So ``24h`` is ``Period=86400`` and ``7d`` is
  ``Period=604800``, each with one evaluation period. A longer window (``30d``) cannot be
  expressed; neither can a calendar window (``day``, ``week``, ``month``), which restarts at a
  boundary instead of sliding.
- A metric-math alarm holds at most 20 ``MetricDataQuery`` entries: at most 10 that fetch a
  metric (``MetricStat``) and at most 10 expressions. The limit that binds is the 10 metrics:
  ``tokens`` needs four per AIP (input, output, cache read, cache write) and ``input_tokens``
  three, so one alarm covers at most 2 AIPs for ``tokens``, 3 for ``input_tokens`` and 10 for
  the other metrics. Metrics Insights queries (one query over many AIPs)
  only look back 3 hours in an alarm, and SEARCH is not allowed in alarms, so neither helps.

Splitting the AIPs over several alarms is *not* done: each alarm would see only part of the sum,
so none would fire when the total crosses the amount while every part stays below it. A guard
that looks complete but is not is worse than none; `plan_alarms` returns no alarm and a note
instead, and the bot's own evaluation (primary anyway) enforces the limit. Names with a part
suffix (``bedrock-bot-limit-<id>-p<n>``) are still recognised so that any found are cleaned up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.clients import aws_error, call
from bot.aws.metrics import DIMENSION, NAMESPACE

PREFIX = "bedrock-bot-limit-"
MANAGED_BY_KEY, MANAGED_BY_VALUE = "managed-by", "bedrock-bot"
LIMIT_ID_KEY = "limit-id"

MAX_METRIC_STATS = 10  # MetricStat entries per alarm (plus up to 10 expressions, 20 in all)
MAX_EVALUATION_SECONDS = 7 * 86_400  # Period x EvaluationPeriods, for periods of 1 h or more
DELETE_BATCH = 100  # DeleteAlarms takes at most 100 names a call
EXPRESSION_ID = "total"

# Limit metric -> the AWS/Bedrock metrics whose sum it is, as the ledger counts it (`tokens` and
# `input_tokens` include the prompt-cache tokens). cost_usd has no alarm (a Budget instead).
ALARM_METRICS: dict[str, tuple[str, ...]] = {
    "tokens": ("InputTokenCount", "OutputTokenCount", "CacheReadInputTokenCount",
               "CacheWriteInputTokenCount"),
    "input_tokens": ("InputTokenCount", "CacheReadInputTokenCount", "CacheWriteInputTokenCount"),
    "output_tokens": ("OutputTokenCount",),
    "requests": ("Invocations",),
}
# Limit window -> alarm period (seconds), with EvaluationPeriods = 1 and a sliding window.
ALARM_PERIODS: dict[str, int] = {"24h": 86_400, "7d": 604_800}

_NAME_RE = re.compile(r"bedrock-bot-limit-([1-9][0-9]{0,17})(?:-p([1-9][0-9]{0,5}))?", re.ASCII)

T = TypeVar("T")


# ---------------------------------------------------------------- names


def alarm_name(limit_id: int, part: int = 0) -> str:
    """``bedrock-bot-limit-<id>``, or ``...-p<part>`` for part >= 1."""
    if limit_id < 1 or part < 0:
        raise ValueError("limit_id must be >= 1 and part >= 0")
    return f"{PREFIX}{limit_id}" + (f"-p{part}" if part else "")


def parse_alarm_name(name: str) -> tuple[int, int] | None:
    """(limit id, part) for a name `alarm_name` makes; None for anything else (``-p0`` included)."""
    m = _NAME_RE.fullmatch(name)
    if m is None:
        return None
    return int(m[1]), int(m[2] or 0)


# ---------------------------------------------------------------- specs (pure)


def alarm_period(window: str) -> int | None:
    """The alarm period for a limit window, or None when one alarm cannot express it."""
    return ALARM_PERIODS.get(window)


def stats_needed(metric: str, n_profiles: int) -> int:
    """How many MetricStat entries an alarm for `metric` over `n_profiles` AIPs holds."""
    return len(ALARM_METRICS.get(metric, ())) * n_profiles


def build_alarm(limit_id: int, profile_ids: Sequence[str], metric: str, amount: int, window: str,
                topic_arn: str, part: int = 0, *, subject: str | None = None) -> dict[str, Any]:
    """PutMetricAlarm keyword arguments for one limit. Raises ValueError when the limit cannot be
    one alarm (use `plan_alarms`, which says why instead)."""
    names = ALARM_METRICS.get(metric)
    if names is None:
        raise ValueError(f"no CloudWatch alarm for metric {metric!r}")
    period = alarm_period(window)
    if period is None:
        raise ValueError(f"no CloudWatch alarm for window {window!r}")
    ids = sorted(set(profile_ids))
    if not ids:
        raise ValueError("an alarm needs at least one inference profile")
    if len(ids) * len(names) > MAX_METRIC_STATS:
        raise ValueError(f"{len(ids) * len(names)} metrics: an alarm sums at most {MAX_METRIC_STATS}")
    if amount < 1:
        raise ValueError("amount must be >= 1")
    queries: list[dict[str, Any]] = []
    for profile_id in ids:
        for metric_name in names:
            queries.append({
                "Id": f"m{len(queries)}",
                "MetricStat": {
                    "Metric": {"Namespace": NAMESPACE, "MetricName": metric_name,
                               "Dimensions": [{"Name": DIMENSION, "Value": profile_id}]},
                    "Period": period,
                    "Stat": "Sum",
                },
                "ReturnData": False,
            })
    who = f" of {subject}" if subject else ""
    queries.append({
        "Id": EXPRESSION_ID,
        "Expression": "SUM([" + ",".join(q["Id"] for q in queries) + "])",
        "Label": f"{metric}{who} over {window} (limit {limit_id})",
        "ReturnData": True,
    })
    name = alarm_name(limit_id, part)
    return {
        "AlarmName": name,
        "AlarmDescription": (f"bedrock-bot limit {limit_id}{who}: {amount} {metric} per rolling {window}. "
                             "Managed by bedrock-bot; changes made here are overwritten.")[:1024],
        "ActionsEnabled": True,
        "AlarmActions": [topic_arn],
        "OKActions": [topic_arn],
        "Metrics": queries,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": float(amount),
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": [{"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE},
                 {"Key": LIMIT_ID_KEY, "Value": str(limit_id)}],
    }


def plan_alarms(limit_id: int, profile_ids: Sequence[str], metric: str, amount: int, window: str,
                topic_arn: str, *, subject: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """The alarm specs to put for a limit (zero or one), and a note saying why there is none.

    cost_usd gives ``([], None)``: $ limits are backed by an AWS Budget, not an alarm.
    """
    if metric not in ALARM_METRICS:
        return [], None
    if window not in ALARM_PERIODS:
        if window == "30d":
            return [], ("no CloudWatch alarm: a 30d window is longer than the 7 days an alarm can "
                        "evaluate; the bot's own evaluation enforces this limit")
        return [], (f"no CloudWatch alarm: a calendar {window} restarts at its boundary, and an alarm "
                    "only sums a sliding window; the bot's own evaluation enforces this limit")
    ids = sorted(set(profile_ids))
    if not ids:
        return [], ("no CloudWatch alarm yet: no inference profile to watch; it is made when the "
                    "backstops are synced after one is provisioned")
    needed = stats_needed(metric, len(ids))
    if needed > MAX_METRIC_STATS:
        per = len(ALARM_METRICS[metric])
        return [], (f"no CloudWatch alarm: this limit needs {needed} metrics ({len(ids)} inference "
                    f"profiles x {per}) and an alarm sums at most {MAX_METRIC_STATS}; alarms split by "
                    "profile would each see only part of the total, so the bot's own evaluation "
                    "enforces this limit")
    return [build_alarm(limit_id, ids, metric, amount, window, topic_arn, subject=subject)], None


_COMPARED = ("AlarmDescription", "ActionsEnabled", "AlarmActions", "OKActions", "EvaluationPeriods",
             "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData")


def alarm_matches(current: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Is the alarm DescribeAlarms returned already what `spec` would put? (Tags aside: PutMetricAlarm
    ignores them on update.)"""
    if any(current.get(k) != spec.get(k) for k in _COMPARED):
        return False
    return [_query(q) for q in current.get("Metrics") or []] == [_query(q) for q in spec["Metrics"]]


def _query(q: dict[str, Any]) -> tuple[Any, ...]:
    ms = q.get("MetricStat")
    stat = None
    if ms:
        metric = ms.get("Metric", {})
        dims = tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions", [])))
        stat = (metric.get("Namespace"), metric.get("MetricName"), dims, ms.get("Period"), ms.get("Stat"))
    return (q.get("Id"), q.get("Expression"), q.get("Label"), q.get("ReturnData", True), stat)


# ---------------------------------------------------------------- adapter


class Alarms:
    """PutMetricAlarm / DeleteAlarms / DescribeAlarms for the bot's own alarms."""

    def __init__(self, cw_client: Any) -> None:
        self._cw = cw_client

    def put(self, spec: dict[str, Any]) -> None:
        """Create or replace the alarm (PutMetricAlarm overwrites; the alarm's state is kept)."""
        call("PutMetricAlarm", self._cw.put_metric_alarm, **spec)

    def delete(self, names: Iterable[str]) -> None:
        """Delete these alarms; a name that does not exist is not an error."""
        todo = sorted(set(names))
        for i in range(0, len(todo), DELETE_BATCH):
            batch = todo[i : i + DELETE_BATCH]
            try:
                self._cw.delete_alarms(AlarmNames=batch)
            except ClientError as exc:
                if _code(exc) != "ResourceNotFound":
                    raise aws_error("DeleteAlarms", exc) from exc
                for name in batch:  # one unknown name fails the whole call: retry one by one
                    self._delete_one(name)
            except BotoCoreError as exc:
                raise aws_error("DeleteAlarms", exc) from exc

    def list_ours(self, prefix: str = PREFIX) -> list[str]:
        """Names of metric alarms starting with `prefix` that `parse_alarm_name` accepts, sorted."""
        return sorted(self._describe_prefix(prefix))

    def for_limit(self, limit_id: int) -> dict[str, dict[str, Any]]:
        """This limit's alarms (every part), by name, as DescribeAlarms gives them. The prefix
        alone would also match limit 12 for limit 1, so names are parsed."""
        return {name: alarm for name, alarm in self._describe_prefix(alarm_name(limit_id)).items()
                if (parsed := parse_alarm_name(name)) is not None and parsed[0] == limit_id}

    def names_for(self, limit_id: int) -> list[str]:
        return sorted(self.for_limit(limit_id))

    def describe(self, name: str) -> dict[str, Any] | None:
        page: dict[str, Any] = call("DescribeAlarms", self._cw.describe_alarms, AlarmNames=[name])
        alarms = page.get("MetricAlarms", [])
        return dict(alarms[0]) if alarms else None

    def _describe_prefix(self, prefix: str) -> dict[str, dict[str, Any]]:
        request: dict[str, Any] = {"AlarmNamePrefix": prefix, "AlarmTypes": ["MetricAlarm"]}
        found: dict[str, dict[str, Any]] = {}
        while True:
            page: dict[str, Any] = call("DescribeAlarms", self._cw.describe_alarms, **request)
            for alarm in page.get("MetricAlarms", []):
                name = alarm.get("AlarmName", "")
                if parse_alarm_name(name) is not None:
                    found[name] = dict(alarm)
            token = page.get("NextToken")
            if not token:
                return found
            request = {**request, "NextToken": token}

    def _delete_one(self, name: str) -> None:
        try:
            self._cw.delete_alarms(AlarmNames=[name])
        except ClientError as exc:
            if _code(exc) != "ResourceNotFound":
                raise aws_error("DeleteAlarms", exc) from exc
        except BotoCoreError as exc:
            raise aws_error("DeleteAlarms", exc) from exc



def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
