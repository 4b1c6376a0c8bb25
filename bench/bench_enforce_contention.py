"""Audited command latency while enforce revokes 200 subjects against a slow IAM, before vs after.

Issue 13: enforce used to run in one transaction and call IAM inside it; on PostgreSQL the audit
chain's advisory lock (taken at the first audit row) was then held across every following IAM
call, so every other audited command waited for the whole enforce run. Now enforce evaluates in
one short transaction and each revoke is plan (short tx) → IAM (no tx) → record (short tx), with
the audit rows chained at commit.

One run measures both. The parent makes a git worktree of the baseline revision (default
6b95e8f, the last commit before the change), then runs this file twice as a child with the same
interpreter: PYTHONPATH=<baseline worktree> ("before") and PYTHONPATH=<this repo> ("after": the
working tree as it is, uncommitted changes included). Each child checks that `bot`, `handlers`,
`jobs` and `migrations` were imported from its tree (the editable install points at the repo) and
uses only APIs both trees share.

Each child, in a private PostgreSQL schema:
- seeds `--subjects` users (default 200), each linked to its own IAM user (moto, in-process), with a
  1M tokens/day limit and 2M tokens in the current hour, so enforce revokes every one; plus one
  admin (BOT_ADMINS) and `--threads` subjects `bench-k` (no usage, 5M/day) for the commands (not the
  revoked subjects: raising their limit mid-run would rightly cancel their revocation);
- slows every IAM call by `--delay-ms` (botocore `before-send.iam` hook; a revoke makes two calls:
  ListUserPolicies, PutUserPolicy); no alarm topic, so no CloudWatch backstop is involved;
- idle: `--threads` threads each send `--idle-per-thread` `/bedrock limit bench-k 5M/day` | `6M/day`
  through `handlers.slash.answer` (each a real change with an audit row), timed one by one;
- contended: starts `jobs.enforce.run` in a thread and sends the same commands in a loop until it
  returns (or `--timeout` s; `--pause-ms` between commands, default none), timing every command
  started while it ran, including those that finish after it;
- checks: every seeded subject has an active revocation and its IAM user the deny policy, every
  command answered ✅, the audit chain verifies.

Exit 1 when a check fails or after's p99 latency during enforce is not at least `--min-ratio`
(default 5) times lower than before's. PostgreSQL only: the lock in question
is PostgreSQL's; without PostgreSQL the bench says so and exits 1.

    .venv/bin/python bench/bench_enforce_contention.py [--baseline REV] [--subjects 200]
        [--delay-ms 50] [--threads 4] [--pause-ms 0] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "6b95e8f"
PG_BASE = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
ADMIN_ID = "UBENCHADM1"
LIMIT_TOKENS = 1_000_000
USED_TOKENS = 2_000_000
AMOUNTS = ("5M", "6M")  # alternated, so every command changes the limit and writes an audit row
# Settings the child must not inherit from the caller's environment.
_SCRUB = ("DATABASE_URL", "AWS_ENDPOINT_URL", "SLACK_", "BOT_")


# ---- the parent ----------------------------------------------------------------------------


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(ROOT))
    from bench.common import git_revision, machine, postgres_available

    if not postgres_available():
        print(f"needs PostgreSQL (the advisory lock under test is PostgreSQL's); nothing answers at "
              f"{PG_BASE}", file=sys.stderr)
        return 1
    print(f"# enforce contention: {args.subjects} revokes, IAM +{args.delay_ms:g} ms/call, "
          f"{args.threads} command threads, {args.pause_ms:g} ms between commands; "
          f"before = {args.baseline}, after = working tree ({git_revision()})")
    print(f"# {machine()}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-enforce-") as tmp:
        tree = Path(tmp) / "baseline"
        made = subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline], cwd=ROOT,
                              check=False, capture_output=True, text=True)
        if made.returncode != 0:
            print(f"cannot check out {args.baseline}: {made.stderr.strip()}", file=sys.stderr)
            return 1
        try:
            for variant, path in (("before", tree), ("after", ROOT)):
                results[variant] = run_child(args, variant, path, Path(tmp) / f"{variant}.json")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False, capture_output=True)
    return report(args, results)


def run_child(args: argparse.Namespace, variant: str, tree: Path, out: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--tree", str(tree),
           "--out", str(out), "--subjects", str(args.subjects), "--delay-ms", str(args.delay_ms),
           "--threads", str(args.threads), "--idle-per-thread", str(args.idle_per_thread),
           "--timeout", str(args.timeout), "--pause-ms", str(args.pause_ms)]
    print(f"  running {variant} ({tree}) …", file=sys.stderr, flush=True)
    began = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), check=False)
    if proc.returncode != 0 or not out.exists():
        return {"variant": variant, "failed": f"child exited {proc.returncode}"}
    data: dict[str, Any] = json.loads(out.read_text())
    print(f"  {variant} done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return data


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> int:
    from bench.common import Figures, load_average, percentile, table, verdict

    out = Figures()

    def ms(v: float) -> str:
        return f"{v * 1000:,.0f} ms" if v == v else "—"

    rows, stats, problems = [], {}, []
    for variant in ("before", "after"):
        r = results[variant]
        if "failed" in r:
            problems.append(f"{variant}: {r['failed']}")
            rows.append([variant, *["—"] * 13])
            continue
        during, idle = sorted(r["during"]), sorted(r["idle"])
        s = {q: percentile(during, v) for q, v in (("p50", .5), ("p95", .95), ("p99", .99), ("max", 1.0))}
        stats[variant] = s
        print(f"# {variant}: bot imported from {r['code']}")
        rows.append([variant, f"{r['enforce_s']:.1f} s", str(r["iam_calls"]),
                     f"{r['enforce_s'] - r['iam_s']:.1f} s", str(len(during)), ms(s["p50"]), ms(s["p95"]),
                     ms(s["p99"]), ms(s["max"]), ms(percentile(idle, .5)), ms(percentile(idle, .99)),
                     f"{r['revoked']}/{r['subjects']}", f"{r['denied']}/{r['subjects']}",
                     f"{r['audit_rows']} rows, "
                     + ("ok" if r["audit_ok"] else f"BROKEN: {r['audit_reason']}")])
        if r["revoked"] != r["subjects"] or r["denied"] != r["subjects"]:
            problems.append(f"{variant}: {r['revoked']} of {r['subjects']} subjects revoked, "
                            f"{r['denied']} IAM users carry the deny")
        if not r["audit_ok"]:
            problems.append(f"{variant}: audit chain does not verify ({r['audit_reason']})")
        if not r["enforce_ok"]:
            problems.append(f"{variant}: enforce failed: {r['enforce_message']}")
        if r["errors"]:
            problems.append(f"{variant}: {len(r['errors'])} commands did not answer ✅, e.g. "
                            f"{r['errors'][0]!r}")
        if not during:
            problems.append(f"{variant}: no command was sent while enforce ran")
        if r["timed_out"]:
            problems.append(f"{variant}: enforce still running after {args.timeout:g} s")
    print()
    print(table(["variant", "enforce wall", "IAM calls", "wall − IAM delay", "cmds during", "p50", "p95",
                 "p99", "max", "idle p50", "idle p99", "revoked", "IAM denies", "audit chain"], rows))
    if "before" in stats and "after" in stats:
        print()
        ratios = []
        for q in ("p99", "max"):
            ratio = stats["before"][q] / stats["after"][q]
            ratios.append([f"{q} during enforce", ms(stats["before"][q]), ms(stats["after"][q]),
                           f"{1 / ratio:.3f}", f"{ratio:,.1f}x",
                           f"≥ {args.min_ratio:g}x" if q == "p99" else "—",
                           verdict(ratio >= args.min_ratio) if q == "p99" else "—"])
            if q == "p99" and ratio < args.min_ratio:
                problems.append(f"p99 only {ratio:.1f}x better after (target {args.min_ratio:g}x)")
            if q == "p99":
                out.add("/bedrock limit p99 during enforce, before / after",
                        f"{ratio:,.1f}x ({ms(stats['before'][q])} → {ms(stats['after'][q])})",
                        f"≥ {args.min_ratio:g}x", ratio >= args.min_ratio)
        print(table(["figure", "before", "after", "after/before", "better by", "target", "result"], ratios))
    print(f"\n# {load_average()}")
    for p in problems:
        print(f"MISS: {p}")
        if not p.startswith("p99 only"):  # that one is the ratio figure's MISS already
            out.add("check", p, "none fails", False)
    out.emit()
    return 1 if problems else 0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default=BASELINE, help="the 'before' revision (default %(default)s)")
    p.add_argument("--subjects", type=int, default=200)
    p.add_argument("--delay-ms", type=float, default=50.0, help="added to every IAM call")
    p.add_argument("--threads", type=int, default=4, help="concurrent command senders")
    p.add_argument("--pause-ms", type=float, default=0.0,
                   help="each sender waits this long between commands (0: a closed loop)")
    p.add_argument("--idle-per-thread", type=int, default=25, help="idle commands per thread")
    p.add_argument("--timeout", type=float, default=120.0, help="stop sending after this many s")
    p.add_argument("--min-ratio", type=float, default=5.0, help="required before/after p99 ratio")
    p.add_argument("--quick", action="store_true", help="20 subjects, 5 idle commands per thread")
    p.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.subjects, args.idle_per_thread = 20, 5
    if args.subjects < 1 or args.threads < 1 or args.delay_ms < 0 or args.pause_ms < 0:
        p.error("--subjects and --threads must be ≥ 1, --delay-ms and --pause-ms ≥ 0")
    return args


# ---- the child: one variant ----------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    check_tree(Path(args.tree))
    from moto import mock_aws
    from sqlalchemy import create_engine, text

    schema = f"bench_contention_{args.child}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        with mock_aws():
            result = measure(args, f"{PG_BASE}?options=-csearch_path%3D{schema}")
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    Path(args.out).write_text(json.dumps(result))
    return 0


def check_tree(tree: Path) -> None:
    """PYTHONPATH must win over the editable install, or both runs would measure the same code."""
    import bot
    import handlers
    import jobs
    import migrations

    for mod in (bot, handlers, jobs, migrations):
        where = Path(str(mod.__file__)).resolve()
        if not where.is_relative_to(tree.resolve()):
            sys.exit(f"{mod.__name__} was imported from {where}, not from {tree}: aborting")


@dataclass
class Env:
    services: Any
    client: Any
    iam: Any
    slow: Any  # the IAM delay hook (taken off for the checks)
    iam_calls: list[int]  # one slot, counted by the hook (only the enforce thread calls IAM)
    sent: list[int]  # commands sent so far by each sender (only its own thread touches it)
    errors: list[str]  # replies that were not a success


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING)
    env = build(args, url)
    idle = idle_latencies(env, args.threads, args.idle_per_thread)
    during, enforce_s, outcome, timed_out = contended(env, args.threads, args.timeout,
                                                      args.pause_ms / 1000)
    revoked, denied, audit_rows, audit_ok, audit_reason = checks(env, args.subjects)
    import bot

    return {"code": str(Path(str(bot.__file__)).parent), "subjects": args.subjects, "idle": idle,
            "during": during, "enforce_s": enforce_s, "iam_calls": env.iam_calls[0],
            "iam_s": env.iam_calls[0] * args.delay_ms / 1000,
            "enforce_ok": bool(getattr(outcome, "ok", False)),
            "enforce_message": str(getattr(outcome, "message", outcome)), "timed_out": timed_out,
            "errors": env.errors, "revoked": revoked, "denied": denied, "audit_rows": audit_rows,
            "audit_ok": audit_ok, "audit_reason": audit_reason}


def build(args: argparse.Namespace, url: str) -> Env:
    import boto3
    from slack_sdk import WebClient

    from bot.config import load_settings
    from bot.migrate import upgrade
    from bot.runtime import build_services

    upgrade(url)
    iam = boto3.client("iam", region_name=REGION)
    settings = load_settings(None, DATABASE_URL=url, BOT_ADMINS=ADMIN_ID, BOT_TIMEZONE="UTC",
                             BOT_PROFILES_BACKEND="local", AWS_REGION=REGION)
    assert not settings.aws.alarm_topic_arn, "no alarm topic: no CloudWatch backstops"
    services = build_services(settings, iam=iam, account_id=ACCOUNT)
    seed(services, iam, args.subjects, args.threads)
    delay = args.delay_ms / 1000

    calls = [0]

    def slow(**_: Any) -> None:
        calls[0] += 1
        time.sleep(delay)  # returning None lets the request go on (to moto)

    iam.meta.events.register("before-send.iam.*", slow)
    # A Slack client pointed at nothing: `limit bench-k …` never asks Slack anything.
    client = WebClient(token="xoxb-none", base_url="http://127.0.0.1:9/")
    return Env(services, client, iam, slow, calls, [0] * args.threads, [])


def seed(services: Any, iam: Any, subjects: int, senders: int) -> None:
    from bot.quantities import Metric, Window, parse_amount
    from bot.services import directory, ledger, limits
    from bot.services.directory import Actor, SubjectRef
    from bot.services.ledger import LedgerRow

    clock = services.clock
    admin = Actor.slack(ADMIN_ID)
    now = clock()
    hour = now.replace(minute=0, second=0, microsecond=0)
    names = [(f"user-{i:04d}", True) for i in range(subjects)] + [(f"bench-{k}", False)
                                                                    for k in range(senders)]
    with services.db.session_scope() as session:
        directory.bootstrap_admins(session, clock, [ADMIN_ID])
        for i, (name, breached) in enumerate(names):
            iam.create_user(UserName=name)
            ref = SubjectRef(name=name)
            subject, _ = directory.link_principal(session, clock, admin, ref,
                                                  f"arn:aws:iam::{ACCOUNT}:user/{name}")
            limits.set_limit(session, clock, admin, ref,
                             parse_amount("1M" if breached else AMOUNTS[0]), Window.DAY, Metric.TOKENS,
                             (80, 90), "revoke", False)
            if breached:
                meter = directory.ensure_meter(session, clock, "profile", f"aip{i:09d}", subject.id)
                ledger.upsert(session, [LedgerRow(meter.id, hour, input_tokens=USED_TOKENS, requests=1)],
                              now)


def command(env: Env, sender: int) -> float:
    """One `/bedrock limit` on the sender's own subject (alternating amounts): its latency."""
    from handlers.slash import answer

    env.sent[sender] += 1
    amount = AMOUNTS[env.sent[sender] % 2]
    began = time.perf_counter()
    reply, _ = answer(env.services, env.client, ADMIN_ID, f"limit bench-{sender} {amount}/day")
    took = time.perf_counter() - began
    if not reply.startswith("✅"):
        env.errors.append(reply[:300])  # list.append is atomic under the GIL
    return took


