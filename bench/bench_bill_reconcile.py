"""The daily bill reconciliation at 1k / 10k subjects: Cost Explorer requests (and their bill) and
the bot's side of `reconcile_bills` (estimates, stores, comparisons), on SQLite and PostgreSQL.

Cost Explorer is a fake that answers the request the bot really sends (checked against botocore's
model) with one group per subject and day, 1,000 groups a page (the real page size is AWS's to
choose; the figure that matters is requests × $0.01). Every 10th subject is billed 25% above its
estimate, so divergences are found and rendered. Baseline: the same estimates read one subject at a
time (`billing.estimate` per subject and day) instead of one grouped query per day; at full size
the baseline is timed over a tenth of the subjects and scaled (marked "≈").

    .venv/bin/python bench/bench_bill_reconcile.py [--db both|sqlite|postgres] [--subjects 10000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import botocore.session
from botocore.validate import validate_parameters
from sqlalchemy import select

from bench.common import Figures, databases, machine, seed, table, verdict
from bot.aws.cost_explorer import CostExplorer
from bot.clock import FixedClock
from bot.db import Database
from bot.flows.bill_reconcile import LOOKBACK_DAYS, reconcile_bills
from bot.models import Subject
from bot.render.billing import divergence_alert
from bot.services import billing
from bot.services.billing import DAY

NOW = datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
TARGET_S = 5.0  # the bot's side at 10k subjects (same budget as one usage sync)
PAGE = 1_000
USD_PER_REQUEST = 0.01


class FakeCostExplorer:
    """Bills each subject its estimate (×1.25 for every 10th) per tag, paginated."""

    def __init__(self, groups: dict[str, dict[date, list[tuple[str, int]]]]) -> None:
        self.groups = groups  # tag key -> day -> [(value, micro-usd)]
        self.model = botocore.session.get_session().get_service_model("ce")
        self.seconds = 0.0
        self.requests = 0

    def get_cost_and_usage(self, **request: Any) -> dict[str, Any]:
        began = time.perf_counter()
        shape = self.model.operation_model("GetCostAndUsage").input_shape
        assert shape is not None
        validate_parameters(request, shape)
        self.requests += 1
        key = request["GroupBy"][1]["Key"]
        rows = [(d, v, a) for d, items in sorted(self.groups[key].items()) for v, a in items]
        offset = int(request.get("NextPageToken", 0))
        page = rows[offset:offset + PAGE]
        by_day: dict[date, list[dict[str, Any]]] = defaultdict(list)
        for d, v, a in page:
            by_day[d].append({"Keys": ["Amazon Bedrock", f"{key}${v}"],
                              "Metrics": {"UnblendedCost": {"Amount": f"{a / 1e6:.6f}", "Unit": "USD"}}})
        response: dict[str, Any] = {"ResultsByTime": [
            {"TimePeriod": {"Start": d.isoformat(), "End": (d + DAY).isoformat()}, "Total": {},
             "Groups": g, "Estimated": False} for d, g in sorted(by_day.items())]}
        if offset + PAGE < len(rows):
            response["NextPageToken"] = str(offset + PAGE)
        self.seconds += time.perf_counter() - began
        return response


def bills(db: Database, days: list[date]) -> dict[str, dict[date, list[tuple[str, int]]]]:
    out: dict[str, dict[date, list[tuple[str, int]]]] = {"user": defaultdict(list), "team": defaultdict(list)}
    with db.session_scope() as s:
        kinds = dict(s.execute(select(Subject.id, Subject.kind)).tuples().all())
        names = dict(s.execute(select(Subject.id, Subject.name)).tuples().all())
        for day in days:
            for sid, est in billing.estimates_by_subject(s, ("profile",), day).items():
                amount = est.micro_usd * 5 // 4 if sid % 10 == 0 else est.micro_usd
                out[kinds[sid]][day].append((names[sid], amount))
    return out


def baseline_seconds(db: Database, days: list[date], share: int) -> float:
    """Per-subject estimates (one query per subject and day) over 1/share of the subjects."""
    with db.session_scope() as s:
        ids = [i for i in s.scalars(select(Subject.id).order_by(Subject.id)) if i % share == 0]
        began = time.perf_counter()
        for day in days:
            for sid in ids:
                billing.estimate(s, [sid], ("profile",), day)
        return (time.perf_counter() - began) * share


def run(url: str, name: str, subjects: int) -> list[str]:
    seeded = seed(url, subjects=subjects, days=LOOKBACK_DAYS + 1, now=NOW)
    db = Database(url)
    clock = FixedClock(NOW)
    days = billing.closed_days(NOW, LOOKBACK_DAYS)
    fake = FakeCostExplorer(bills(db, days))
    ce = CostExplorer(fake)
    began = time.perf_counter()
    report = reconcile_bills(db, clock, ce, threshold_pct=10.0)
    bot_side = time.perf_counter() - began - fake.seconds
    alert = divergence_alert(report.divergences, 10.0) or ""
    share = 1 if subjects <= 1_000 else 10
    base = baseline_seconds(db, days, share)
    db.dispose()
    per_month = fake.requests * 30 * USD_PER_REQUEST
    return [name, f"{seeded.subjects:,}", f"{report.stored:,}", f"{len(report.divergences):,}",
            f"{fake.requests}", f"${per_month:.2f}", f"{bot_side:.2f} s",
            ("≈" if share > 1 else "") + f"{base:.2f} s", f"{base / bot_side:.1f}x",
            f"{len(alert):,} chars", verdict(subjects < 10_000 or bot_side < TARGET_S)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="both", choices=("both", "sqlite", "postgres"))
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [200] if args.quick else sorted({1_000, args.subjects})
    print(machine())
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as work:
        for size in sizes:
            for ctx in databases(args.db, work, "bench_bill"):
                with ctx as bdb:
                    row = run(bdb.url, bdb.name, size)
                    ok = ok and row[-1].startswith("pass")
                    rows.append(row)
    print(table(["database", "subjects", "bills stored (3 d)", "divergent", "CE requests / day",
                 "CE $ / month", "bot side", "per-subject baseline", "vs baseline", "alert text",
                 f"< {TARGET_S:g} s at 10k"], rows))
    report = Figures()
    for row in rows:
        at_10k = row[1] == f"{10_000:,}"  # the target is the 10k size's; smaller sizes are info
        report.add(f"{row[0]}, bill reconcile bot side, {row[1]} subjects", f"{row[6]} (baseline {row[7]})",
                   f"< {TARGET_S:g} s" if at_10k else "", row[-1].startswith("pass") if at_10k else None)
    code = report.emit()
    return code if ok else 1


if __name__ == "__main__":
    sys.exit(main())
