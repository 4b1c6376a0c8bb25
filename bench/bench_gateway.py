"""Gateway quota API latency and overshoot (issue 18), on SQLite and PostgreSQL.

Targets (DESIGN.md §6): `/v1/quota/check` p99 <= 5 ms in process and within 2x of `/healthz` over
HTTP in the same run, with 200 concurrent clients, 10k subjects and a large ledger; 0 overshoot
under 200 concurrent reserve/settle pairs.

Per database: seed 10k subjects with `--days` of hourly ledger rows (bench/common.py; 30 days =
7.2M rows), then

1. in process — a `QuotaBook` on the database, `--active` subjects warmed (their first, cold
   check is reported apart), then `--clients` threads each do `--requests` rounds of: a check
   with `estimated_tokens` (a reservation where a revoking limit applies) and, if allowed, the
   `/v1/usage` settling it. One client alone is the service time; 200 at once is the target.
   After that warm-up the worker freezes the GC's generations, as serve does after its start.
2. over HTTP — the real `serve --no-scheduler` process with `BOT_GATEWAY_TOKENS`, the same
   clients on keep-alive connections: `/healthz` alone; `/healthz` each followed by a `/v1/usage`
   (the floor under the gateway's own load); then `/v1/quota/check`, each allowed check followed
   by its `/v1/usage` as a gateway reports every call it let through (only the first request of
   each pair is timed). The target compares the check with the floor under the same load; the
   ratio to `/healthz` alone is printed too. serve's own histogram (`/metrics`) gives the check's
   time inside the process under that load.
3. overshoot — one fresh subject with a 1M tokens/day limit; 200 threads at once each reserve
   100k and settle 100k: settled must stay <= 1M (and exactly 10 may pass).

Run from the repo root:

    .venv/bin/python bench/bench_gateway.py [--db both|sqlite|postgres] [--subjects 10000]
        [--days 30] [--clients 200] [--requests 20] [--active 2000] [--quick]

All clients share this process (and this machine's 2 cores) with nothing else of the bot in (1)
and with the HTTP client side in (2): the in-process figure at 200 clients is mostly waiting for
the GIL, and is shown next to the one-client service time.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import inspect
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

# `--baseline DIR` runs this file again with the previous code's checkout first on the path
sys.path.insert(0, os.environ.get("BENCH_CODE_ROOT") or str(Path(__file__).resolve().parents[1]))

from bench.common import (
    MODEL,
    BenchDb,
    Figures,
    databases,
    git_revision,
    load_average,
    machine,
    percentile,
    seed,
    table,
    team_name,
    verdict,
)
from bot.db import Database
from bot.gateway_json import CheckRequest, UsageRequest, Who
from bot.pricing import PriceTable
from bot.quantities import Amount, Metric, Window
from bot.services import directory, limits
from bot.services.directory import Actor, SubjectRef
from bot.services.quota import QuotaBook
from tests.fakes.slack_api import FakeSlack

CODE_ROOT = Path(sys.path[0])
RUN = f"{os.getpid()}-{random.randrange(10**9)}"  # request ids never repeat another run's (idempotency)
TOKEN = "bench-gateway-token-0123456789"
IN_PROCESS_P99_MS = 5.0
HTTP_RATIO = 2.0


def book_options() -> dict[str, Any]:
    """The previous code polled versions every `refresh` seconds (100 ms in production)."""
    return {"refresh": 0.1} if "refresh" in inspect.signature(QuotaBook).parameters else {}


def names(subjects: int, teams: int) -> list[str]:
    users = subjects - teams
    return [f"user{u:05d}" for u in range(1, users + 1)] + [team_name(t) for t in range(1, teams + 1)]


@dataclass
class Phase:
    name: str
    ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    allowed: int = 0
    errors: int = 0
    first_error: str = ""
    served: dict[float, int] = field(default_factory=dict)  # serve's histogram over the phase

    def p(self, q: float) -> float:
        return percentile(sorted(self.ms), q)

    def row(self, db: str) -> list[str]:
        rate = len(self.ms) / self.seconds if self.seconds else 0.0
        return [f"{db}: {self.name}", f"{len(self.ms):,}", f"{self.p(0.5):.2f}", f"{self.p(0.99):.2f}",
                f"{max(self.ms, default=0):.1f}", f"{rate:,.0f}", str(self.errors)]


def run_clients(name: str, clients: int, rounds: int, work: Callable[[random.Random], tuple[float, bool]]
                ) -> Phase:
    """`clients` threads released together, each timing `rounds` calls of `work`."""
    phase = Phase(name)
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        rnd, mine, ok, bad = random.Random(i), [], 0, 0
        barrier.wait()
        for _ in range(rounds):
            try:
                ms, allowed = work(rnd)
                mine.append(ms)
                ok += allowed
            except Exception as exc:
                bad += 1
                if not phase.first_error:
                    phase.first_error = f"{type(exc).__name__}: {str(exc)[:300]}"
        with lock:
            phase.ms += mine
            phase.allowed += ok
            phase.errors += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    phase.seconds = time.perf_counter() - started
    return phase


# ---- 1. in process ---------------------------------------------------------------------------


def in_process(db: Database, active: list[str], clients: int, rounds: int) -> list[Phase]:
    book = QuotaBook(db, lambda: datetime.now(UTC), PriceTable.load(), ZoneInfo("UTC"), 0,
                     **book_options())
    cold = Phase("cold check (view load)")
    started = time.perf_counter()
    for name in active:
        t = time.perf_counter()
        book.check(CheckRequest(Who(subject=name), MODEL, 0))
        cold.ms.append((time.perf_counter() - t) * 1000)
    cold.seconds = time.perf_counter() - started
    # As serve does once it has started (handlers/main.py): what the set-up allocated is left
    # out of later collections.
    gc.collect()
    gc.freeze()
    seq = iter(range(10**9))

    def pair(rnd: random.Random) -> tuple[float, bool]:
        who = Who(subject=rnd.choice(active))
        t = time.perf_counter()
        d = book.check(CheckRequest(who, MODEL, 1000))
        ms = (time.perf_counter() - t) * 1000
        if d.allowed:
            book.usage(UsageRequest(who, f"b{RUN}-{next(seq)}", MODEL, 700, 100, 0, 0, d.reservation))
        return ms, d.allowed

    one = run_clients("check, 1 client", 1, min(2000, rounds * 50), pair)
    many = run_clients(f"check, {clients} clients", clients, rounds, pair)
    return [cold, one, many]


def overshoot(db: Database, clients: int) -> tuple[int, int, int]:
    """(allowed, settled tokens, limit) for `clients` simultaneous 100k reserve/settle pairs."""
    clock = lambda: datetime.now(UTC)  # noqa: E731
    name = f"overshoot-{os.getpid()}-{random.randrange(10**6)}"
    with db.session_scope() as s:
        directory.ensure_user(s, clock, Actor.system("bench"), SubjectRef(name=name))
        limits.set_limit(s, clock, Actor.system("bench"), SubjectRef(name=name), Amount(1_000_000, False),
                         Window.DAY, Metric.TOKENS, (80, 90), "revoke", False)
    book = QuotaBook(db, clock, PriceTable.load(), ZoneInfo("UTC"), 0, **book_options())
    book.check(CheckRequest(Who(subject=name), MODEL, 0))
    seq = iter(range(10**9))

    def pair(_: random.Random) -> tuple[float, bool]:
        d = book.check(CheckRequest(Who(subject=name), MODEL, 100_000))
        if d.allowed:
            book.usage(UsageRequest(Who(subject=name), f"o{RUN}-{next(seq)}", MODEL, 90_000, 10_000, 0, 0,
                                    d.reservation))
        return 0.0, d.allowed

    phase = run_clients("overshoot", clients, 1, pair)
    state = book.check(CheckRequest(Who(subject=name), MODEL, 0))
    used = next(x.used for x in state.limits)
    return phase.allowed, used, 1_000_000


# ---- 2. over HTTP ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(db: BenchDb, workdir: Path, port: int, slack_url: str, root: Path
          ) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "SLACK_", "AWS_"))}
    # serve's preflight calls auth.test before it listens: a local Slack stand-in answers it
    env.update({"DATABASE_URL": db.url, "SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": "bench",
                "SLACK_API_URL": slack_url, "BOT_GATEWAY_TOKENS": TOKEN, "BOT_TIMEZONE": "UTC",
                "BOT_PROFILES_BACKEND": "local", "AWS_REGION": "us-east-1", "PYTHONPATH": str(root),
                "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
    log = (workdir / "serve.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "handlers.main", "serve", "--host", "127.0.0.1", "--port",
                             str(port), "--no-scheduler"], cwd=workdir, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
        log.close()


def over_http(port: int, active: list[str], clients: int, rounds: int) -> list[Phase]:
    local = threading.local()

    def conn() -> http.client.HTTPConnection:
        if getattr(local, "c", None) is None:
            local.c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return local.c  # type: ignore[no-any-return]

    def call(method: str, path: str, body: bytes | None) -> tuple[float, int, bytes]:
        t = time.perf_counter()
        c = conn()
        try:
            c.request(method, path, body=body, headers={"authorization": f"Bearer {TOKEN}",
                                                        "content-type": "application/json"})
            resp = c.getresponse()
            out = resp.read()
        except (OSError, http.client.HTTPException):
            local.c = None
            raise
        return (time.perf_counter() - t) * 1000, resp.status, out

    def health(_: random.Random) -> tuple[float, bool]:
        ms, status, _body = call("GET", "/healthz", None)
        return ms, status == 200

    seq = iter(range(10**9))

    def health_beside_usage(rnd: random.Random) -> tuple[float, bool]:
        """The floor under the check phase's own load: /healthz timed, then a /v1/usage (not
        timed, no reservation), as the check phase sends one after each allowed check."""
        ms, ok = health(rnd)
        usage = {"subject": rnd.choice(active), "request_id": f"h{RUN}-{next(seq)}", "model": MODEL,
                 "input_tokens": 700, "output_tokens": 100}
        call("POST", "/v1/usage", json.dumps(usage).encode())
        return ms, ok

    def check(rnd: random.Random) -> tuple[float, bool]:
        body = json.dumps({"subject": rnd.choice(active), "model": MODEL, "estimated_tokens": 1000}).encode()
        ms, status, out = call("POST", "/v1/quota/check", body)
        if status != 200:
            raise RuntimeError(status)
        doc = json.loads(out)
        if doc["allowed"]:  # the call went ahead: report it (settling any reservation), not timed
            usage = {"subject": doc["subject"], "request_id": doc["reservation"] or f"c{RUN}-{next(seq)}",
                     "model": MODEL, "input_tokens": 700, "output_tokens": 100,
                     "reservation": doc["reservation"]}
            call("POST", "/v1/usage", json.dumps(usage).encode())
        return ms, bool(doc["allowed"])

    warm = run_clients("warm-up", 8, max(1, len(active) // 8), check)
    del warm
    phases = [run_clients(f"/healthz, {clients} clients", clients, rounds, health),
              run_clients(f"/healthz beside /v1/usage, {clients} clients", clients, rounds,
                          health_beside_usage)]
    before = served_buckets(call("GET", "/metrics", None)[2])
    phases.append(run_clients(f"/v1/quota/check, {clients} clients", clients, rounds, check))
    after = served_buckets(call("GET", "/metrics", None)[2])
    phases[-1].served = {le: after[le] - before.get(le, 0) for le in after}
    return phases


def served_buckets(metrics: bytes) -> dict[float, int]:
    """serve's own histogram of /v1/quota/check answer times (request read → answer built):
    cumulative count per upper bound in seconds."""
    out: dict[float, int] = {}
    for line in metrics.decode().splitlines():
        if line.startswith("bedrock_bot_gateway_seconds_bucket") and 'path="/v1/quota/check"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = int(float(line.rsplit(" ", 1)[1]))
    return out


def served_p99_ms(served: dict[float, int]) -> float:
    """The smallest bucket bound holding 99 % of the phase's checks (ms; inf if none)."""
    total = served.get(float("inf"), 0)
    for le in sorted(served):
        if total and served[le] >= 0.99 * total:
            return le * 1000
    return float("inf")


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class Result:
    db: str
    code: str  # "this" or "baseline"
    rows: int
    seed_s: float
    phases: list[Phase]
    http: list[Phase]
    over: tuple[int, int, int]


