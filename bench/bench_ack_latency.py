"""Slash-command ack latency of the real `serve` process, and its resident memory after the load.

Targets (DESIGN.md §6): ack p99 < 100 ms with 20 concurrent requests and 10k subjects (Slack's own
limit is 3,000 ms); resident memory serving < 200 MB.

Per database (SQLite file, then a private PostgreSQL schema): seed 10k subjects with 30 days of
hourly ledger rows (bench/common.py: 7.2M rows), start `python -m handlers.main serve --no-scheduler`
on a free loopback port against a local Slack stand-in (tests/fakes/slack_api.FakeSlack: Web API and
response_url sink), wait for /healthz, then 20 client threads each send `--requests` signed
`/bedrock` slash commands in turn — `help`, `usage <@user>` and `usage team-…` as an owner — over a
new connection each, as Slack does. A thread sends its next command once the previous one has been
answered on its response_url, so 20 commands are in flight at any time.

Measured client-side: ack = POST sent → HTTP 200 read (what Slack's 3 s timer sees); answer = POST
sent → the reply arrived at the response_url. Memory: VmRSS (and peak VmHWM) of the serve process
from /proc, before and after the load. Run from the repo root:

    .venv/bin/python bench/bench_ack_latency.py [--db both|sqlite|postgres] [--subjects 10000]
        [--days 30] [--hours-per-day 24] [--threads 20] [--requests 50] [--quick] [--py-spy DIR]

`--py-spy DIR` records serve's stacks during the load, idle threads included, as collapsed stacks
(`py-spy record --format raw`; needs `pip install py-spy`).
The client threads, FakeSlack and serve share this machine's cores: on a small machine part of
the measured latency is the client's own CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    ROOT,
    BenchDb,
    Seed,
    cpu_seconds,
    databases,
    git_revision,
    load_average,
    machine,
    percentile,
    rss_mb,
    seed,
    table,
    verdict,
)
from tests.fakes.signing import signed_headers, slash_command_body
from tests.fakes.slack_api import Call, FakeSlack

SECRET = "bench-signing-secret"
ADMIN = "UADMIN0001"  # BOT_ADMINS: an owner, so `usage` may look at anyone
ACK_TARGET_MS = 100.0
SLACK_LIMIT_MS = 3000.0
RSS_TARGET_MB = 200.0
ANSWER_TIMEOUT_S = 60.0


@dataclass
class Sample:
    kind: str  # help | usage user | usage team
    ack_ms: float
    answer_ms: float | None
    status: int
    error: str = ""


@dataclass
class Run:
    db: str
    seed: Seed
    phases: list[Phase] = field(default_factory=list)
    first_ack_ms: float = 0.0
    floor: list[float] = field(default_factory=list)  # bad-signature 401s: the harness's own floor
    rss_idle: float = 0.0
    rss_after: float = 0.0
    hwm_after: float = 0.0


class Answers:
    """Arrival times at the response_url, by response name (FakeSlack calls `on_call` per request)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: dict[str, threading.Event] = {}
        self.arrived: dict[str, tuple[float, str]] = {}

    def expect(self, name: str) -> threading.Event:
        with self.lock:
            ev = self.events[name] = threading.Event()
            return ev

    def on_call(self, call: Call) -> None:
        if not call.method.startswith("response_url:"):
            return
        name = call.method.split(":", 1)[1]
        now = time.perf_counter()
        text = str(call.args.get("text", ""))
        with self.lock:
            self.arrived[name] = (now, text)
            ev = self.events.get(name)
        if ev is not None:
            ev.set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(db: BenchDb, fake: FakeSlack, workdir: Path, port: int, threads: int,
          variant: str = "shipped") -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "SLACK_", "AWS_"))}
    env.update({
        "PYTHONPATH": str(ROOT), "DATABASE_URL": db.url, "SLACK_BOT_TOKEN": "xoxb-bench",
        "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": fake.url, "BOT_ADMINS": ADMIN,
        "BOT_PROFILES_BACKEND": "local", "AWS_REGION": "us-east-1",
        # Nothing here calls AWS; should anything try, it fails at once on a closed loopback port.
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    })
    program = ["-m", "handlers.main"]
    if variant != "shipped":  # a what-if change applied in-process (bench/serve_variant.py)
        program, env["BENCH_SERVE_VARIANT"] = [str(ROOT / "bench" / "serve_variant.py")], variant
    log = (workdir / f"serve-{db.name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, *program, "serve", "--no-scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--threads", str(threads)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited with {proc.returncode}; see {log.name}:\n"
                                 + Path(log.name).read_text()[-3000:])
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    break
            if time.monotonic() > deadline:
                raise SystemExit("serve did not answer /healthz within 120 s")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def one(port: int, fake: FakeSlack, answers: Answers, name: str, kind: str, text: str,
        wait: bool = True, secret: str = SECRET) -> Sample:
    body = slash_command_body(text, user_id=ADMIN, user_name="admin", channel_id="C0BENCH",
                              response_url=fake.response_url(name))
    event = answers.expect(name)
    headers = signed_headers(secret, body)
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/slack/events", body=body.encode(), headers=headers)
        resp = conn.getresponse()
        resp.read()
        acked = time.perf_counter()
    finally:
        conn.close()
    sample = Sample(kind, (acked - began) * 1000, None, resp.status)
    if not wait:
        return sample
    if event.wait(ANSWER_TIMEOUT_S):
        at, reply = answers.arrived[name]
        sample.answer_ms = (at - began) * 1000
        if reply.startswith("⚠️"):
            sample.error = reply[:200]
    else:
        sample.error = f"no answer within {ANSWER_TIMEOUT_S:.0f} s"
    return sample


