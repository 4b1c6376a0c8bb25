"""SNS notifications verified and stored per second in one process, on SQLite and PostgreSQL.

Target (issue 19): ≥ 1,000 notifications/s per process, verified + stored, with deliveries arriving
concurrently (`--threads`, 8 by default; `serve` answers with 16 threads). One delivery at a time
is shown without a target: each is then its own commit, and a commit waits for the WAL flush,
which the bench measures too (`commit (WAL flush)`) — its inverse is the one-at-a-time ceiling.

What `/sns` runs for each body, called in-process: `handlers.sns.SnsEndpoint(services,
services.sns_verifier())` — signature check (RSA-2048, pinned certificate, cached after the first
message), topic allow-list, age; then the message is claimed in `sns_messages` (dedupe), its
outcome recorded and an audit event appended (hash chain), committed. The messages need no IAM:
an unrecognised body (posted as-is) and a CloudWatch alarm that is not the bot's (`posted`); then
every message delivered a second time (`duplicate`: 200, nothing changed). No alert channel is
configured, so nothing is sent to Slack. Bodies are signed once, before any clock starts.

Before and after in one run: the parent makes a git worktree of `--baseline` (default aaaad90,
the last commit before issue 19's SNS change: 9 statements in one transaction per message, one
transaction per delivery) and runs this file as a child per variant and round, alternating
(before, after, before, …), with PYTHONPATH=<that tree> or <this repo> (the working tree as it
is). Each child measures one round on fresh databases and checks that sns_messages holds every
message once and that the audit chain verifies. `--baseline none` measures the working tree only.

    .venv/bin/python bench/bench_sns_throughput.py [--db both|sqlite|postgres] [-n 1000]
        [--threads 8] [--rounds 3] [--baseline REV|none] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if "--child" not in sys.argv:  # a child imports everything from the tree it measures
    sys.path.insert(0, str(ROOT))

TARGET_PER_S = 1000.0
BASELINE = "aaaad90"
TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alarms"
UNRECOGNISED = "Deployment of bedrock-gateway finished: 3 tasks healthy."
FOREIGN_ALARM = json.dumps({
    "AlarmName": "payments-api-5xx", "AlarmDescription": None, "AWSAccountId": "123456789012",
    "NewStateValue": "ALARM", "NewStateReason": "Threshold Crossed: 1 datapoint [12.0] was greater than 5.0.",
    "StateChangeTime": "2026-11-25T10:29:41.123+0000", "Region": "US East (N. Virginia)",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:payments-api-5xx", "OldStateValue": "OK",
    "Trigger": {"MetricName": "5XXError", "Namespace": "AWS/ApiGateway", "Statistic": "SUM",
                "Dimensions": [{"name": "ApiName", "value": "payments"}], "Period": 60,
                "EvaluationPeriods": 1, "Threshold": 5.0, "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "missing"},
})
KINDS = {"unrecognised message": ("unrecognised", UNRECOGNISED, None),
         "foreign CloudWatch alarm": ("posted", FOREIGN_ALARM, 'ALARM: "payments-api-5xx"')}
_SCRUB = ("DATABASE_URL", "AWS_ENDPOINT_URL", "SLACK_", "BOT_")


# ---- the child: one variant, one round -----------------------------------------------------


def timed(name: str, bodies: list[bytes], work: Callable[[bytes], tuple[int, str]], threads: int,
          expect: str) -> float:
    from concurrent.futures import ThreadPoolExecutor

    began = time.perf_counter()
    if threads == 1:
        answers = [work(b) for b in bodies]
    else:
        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(work, bodies))
    seconds = time.perf_counter() - began
    wrong = [a for a in answers if a != (200, expect)]
    if wrong:
        raise SystemExit(f"{name}: expected (200, {expect!r}), got {wrong[:3]} …")
    return len(bodies) / seconds


def run_db(db: Any, certs: str, kinds: dict[str, tuple[str, list[bytes]]], threads: int) -> dict[str, float]:
    """One round on one database: {figure: messages/s}, plus verification alone."""
    from sqlalchemy import func, select

    from bot.config import load_settings
    from bot.migrate import upgrade
    from bot.models import SnsMessage
    from bot.runtime import build_services
    from bot.services import audit
    from handlers.sns import SnsEndpoint

    upgrade(db.url)
    settings = load_settings(None, DATABASE_URL=db.url, BOT_PROFILES_BACKEND="local",
                             BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=certs)
    services = build_services(settings, account_id="123456789012")
    endpoint = SnsEndpoint(services, services.sns_verifier())
    rates: dict[str, float] = {}
    try:
        warm = kinds["unrecognised message"][1][-1]  # signed, never measured: loads the certificate
        assert endpoint(warm) == (200, "unrecognised")
        every: list[bytes] = []
        for label, (outcome, bodies) in kinds.items():
            half = (len(bodies) - 1) // 2
            for t, batch in ((1, bodies[:half]), (threads, bodies[half:2 * half])):
                name = f"{label}, {t} thread{'s' if t > 1 else ''}"
                rates[name] = timed(name, batch, endpoint, t, outcome)
                every += batch
        rates[f"redelivered (duplicate), {threads} threads"] = timed("duplicate", every, endpoint, threads,
                                                                     "duplicate")
        with services.db.session_scope() as session:
            stored = session.scalar(select(func.count()).select_from(SnsMessage))
            chain = audit.verify(session)
        assert stored == len(every) + 1, (stored, len(every))
        assert chain.ok, chain.reason
        began = time.perf_counter()
        for b in every:
            endpoint.verifier.verify(b)
        rates["verification alone, 1 thread"] = len(every) / (time.perf_counter() - began)
    finally:
        services.db.dispose()
    return rates


def child(args: argparse.Namespace) -> int:
    import bot
    import handlers

    for mod in (bot, handlers):
        where = Path(str(mod.__file__)).resolve()
        if not where.is_relative_to(Path(args.tree).resolve()):
            sys.exit(f"{mod.__name__} was imported from {where}, not from {args.tree}: aborting")
    from bench.common import databases

    data = json.loads(Path(args.bodies).read_text())
    kinds = {label: (outcome, [b.encode() for b in bodies]) for label, (outcome, bodies) in data.items()}
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sns-") as tmp:
        for ctx in databases(args.db, tmp, "bench_sns"):
            with ctx as db:
                out |= {f"{db.name}: {k}": v for k, v in run_db(db, args.certs, kinds, args.threads).items()}
    Path(args.out).write_text(json.dumps(out))
    return 0


# ---- the parent ----------------------------------------------------------------------------


def sign_bodies(n: int, path: Path, certs: Path) -> None:
    """The bodies, signed with the test key whose certificate goes to `certs` (pinned there)."""
    from tests.fakes.sns_signing import make_notification, write_cert

    certs.mkdir()
    write_cert(certs)

    data = {label: (outcome, [json.dumps(make_notification(message, TOPIC, subject=subject,
                                                           version="2")) for _ in range(n + 1)])
            for label, (outcome, message, subject) in KINDS.items()}
    path.write_text(json.dumps(data))


def run_child(args: argparse.Namespace, variant: str, tree: Path, bodies: Path,
              out: Path) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--tree", str(tree),
           "--bodies", str(bodies), "--certs", str(bodies.parent / "certs"), "--out", str(out),
           "--db", args.db, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), check=False)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{variant} ({tree}) failed: exit {proc.returncode}")
    result: dict[str, float] = json.loads(out.read_text())
    out.unlink()
    return result


def commit_ms() -> float | None:
    """One single-row INSERT + COMMIT on PostgreSQL (a real table: the WAL is flushed), median ms."""
    from sqlalchemy import text

    from bench.common import postgres_available, postgres_db
    from bot.db import make_engine

    if not postgres_available():
        return None
    with postgres_db("bench_sns_commit") as db:
        eng = make_engine(db.url)
        with eng.begin() as c:
            c.execute(text("CREATE TABLE t (x int)"))
        times = []
        with eng.connect() as c:
            for i in range(200):
                began = time.perf_counter()
                c.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
                c.commit()
                times.append(time.perf_counter() - began)
        eng.dispose()
    return statistics.median(times) * 1000


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    from bench.common import Figures, git_revision, load_average, machine, table

    n = 200 if args.quick else args.n
    rounds = 1 if args.quick else args.rounds
    print(f"machine: {machine()}; after = working tree ({git_revision()}), before = {args.baseline}")
    variants: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sns-") as tmp:
        bodies = Path(tmp) / "bodies.json"
        began = time.perf_counter()
        sign_bodies(n, bodies, Path(tmp) / "certs")
        print(f"signed {2 * (n + 1):,} notifications (SignatureVersion 2, RSA-2048) in "
              f"{time.perf_counter() - began:.1f} s; every round and variant gets the same bodies, "
              "on fresh databases\n", flush=True)
        trees = {"after": ROOT}
        if args.baseline != "none":
            trees = {"before": Path(tmp) / "baseline", **trees}
            made = subprocess.run(["git", "worktree", "add", "--detach", str(trees["before"]), args.baseline],
                                  cwd=ROOT, check=False, capture_output=True, text=True)
            if made.returncode != 0:
                print(f"cannot check out {args.baseline}: {made.stderr.strip()}", file=sys.stderr)
                return 1
        try:
            for r in range(rounds):
                for variant, tree in trees.items():
                    print(f"  round {r + 1}/{rounds}: {variant} …", file=sys.stderr, flush=True)
                    variants.setdefault(variant, []).append(
                        run_child(args, variant, tree, bodies, Path(tmp) / "out.json"))
        finally:
            if "before" in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["before"])], cwd=ROOT,
                               check=False, capture_output=True)
    flush_ms = commit_ms()

    report = Figures()
    rows = []
    for name in variants["after"][0]:
        after = [r[name] for r in variants["after"]]
        before = [r[name] for r in variants.get("before", []) if name in r]
        rate = statistics.median(after)
        goal = "verification alone" not in name and " 1 thread" not in name
        met = rate >= TARGET_PER_S if goal else None
        target = f"≥ {TARGET_PER_S:,.0f}/s" if goal else "—"
        was = statistics.median(before) if before else None
        rows.append((name, str(len(after)), target, f"{rate:,.0f}/s",
                     f"{min(after):,.0f}–{max(after):,.0f}/s", f"{1000 / rate:.2f} ms",
                     f"{was:,.0f}/s" if was else "—", f"{rate / was:.2f}x" if was else "—",
                     "—" if met is None else ("pass" if met else "MISS")))
        report.add(name, f"{rate:,.0f}/s" + (f" (before {was:,.0f}/s)" if was else ""), target, met)
    print(table(("figure", "rounds", "target", "after (median)", "after range", "per message",
                 f"before ({args.baseline})", "after/before", "result"), rows))
    if flush_ms is not None:
        print(f"\nPostgreSQL commit (single-row INSERT + COMMIT, WAL flushed): {flush_ms:.2f} ms median → "
              f"one-at-a-time ceiling ≈ {1000 / flush_ms:,.0f} commits/s")
        report.add("PostgreSQL: commit (WAL flush), one-at-a-time ceiling",
                   f"{flush_ms:.2f} ms ({1000 / flush_ms:,.0f}/s)")
    print("\nverified + stored = 200 from SnsEndpoint: signature checked, MessageId claimed in sns_messages, "
          "outcome recorded, audit event appended, committed. Duplicates are verified too, then refused by "
          "the claim. After each round: sns_messages holds every message once and the audit chain verifies.")
    print(f"at the end: {load_average()}")
    return report.emit()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("-n", type=int, default=1000,
                    help="notifications per kind and round (half one at a time, half concurrently)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per variant; the median is reported")
    ap.add_argument("--threads", type=int, default=8, help="concurrent deliveries, as serve's threads would")
    ap.add_argument("--baseline", default=BASELINE, help="git revision measured as 'before'; none: skip")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 notifications per kind, 1 round")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--bodies", help=argparse.SUPPRESS)
    ap.add_argument("--certs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.n < 4 or args.rounds < 1 or args.threads < 2:
        ap.error("-n must be ≥ 4, --rounds ≥ 1, --threads ≥ 2")
    return args


if __name__ == "__main__":
    sys.exit(main())