def worker(args: argparse.Namespace) -> int:
    """`--worker`: the in-process phases and the overshoot on `--url`, as JSON on stdout (run
    with BENCH_CODE_ROOT set, so the code measured is that checkout's)."""
    active = json.loads(Path(args.active_file).read_text())
    db = Database(args.url)
    try:
        phases = in_process(db, active, args.clients, args.requests)
        over = overshoot(db, args.clients)
    finally:
        db.dispose()
    print(json.dumps({"phases": [[p.name, p.ms, p.seconds, p.allowed, p.errors, p.first_error]
                                 for p in phases],
                      "over": over}))
    return 0


def measure(bdb: BenchDb, workdir: Path, root: Path, active: list[str], args: argparse.Namespace
            ) -> tuple[list[Phase], tuple[int, int, int], list[Phase]]:
    """Both halves for the code at `root`: in process (a child process), then over HTTP."""
    active_file = workdir / "active.json"
    active_file.write_text(json.dumps(active))
    env = {**os.environ, "BENCH_CODE_ROOT": str(root)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", "--url", bdb.url,
                          "--active-file", str(active_file), "--clients", str(args.clients),
                          "--requests", str(args.requests)], env=env, capture_output=True, text=True,
                         check=False, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"in-process worker for {root} failed:\n{out.stderr[-3000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    phases = [Phase(*fields) for fields in doc["phases"]]
    port = free_port()
    with FakeSlack() as slack, serve(bdb, workdir, port, slack.url, root):
        http_phases = over_http(port, active, args.clients, args.requests)
    return phases, tuple(doc["over"]), http_phases  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--requests", type=int, default=20, help="rounds per client")
    ap.add_argument("--active", type=int, default=2000, help="subjects the clients ask about")
    ap.add_argument("--quick", action="store_true", help="1,000 subjects, 3 days, 5 rounds")
    ap.add_argument("--baseline", type=Path, help="a checkout of the previous code (git worktree add "
                    "--detach DIR <rev>): measured first on the same seeded database")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--active-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.subjects, args.days, args.requests, args.active = 1000, 3, 5, 500
    codes = [("baseline", args.baseline.resolve())] if args.baseline else []
    codes.append(("this", CODE_ROOT))
    print(f"machine: {machine()}; revision {git_revision()}; at the start: {load_average()}")
    if args.baseline:
        print(f"baseline: {args.baseline} at {_revision(args.baseline)}, measured first on each database")
    print(f"{args.clients} concurrent clients × {args.requests} checks (estimated_tokens=1000, settled when "
          f"allowed), {args.subjects:,} subjects ({args.active:,} asked about), {args.days} days of ledger\n")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp:
        workdir = Path(tmp)
        for ctx in databases(args.db, workdir, "bench_gw"):
            with ctx as bdb:
                print(f"{bdb.name}:", file=sys.stderr)
                sd = seed(bdb.url, args.subjects, args.days, now=datetime.now(UTC) + timedelta(hours=1))
                teams = args.subjects // 20
                rnd = random.Random(7)
                active = rnd.sample(names(args.subjects, teams), min(args.active, args.subjects))
                for code, root in codes:
                    print(f"  {code} code ({root})", file=sys.stderr)
                    phases, over, http_phases = measure(bdb, workdir, root, active, args)
                    results.append(Result(bdb.name, code, sd.usage_rows, sd.seconds, phases, http_phases,
                                          over))
    return report(results, args)