def commands(s: Seed, rng: random.Random, n: int) -> list[tuple[str, str]]:
    """help : usage <@user> : usage team = 3 : 2 : 1, in a shuffled order."""
    users, teams = s.user_ids_with_slack(), s.team_names()
    out = []
    offset = rng.randrange(6)  # short lists still get every kind across clients
    for i in range(n):
        slot = (i + offset) % 6
        if slot < 3:
            out.append(("help", "help"))
        elif slot < 5:
            out.append(("usage user", f"usage <@{rng.choice(users)}>"))
        else:
            out.append(("usage team", f"usage {rng.choice(teams)}"))
    rng.shuffle(out)
    return out


@dataclass
class Phase:
    name: str  # burst | sustained
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    serve_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


def load(db: BenchDb, s: Seed, args: argparse.Namespace, workdir: Path) -> Run:
    run = Run(db.name, s)
    answers = Answers()
    rng = random.Random(42)
    with FakeSlack(on_call=answers.on_call) as fake:
        port = free_port()
        with serve(db, fake, workdir, port, args.serve_threads, args.variant) as proc:
            run.rss_idle = rss_mb(proc.pid)[0]
            first = one(port, fake, answers, "first", "help", "help")
            run.first_ack_ms = first.ack_ms
            with ThreadPoolExecutor(args.threads) as pool:  # warm every path once, unmeasured
                warm = commands(s, rng, args.threads)
                list(pool.map(lambda i: one(port, fake, answers, f"warm{i}", *warm[i]), range(len(warm))))

                # The floor: the same clients and connections, a wrong signature, so Bolt answers 401
                # before any listener runs. What is left of an ack above this is the bot's.
                def refused(t: int) -> list[float]:
                    xs = [one(port, fake, answers, f"bad{t}-{i}", "help", "help", wait=False, secret="wrong")
                          for i in range(args.requests)]
                    assert all(x.status == 401 for x in xs), [x.status for x in xs][:5]
                    return [x.ack_ms for x in xs]

                run.floor = sorted(v for vs in pool.map(refused, range(args.threads)) for v in vs)
            spy = start_py_spy(args.py_spy, proc.pid, db.name)
            for name in ("burst", "sustained"):
                run.phases.append(phase(name, port, fake, answers, s, rng, args, proc.pid))
            stop_py_spy(spy)
            time.sleep(0.5)  # let the last response threads finish before reading memory
            run.rss_after, run.hwm_after = rss_mb(proc.pid)
    return run