def idle_latencies(env: Env, threads: int, per_thread: int) -> list[float]:
    out: list[float] = []

    def sender(k: int) -> None:
        for _ in range(per_thread):
            out.append(command(env, k))

    run_threads([threading.Thread(target=sender, args=(k,)) for k in range(threads)])
    return out


def contended(env: Env, threads: int, timeout: float,
              pause: float) -> tuple[list[float], float, Any, bool]:
    """Enforce in a thread; the senders loop until it returns. Every command started while it
    ran is counted, including the ones that finish after it."""
    from jobs import enforce

    done = threading.Event()
    outcome: list[Any] = []
    took: list[float] = []

    def enforcer() -> None:
        began = time.perf_counter()
        try:
            outcome.append(enforce.run(env.services))
        except Exception as exc:  # reported, not hidden: the run then fails its checks
            outcome.append(f"{type(exc).__name__}: {exc}")
        took.append(time.perf_counter() - began)
        done.set()

    out: list[float] = []
    deadline = time.perf_counter() + timeout

    def sender(k: int) -> None:
        while not done.is_set() and time.perf_counter() < deadline:
            out.append(command(env, k))
            if pause:
                done.wait(pause)

    worker = threading.Thread(target=enforcer, daemon=True)
    worker.start()
    run_threads([threading.Thread(target=sender, args=(k,)) for k in range(threads)])
    timed_out = not done.is_set()
    done.wait(600)  # let a slow enforce finish before the checks (bounded)
    return out, (took[0] if took else float("nan")), (outcome[0] if outcome else None), timed_out


def run_threads(ts: list[threading.Thread]) -> None:
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def checks(env: Env, subjects: int) -> tuple[int, int, int, bool, str]:
    """(subjects with an active revocation, IAM users carrying the deny, audit rows, chain ok, why)."""
    from sqlalchemy import text

    from bot.services import audit

    env.iam.meta.events.unregister("before-send.iam.*", env.slow)
    with env.services.db.session_scope() as session:
        revoked = session.execute(text(
            "SELECT count(DISTINCT r.subject_id) FROM revocations r JOIN subjects s ON s.id = r.subject_id "
            "WHERE r.state = 'active' AND s.name LIKE 'user-%'")).scalar_one()
        result = audit.verify(session)
    denied = sum(f"bedrock-bot-deny-user-{i:04d}" in env.iam.list_user_policies(
        UserName=f"user-{i:04d}")["PolicyNames"] for i in range(subjects))
    return int(revoked), denied, result.rows, result.ok, result.reason


if __name__ == "__main__":
    sys.exit(main())
