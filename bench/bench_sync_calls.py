"""CloudWatch calls and cost of one usage sync, against the target ceil(3 x profiles / 500).

Drives `CloudWatchMetrics.hourly` (and `active_model_ids`) with a fake CloudWatch that answers
realistic payloads: every profile active in the previous and the current hour, all three token
metrics published. Run from the repo root:  .venv/bin/python bench/bench_sync_calls.py [--quick]
(`--quick`: 100 and 1,000 profiles only).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from math import ceil
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figures
from bot.aws.metrics import TOKEN_METRICS, CloudWatchMetrics, floor_hour, sync_window
from bot.clock import FixedClock

PROFILES = (100, 1_000, 1_200, 10_000)
SYNC_SECONDS = 60
SYNCS_PER_MONTH = 30 * 24 * 3600 // SYNC_SECONDS  # 43,200 at one sync a minute
USD_PER_1K_METRICS = 0.01  # GetMetricData: per 1,000 metrics requested
USD_PER_1K_REQUESTS = 0.01  # GetMetricStatistics: per 1,000 requests (free tier ignored)
NOW = FixedClock(datetime(2025, 3, 14, 10, 37, tzinfo=UTC))


class FakeCloudWatch:
    """Answers like CloudWatch: hourly sums per query, ListMetrics pages of 500."""

    def __init__(self, profiles: int) -> None:
        self.ids = [f"p{i:011d}" for i in range(profiles)]
        self.seconds = 0.0  # time spent in here, subtracted from the adapter's time

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        began = time.perf_counter()
        start, end = request["StartTime"], request["EndTime"]
        hours = [start + timedelta(hours=h) for h in range((end - start) // timedelta(hours=1))]
        results = [
            {"Id": q["Id"], "Label": q["MetricStat"]["Metric"]["MetricName"],
             "Timestamps": hours, "Values": [float(1_000 + i) for i in range(len(hours))],
             "StatusCode": "Complete"}
            for q in request["MetricDataQueries"]
        ]
        self.seconds += time.perf_counter() - began
        return {"MetricDataResults": results, "Messages": []}

    def list_metrics(self, **request: Any) -> dict[str, Any]:
        began = time.perf_counter()
        offset = int(request.get("NextToken", 0))
        every = [(m, name) for m in self.ids for name in TOKEN_METRICS]
        page = every[offset:offset + 500]
        response: dict[str, Any] = {"Metrics": [
            {"Namespace": "AWS/Bedrock", "MetricName": name,
             "Dimensions": [{"Name": "ModelId", "Value": m}]} for m, name in page]}
        if offset + 500 < len(every):
            response["NextToken"] = str(offset + 500)
        self.seconds += time.perf_counter() - began
        return response


def run(profiles: int) -> dict[str, Any]:
    fake = FakeCloudWatch(profiles)
    metrics = CloudWatchMetrics(fake)
    began = time.perf_counter()
    active = metrics.active_model_ids()
    rows = metrics.hourly(active, *sync_window(NOW()))
    adapter_seconds = time.perf_counter() - began - fake.seconds
    assert len(rows) == 2 * profiles and rows[0].hour == floor_hour(NOW()) - timedelta(hours=1)
    queries = sum(len(names) for names in active.values())
    calls = metrics.calls["GetMetricData"]
    target = ceil(3 * profiles / 500)
    naive = 3 * profiles  # one GetMetricStatistics per metric per profile
    return {
        "profiles": profiles, "queries": queries, "calls": calls, "target": target,
        "verdict": "pass" if calls <= target else "MISS", "naive": naive,
        "ratio": naive / calls, "seconds": adapter_seconds,
        "bill": queries * SYNCS_PER_MONTH / 1_000 * USD_PER_1K_METRICS,
        "naive_bill": naive * SYNCS_PER_MONTH / 1_000 * USD_PER_1K_REQUESTS,
        "list_pages": metrics.calls["ListMetrics"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="100 and 1,000 profiles only")
    quick = ap.parse_args().quick
    header = ("profiles", "queries", "GMD calls", "target", "ok", "naive calls", "ratio",
              "adapter s", "GMD $/month", "naive $/month", "ListMetrics pages")
    widths = (8, 7, 9, 6, 4, 11, 6, 9, 12, 13, 17)
    print(f"one sync = previous + current hour, every {SYNC_SECONDS} s "
          f"({SYNCS_PER_MONTH:,} syncs / 30-day month)")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    results = [run(n) for n in (PROFILES[:2] if quick else PROFILES)]
    report = Figures()
    for r in results:
        cells = (f"{r['profiles']:,}", f"{r['queries']:,}", str(r["calls"]), str(r["target"]),
                 r["verdict"], f"{r['naive']:,}", f"{r['ratio']:.0f}x", f"{r['seconds']:.3f}",
                 f"{r['bill']:,.2f}", f"{r['naive_bill']:,.2f}", str(r["list_pages"]))
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
        report.add(f"GetMetricData calls per sync, {r['profiles']:,} profiles", str(r["calls"]),
                   f"≤ {r['target']}", r["verdict"] == "pass")
    print("GetMetricData bills per metric requested, GetMetricStatistics per request: one query "
          "per metric makes the two bills equal; batching saves calls, latency and throttling, "
          "not dollars. ListMetrics is free.")
    return report.emit()


if __name__ == "__main__":
    sys.exit(main())
