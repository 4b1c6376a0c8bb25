"""Adaptive polling (no usage stream): breach → deny for subjects consuming at the model's account
TPM quota, and the GetMetricData metrics the real planner requests per active user-hour.

Part 1 runs the bot's own `usage_sync` job (sync, then enforce) against moto's CloudWatch and IAM
with a simulated clock, once with BOT_SYNC_ADAPTIVE on and once off (the baseline, same run). Each
subject starts with part of its monthly limit used (so it starts "far" and is read every
BOT_SYNC_IDLE_SECONDS), then consumes at BOT_DEFAULT_TPM tokens a minute — the fastest the account
allows — until the bot denies it. Delay = (first tick the deny is in IAM − breach instant) + the
bot's wall time for that tick. CloudWatch's own publishing delay (~1 min) is outside the bot and
is not in the figures.

Part 2 (`metrics_per_user_hour`, also used by bench_bot_cost.py) seeds a population — a share
without a personal limit, the rest with a monthly token limit and usage spread uniformly below
it — makes every profile active in CloudWatch (moto), runs the real sync every BOT_SYNC_SECONDS
for a simulated hour and counts the GetMetricData metrics requested (CloudWatch's billing unit).

    .venv/bin/python bench/bench_adaptive_polling.py [--subjects 20] [--users 200] [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for _key, _value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
    os.environ.setdefault(_key, _value)

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from bench.common import load_average, machine, percentile, table, verdict  # noqa: E402
from bot.aws.metrics import CloudWatchMetrics  # noqa: E402
from bot.clock import FixedClock  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.db import Database  # noqa: E402
from bot.flows.profiles import provision  # noqa: E402
from bot.flows.usage_sync import sync_usage  # noqa: E402
from bot.migrate import upgrade  # noqa: E402
from bot.models import Limit, Meter, Profile, Subject, Usage  # noqa: E402
from bot.pricing import PriceTable  # noqa: E402
from bot.quantities import Amount, Metric, Window, parse_amount  # noqa: E402
from bot.runtime import build_services  # noqa: E402
from bot.services import directory, limits  # noqa: E402
from bot.services.directory import Actor, SubjectRef  # noqa: E402
from bot.services.poll_cadence import Cadence  # noqa: E402
from jobs import usage_sync  # noqa: E402

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ACCOUNT = "123456789012"
START = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
TPM = 2_000_000  # BOT_DEFAULT_TPM's default: the fastest plausible rate for one model


# ---- part 1: breach → deny at the TPM quota -----------------------------------------------------


@dataclass(frozen=True)
class BreachRun:
    delays: list[float]
    walls: list[float]
    metrics_requested: int
    ticks: int


def breach_run(subjects: int, adaptive: bool, sync_seconds: int, limit: int, seed: int) -> BreachRun:
    rng = random.Random(seed)
    clock = FixedClock(START)
    workdir = tempfile.mkdtemp(prefix="bench-adaptive-")
    settings = load_settings(None, DATABASE_URL=f"sqlite:///{workdir}/b.db", BOT_PROFILES_BACKEND="local",
                             BOT_SYNC_SECONDS=str(sync_seconds), BOT_DEFAULT_TPM=str(TPM),
                             BOT_SYNC_ADAPTIVE="true" if adaptive else "false")
    upgrade(settings.db.url)
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        s = build_services(settings, clock=clock, iam=iam, cloudwatch=cw, account_id=ACCOUNT)
        actor, plan = Actor.system("bench"), []
        for i in range(subjects):
            name = f"user{i:03d}"
            iam.create_user(UserName=name)
            ref = SubjectRef(name=name)
            pid = provision(s, actor, ref, MODEL, {}).profile_id
            with s.db.session_scope() as session:
                directory.link_principal(session, clock, actor, ref, f"arn:aws:iam::{ACCOUNT}:user/{name}")
                limits.set_limit(session, clock, actor, ref, Amount(limit, False), Window.MONTH,
                                 Metric.TOKENS, (80, 90), "revoke", False)
            # 5 to 60 minutes of full-speed use left; starts consuming in the first 10 minutes
            left = rng.uniform(5, 60) * TPM
            begin = START + timedelta(seconds=rng.uniform(0, 600))
            put(cw, pid, START - timedelta(hours=3), int(limit - left))
            plan.append((name, pid, begin, begin + timedelta(minutes=left / TPM)))
        usage_sync.run(s)  # first sight: backfill (the used part of the limit)
        s.metrics.metrics_requested = 0
        delays: dict[str, float] = {}
        walls, tick, ticks = [], START, 0
        last_breach = max(b for *_, b in plan)
        while len(delays) < subjects and tick < last_breach + timedelta(minutes=10):
            prev, tick = tick, tick + timedelta(seconds=sync_seconds)
            for name, pid, begin, _ in plan:
                lo = max(prev, begin)
                if name not in delays and tick > lo:  # consuming at the quota until denied
                    put(cw, pid, tick - timedelta(seconds=1), int(TPM * (tick - lo).total_seconds() / 60))
            clock.at = tick
            t0 = time.perf_counter()
            usage_sync.run(s)
            wall = time.perf_counter() - t0
            walls.append(wall)
            ticks += 1
            for name, _, _, breach in plan:
                if name not in delays and iam.list_user_policies(UserName=name)["PolicyNames"]:
                    if tick < breach:
                        raise SystemExit(f"{name} denied at {tick} before its breach at {breach}")
                    delays[name] = (tick - breach).total_seconds() + wall
        if len(delays) < subjects:
            raise SystemExit(f"only {len(delays)} of {subjects} subjects were denied")
        return BreachRun(sorted(delays.values()), walls, s.metrics.metrics_requested, ticks)


def put(cw: Any, pid: str, at: datetime, tokens: int) -> None:
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
        {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at,
         "Value": value, "Unit": "Count"}
        for name, value in (("InputTokenCount", tokens), ("OutputTokenCount", 0), ("Invocations", 1))])


def breach_table(subjects: int, sync_seconds: int, limit: int, seed: int) -> tuple[str, bool]:
    target = sync_seconds + 5  # bench_breach_to_deny's target: one sync period and the bot's work
    rows, ok = [], True
    for label, adaptive in (("adaptive polling", True), ("every profile every sync (baseline)", False)):
        r = breach_run(subjects, adaptive, sync_seconds, limit, seed)
        p50, p90, worst = percentile(r.delays, 0.5), percentile(r.delays, 0.9), r.delays[-1]
        passed = worst <= target
        ok &= passed if adaptive else True
        rows.append([label, f"{target} s", f"{p50:.1f} s", f"{p90:.1f} s", f"{worst:.1f} s",
                     f"{max(r.walls):.2f} s", f"{r.metrics_requested:,}", str(r.ticks),
                     verdict(passed)])
    header = ["mode", "target (max)", "p50", "p90", "max", "bot wall per tick (max)",
              "GetMetricData metrics requested", "ticks", "result"]
    return table(header, rows), ok


# ---- part 2: metrics requested per active user-hour, from the real planner ---------------------


@dataclass(frozen=True)
class Population:
    users: int = 200
    unlimited_share: float = 0.2  # no personal limit: read every BOT_SYNC_IDLE_SECONDS
    monthly_limit: int = 300_000_000  # tokens, for the others; usage uniform in [0, limit)
    sync_seconds: int = 60
    idle_seconds: int = 900
    tpm: int = TPM


def metrics_per_user_hour(pop: Population, adaptive: bool, seed: int = 11) -> float:
    """GetMetricData metrics the sync requests per active user per hour (every profile active)."""
    rng = random.Random(seed)
    workdir = tempfile.mkdtemp(prefix="bench-adaptive-pop-")
    url = f"sqlite:///{workdir}/p.db"
    upgrade(url)
    db = Database(url)
    now = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
    prices = PriceTable.load()
    cadence = Cadence(pop.sync_seconds, pop.idle_seconds, 60, pop.tpm, {}, prices=prices) \
        if adaptive else None
    with mock_aws():
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        pids = _seed_population(db, pop, rng, now)
        metrics = CloudWatchMetrics(cw)
        clock = FixedClock(now)
        ticks = 3600 // pop.sync_seconds
        for k in range(ticks + 1):
            clock.at = now + timedelta(seconds=k * pop.sync_seconds)
            if k == 0:  # every profile active: listed by ListMetrics (PT3H) all hour
                _put_all(cw, pids, clock.at - timedelta(seconds=1))
            if k == 1:
                metrics.metrics_requested = 0  # the first sync reads everyone: not steady state
            sync_usage(db, clock, metrics, None, prices, discover=False, cadence=cadence)
        requested = metrics.metrics_requested
    db.dispose()
    return requested / pop.users * 3600 / (ticks * pop.sync_seconds)


def _seed_population(db: Database, pop: Population, rng: random.Random, now: datetime) -> list[str]:
    pids = []
    with db.session_scope() as s:
        for i in range(pop.users):
            sub = Subject(kind="user", name=f"u{i:05d}", created_by="bench", created_at=now)
            s.add(sub)
            s.flush()
            pid = f"p{i:011d}"
            pids.append(pid)
            meter = Meter(kind="profile", key=pid, subject_id=sub.id, created_at=now)
            s.add_all([Profile(arn=f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/{pid}",
                               profile_id=pid, name=f"u{i}", model_source=MODEL, model_id=MODEL, tags={},
                               subject_id=sub.id, created_by="bench", created_at=now - timedelta(days=30),
                               backfilled_at=now - timedelta(days=30)), meter])
            s.flush()
            if rng.random() >= pop.unlimited_share:
                s.add(Limit(subject_id=sub.id, metric="tokens", amount=pop.monthly_limit, window="month",
                            warn=[80, 90], action="revoke", created_by="bench", created_at=now,
                            updated_at=now))
                s.add(Usage(meter_id=meter.id, hour=now - timedelta(days=5),
                            input_tokens=int(rng.uniform(0, pop.monthly_limit)), output_tokens=0,
                            cache_read_tokens=0, cache_write_tokens=0, requests=1, cost_micro_usd=0,
                            unpriced_tokens=0, unpriced_requests=0, updated_at=now))
    return pids


def _put_all(cw: Any, pids: list[str], at: datetime) -> None:
    names = ("InputTokenCount", "OutputTokenCount", "Invocations")
    data = [{"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at,
             "Value": 10.0} for pid in pids for name in names]
    for i in range(0, len(data), 1000):
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=data[i:i + 1000])


def population_table(pop: Population) -> tuple[str, float, float]:
    every = metrics_per_user_hour(pop, adaptive=False)
    adaptive = metrics_per_user_hour(pop, adaptive=True)
    rows = [["every profile every sync (baseline)", f"{every:,.1f}", "1.00"],
            ["adaptive polling", f"{adaptive:,.1f}", f"{adaptive / every:.2f}"]]
    return table(["mode", "metrics requested / active user-hour", "vs baseline"], rows), every, adaptive


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--sync-seconds", type=int, default=60)
    ap.add_argument("--limit", default="500M", help="monthly token limit of each breaching subject")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(machine())
    print(f"load average before: {load_average()}")
    subjects = 5 if args.quick else args.subjects
    print(f"\n## Breach → deny under adaptive polling ({subjects} subjects at {TPM:,} tokens/min, "
          f"BOT_SYNC_SECONDS={args.sync_seconds}, BOT_SYNC_IDLE_SECONDS=900)\n")
    text, ok = breach_table(subjects, args.sync_seconds, parse_amount(args.limit).value, args.seed)
    print(text)
    pop = Population(users=50 if args.quick else args.users, sync_seconds=args.sync_seconds)
    print("\n## GetMetricData metrics requested, real planner + moto, one simulated hour\n\n"
          f"population: {pop}\n")
    print(population_table(pop)[0])
    print(f"\nload average after: {load_average()}")
    print("note: CloudWatch publishes Bedrock metrics about a minute after the calls; add it to every "
          "breach → deny figure for the time from the first token over the limit.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