def _revision(root: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                         timeout=5, check=False)
    return out.stdout.strip() or "?"


def report(results: list[Result], args: argparse.Namespace) -> int:
    rows = []
    for r in results:
        label = r.db if r.code == "this" else f"{r.db} (baseline)"
        rows += [p.row(label) for p in r.phases] + [p.row(label) for p in r.http]
    print(table(["phase", "calls", "p50 ms", "p99 ms", "max ms", "per s", "errors"], rows))
    for r in results:
        for p in r.phases + r.http:
            if p.first_error:
                print(f"{r.db} ({r.code}) {p.name}: first error: {p.first_error}")
    print()
    verdicts, figures = [], Figures()
    for r in results:
        label = r.db if r.code == "this" else f"{r.db} (baseline)"
        for name, value, target, ok in _targets(r, args):
            verdicts.append([f"{label}: {name}", value, target, "-" if ok is None else verdict(ok)])
            if r.code == "this":
                figures.add(f"{r.db}: {name}", value, target, ok)
        if r.code == "this":
            print(f"{r.db}: {r.rows:,} ledger rows, seeded in {r.seed_s:.0f} s")
    print()
    print(table(["figure", "measured", "target", "verdict"], verdicts))
    print(f"\nat the end: {load_average()}")
    return figures.emit()