def phase(name: str, port: int, fake: FakeSlack, answers: Answers, s: Seed, rng: random.Random,
          args: argparse.Namespace, pid: int) -> Phase:
    """`burst`: all clients send at the same instant (a barrier), wait for their answers, again.
    `sustained`: each client sends its next command as soon as the previous one is answered."""
    out = Phase(name)
    plans = [commands(s, rng, args.requests) for _ in range(args.threads)]
    barrier = threading.Barrier(args.threads) if name == "burst" else None

    def client(t: int) -> list[Sample]:
        done = []
        for i, (kind, text) in enumerate(plans[t]):
            if barrier is not None:
                barrier.wait(timeout=ANSWER_TIMEOUT_S * 2)
            done.append(one(port, fake, answers, f"{name}{t}-{i}", kind, text))
        return done

    cpu0, mine0 = cpu_seconds(pid), time.process_time()
    began = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        for samples in pool.map(client, range(args.threads)):
            out.samples.extend(samples)
    out.wall_s = time.perf_counter() - began
    out.serve_cpu_s = cpu_seconds(pid) - cpu0
    out.client_cpu_s = time.process_time() - mine0
    return out


def start_py_spy(directory: str | None, pid: int, db: str) -> subprocess.Popen[bytes] | None:
    if not directory:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("(py-spy not installed: no flame graph)", file=sys.stderr)
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = Path(directory) / f"serve-{db.lower()}.txt"  # collapsed stacks, idle frames included
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--threads", "--idle", "--rate", "250",
                             "--format", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the load starts
    print(f"  py-spy → {out}", file=sys.stderr)
    return proc


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def ms(v: float) -> str:
    return f"{v:,.1f} ms"


