"""bedrock-mantle usage per Project, per model, per hour, from CloudWatch `AWS/BedrockMantle`.

AWS publishes mantle metrics at four levels (Account, Project, Model, Project+Model); the
Project+Model level carries `InputTokens`, `OutputTokens` (per inference, so their Sum is the
hour's tokens) and `Inferences`, with the dimensions `Project` (the project id) and `Model`
(docs/usage-sync.md cites the page). Only that level is read: a call is counted once, and each
model is priced on its own. AWS publishes no prompt-cache metric for mantle.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.aws.metrics import PERIOD_SECONDS, CloudWatchMetrics, ceil_hour, floor_hour

NAMESPACE = "AWS/BedrockMantle"
PROJECT, MODEL = "Project", "Model"
# metric -> MantleUsage field
_FIELD = {"InputTokens": "input_tokens", "OutputTokens": "output_tokens", "Inferences": "inferences"}
METRICS = tuple(_FIELD)
MAX_QUERIES = CloudWatchMetrics.MAX_QUERIES
# The project ids AWS shows look like `proj_abc123` (the IAM examples' project ARN
# `arn:aws:bedrock-mantle:<region>:<account>:project/proj_abc123`); the bot accepts that prefix
# and letters, digits, `_` and `-` after it, up to 64 characters in all.
PROJECT_ID = re.compile(r"proj_[A-Za-z0-9_-]{1,59}", re.ASCII)
PROJECT_ARN = re.compile(r"arn:aws[a-z-]*:bedrock-mantle:[a-z0-9-]+:\d{12}:project/(?P<id>[^/\s]+)",
                         re.ASCII)


def parse_project(raw: str) -> str:
    """A project id from `proj_…` or a project ARN; ValueError with the reason otherwise."""
    text = raw.strip()
    arn = PROJECT_ARN.fullmatch(text)
    project = arn.group("id") if arn else text
    if not PROJECT_ID.fullmatch(project):
        raise ValueError(f"{text[:80]!r} is not a bedrock-mantle project id (proj_… or "
                         "arn:aws:bedrock-mantle:<region>:<account>:project/proj_…)")
    return project


@dataclass(frozen=True)
class MantleUsage:
    project: str
    model: str
    hour: datetime
    input_tokens: int = 0
    output_tokens: int = 0
    inferences: int = 0


def listed_series(metrics: CloudWatchMetrics, projects: Sequence[str],
                  recently_active: bool) -> list[tuple[str, str, str]]:
    """(project, model, metric) for each Project+Model usage metric ListMetrics lists for
    `projects` (no dimension filter is sent: one call pages through the namespace)."""
    wanted = set(projects)
    found: set[tuple[str, str, str]] = set()
    for metric in metrics.list_metrics(NAMESPACE, recently_active):
        dims = {d.get("Name"): d.get("Value") for d in metric.get("Dimensions") or []}
        name = metric.get("MetricName")
        if set(dims) == {PROJECT, MODEL} and dims[PROJECT] in wanted and dims[MODEL] \
                and name in _FIELD:
            found.add((str(dims[PROJECT]), str(dims[MODEL]), str(name)))
    return sorted(found)


def hourly(metrics: CloudWatchMetrics, series: Sequence[tuple[str, str, str]], start: datetime,
           end: datetime) -> list[MantleUsage]:
    """Hourly sums of `series` for the hours in [start, end): one row per (project, model, hour)
    with data. Batches of at most 500 queries; a window this short is one time chunk."""
    first, stop = floor_hour(start), ceil_hour(end)
    if stop <= first:
        raise ValueError("end must be after start")
    totals: defaultdict[tuple[str, str, datetime], dict[str, float]] = defaultdict(
        lambda: defaultdict(float))
    for i in range(0, len(series), MAX_QUERIES):
        batch = {f"m{j}": s for j, s in enumerate(series[i:i + MAX_QUERIES])}
        metrics.read_queries([_query(qid, *s) for qid, s in batch.items()], first, stop,
                             _adder(batch, totals), _namer(batch))
    return [MantleUsage(p, m, h, **{_FIELD[k]: round(v) for k, v in sums.items()})
            for (p, m, h), sums in sorted(totals.items())]


def _adder(batch: Mapping[str, tuple[str, str, str]],
           totals: defaultdict[tuple[str, str, datetime], dict[str, float]]
           ) -> Callable[[str, datetime, float], None]:
    def add(qid: str, hour: datetime, value: float) -> None:
        project, model, metric = batch[qid]
        totals[(project, model, hour)][metric] += value
    return add


def _namer(batch: Mapping[str, tuple[str, str, str]]) -> Callable[[str], tuple[str, str]]:
    def name_of(qid: str) -> tuple[str, str]:
        return batch[qid][0], batch[qid][2]
    return name_of


def _query(qid: str, project: str, model: str, metric: str) -> dict[str, Any]:
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {"Namespace": NAMESPACE, "MetricName": metric,
                       "Dimensions": [{"Name": PROJECT, "Value": project},
                                      {"Name": MODEL, "Value": model}]},
            "Period": PERIOD_SECONDS,
            "Stat": "Sum",
        },
        "ReturnData": True,
    }