def _targets(r: Result, args: argparse.Namespace) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, target, ok or None for information) for one database and code."""
    one, many = r.phases[1], r.phases[2]
    health, floor, check = r.http
    ratio = check.p(0.99) / floor.p(0.99) if floor.ms else float("inf")
    alone = check.p(0.99) / health.p(0.99) if health.ms else float("inf")
    served = served_p99_ms(check.served)
    allowed, used, limit = r.over
    over = max(0, used - limit)
    budget = f"<= {IN_PROCESS_P99_MS:g} ms"
    return [
        ("check p99 in process, 1 client (service time)", f"{one.p(0.99):.2f} ms", budget,
         one.p(0.99) <= IN_PROCESS_P99_MS),
        (f"check p99 inside serve, {args.clients} HTTP clients (serve's histogram: 16 threads share the GIL)",
         f"<= {served:g} ms", "", None),
        (f"check p99 in process, {args.clients} threads of this process (GIL queue)",
         f"{many.p(0.99):.2f} ms", "", None),
        ("HTTP p99 check / healthz, same load (each followed by a /v1/usage)", f"{ratio:.2f}",
         f"<= {HTTP_RATIO:g}", ratio <= HTTP_RATIO),
        ("HTTP p99 check (+ its usage) / healthz alone", f"{alone:.2f}", "", None),
        (f"overshoot, {args.clients} reserve/settle pairs on 1M",
         f"{over} ({allowed} allowed, {used:,} settled)", "0", over == 0),
    ]


if __name__ == "__main__":
    sys.exit(main())