def report(runs: list[Run], args: argparse.Namespace) -> bool:
    ok = True
    rows = []
    for r in runs:
        for ph in r.phases:
            acks = sorted(x.ack_ms for x in ph.samples)
            answered = sorted(x.answer_ms for x in ph.samples if x.answer_ms is not None)
            p99 = percentile(acks, 0.99)
            ok = ok and p99 < ACK_TARGET_MS and acks[-1] < SLACK_LIMIT_MS
            rows.append((f"{r.db}, {ph.name}", f"{len(acks):,}", ms(percentile(acks, 0.5)), ms(p99),
                         ms(acks[-1]), f"< {ACK_TARGET_MS:.0f} ms", verdict(p99 < ACK_TARGET_MS),
                         f"{SLACK_LIMIT_MS / acks[-1]:,.0f}x", ms(percentile(r.floor, 0.99)),
                         ms(percentile(answered, 0.5)) if answered else "—",
                         ms(percentile(answered, 0.99)) if answered else "—"))
    print("Ack latency (POST → HTTP 200), and the full answer (POST → reply at the response_url):")
    print(table(("database, load", "n", "ack p50", "ack p99", "ack max", "target p99", "result",
                 "Slack 3 s / max", "floor p99", "answer p50", "answer p99"), rows))

    print("\nResident memory of the serve process (VmRSS; peak = VmHWM):")
    mem = []
    for r in runs:
        ok = ok and r.rss_after < RSS_TARGET_MB
        mem.append((r.db, f"{r.rss_idle:,.0f} MB", f"{r.rss_after:,.0f} MB", f"{r.hwm_after:,.0f} MB",
                    f"< {RSS_TARGET_MB:.0f} MB", verdict(r.rss_after < RSS_TARGET_MB),
                    f"{RSS_TARGET_MB / r.rss_after:.1f}x under"))
    print(table(("database", "idle, after start", "after the load", "peak", "target", "result", "headroom"),
                mem))

    print("\nBy command:")
    detail = []
    for r in runs:
        for ph in r.phases:
            for kind in ("help", "usage user", "usage team"):
                xs = [x for x in ph.samples if x.kind == kind]
                if not xs:
                    continue
                acks = sorted(x.ack_ms for x in xs)
                ans = sorted(x.answer_ms for x in xs if x.answer_ms is not None)
                detail.append((f"{r.db}, {ph.name}: {kind}", str(len(xs)), ms(percentile(acks, 0.5)),
                               ms(percentile(acks, 0.99)), ms(acks[-1]),
                               ms(percentile(ans, 0.5)) if ans else "—",
                               ms(percentile(ans, 0.99)) if ans else "—"))
    print(table(("command", "n", "ack p50", "ack p99", "ack max", "answer p50", "answer p99"), detail))

    print()
    for r in runs:
        print(f"{r.db}: first command after start acked in {r.first_ack_ms:.0f} ms; floor (bad signature, "
              f"401) p50 {percentile(r.floor, 0.5):.1f} ms, p99 {percentile(r.floor, 0.99):.1f} ms")
        for ph in r.phases:
            errors = [x for x in ph.samples if x.error or x.status != 200]
            n = len(ph.samples)
            print(f"  {ph.name}: {n:,} commands in {ph.wall_s:.1f} s ({n / ph.wall_s:,.0f}/s), serve used "
                  f"{ph.serve_cpu_s:.1f} CPU s ({ph.serve_cpu_s / ph.wall_s * 100:.0f}% of a core, "
                  f"{ph.serve_cpu_s / n * 1000:.1f} ms per command), clients + FakeSlack "
                  f"{ph.client_cpu_s:.1f} CPU s; {len(errors)} failed"
                  + (f" (e.g. {errors[0].status} {errors[0].error!r})" if errors else ""))
            ok = ok and not errors
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--hours-per-day", type=int, default=24)
    ap.add_argument("--threads", type=int, default=20, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=None, help="commands per client (default 50)")
    ap.add_argument("--serve-threads", type=int, default=16, help="waitress threads (serve's default)")
    ap.add_argument("--py-spy", metavar="DIR", help="record serve's stacks during the load")
    ap.add_argument("--variant", choices=("shipped", "pool32", "handoff", "inline"), default="shipped",
                    help="what-if change applied to serve in-process (bench/serve_variant.py)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 subjects, 7 days, 5 commands each")
    args = ap.parse_args()
    if args.quick:
        args.subjects, args.days = 1_000, 7
    args.requests = args.requests or (5 if args.quick else 50)

    print(f"machine: {machine()}; revision {git_revision()}")
    if args.variant != "shipped":
        print(f"VARIANT {args.variant!r}: serve with a what-if change (bench/serve_variant.py), "
              "not the shipped code")
    print(f"{args.threads} concurrent clients × {args.requests} signed /bedrock commands "
          f"(help : usage @user : usage team = 3:2:1), {args.subjects:,} subjects, "
          f"{args.days} days × {args.hours_per_day} h of hourly ledger rows\n")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp:
        workdir = Path(tmp)
        for ctx in databases(args.db, workdir, "bench_ack"):
            with ctx as db:
                print(f"{db.name}:", file=sys.stderr)
                s = seed(db.url, args.subjects, args.days, args.hours_per_day)
                runs.append(load(db, s, args, workdir))
    for r in runs:
        print(f"{r.db}: {r.seed.usage_rows:,} ledger rows, seeded in {r.seed.seconds:.0f} s")
    print()
    ok = report(runs, args)
    print(f"\nat the end: {load_average()}")
    print(json.dumps({r.db: {ph.name: round(percentile(sorted(x.ack_ms for x in ph.samples), 0.99), 1)
                             for ph in r.phases} | {"rss_mb": round(r.rss_after)} for r in runs}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
