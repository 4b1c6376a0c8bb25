"""Slash-command ack latency of the real `serve` process, and its resident memory after the load.

Targets (DESIGN.md §6): ack p99 < 100 ms with 20 concurrent requests and 10k subjects (Slack's own
limit is 3,000 ms); resident memory serving < 200 MB.

Per database (SQLite file, then a private PostgreSQL schema): seed 10k subjects with 30 days of
hourly ledger rows (bench/common.py: 7.2M rows), start `python -m handlers.main serve --no-scheduler`
on a free loopback port against a local Slack stand-in in a process of its own
(bench/slack_sink.py: tests/fakes/slack_api.FakeSlack, Web API and response_url sink), wait for
/healthz, then 20 client threads each send `--requests` signed `/bedrock` slash commands in turn
— `help`, `usage <@user>` and `usage team-…` as an owner — over a new connection each, as Slack
does. A thread sends its next command once the previous one has been answered on its
response_url, so 20 commands are in flight at any time.

Measured client-side: ack = POST sent → HTTP 200 read (what Slack's 3 s timer sees); answer = POST
sent → the reply arrived at the response_url. Memory: VmRSS (and peak VmHWM) of the serve process
from /proc, before and after the load. Run from the repo root:

    .venv/bin/python bench/bench_ack_latency.py [--db both|sqlite|postgres] [--subjects 10000]
        [--days 30] [--hours-per-day 24] [--threads 20] [--requests 50] [--quick] [--py-spy DIR]

`--py-spy DIR` records the stacks of serve and its answer processes during the load, idle threads
included, as collapsed stacks (`py-spy record --format raw`; needs `pip install py-spy`).
The client threads, the stand-in and serve share this machine's cores: on a small machine part of
the measured latency is the client's own CPU time. The stand-in parses the answers in its own
process, so they do not take the GIL from the threads timing acks.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import http.client
import itertools
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
    Figures,
    Seed,
    databases,
    family,
    family_cpu_seconds,
    git_revision,
    load_average,
    machine,
    percentile,
    pss_mb,
    rss_mb,
    seed,
    table,
    verdict,
)
from bench.slack_sink import SlackSink
from tests.fakes.signing import signed_headers, slash_command_body

SECRET = "bench-signing-secret"
ADMIN = "UADMIN0001"  # BOT_ADMINS: an owner, so `usage` may look at anyone
ACK_TARGET_MS = 100.0
ANSWER_TARGET_MS = 1000.0
RATIO_TARGET = 1.3
SLACK_LIMIT_MS = 3000.0
RSS_TARGET_MB = 150.0
ANSWER_TIMEOUT_S = 30.0


@dataclass
class Sample:
    kind: str  # help | usage user | usage team
    ack_ms: float
    answer_ms: float | None
    status: int
    error: str = ""
    name: str = ""
    began: float = 0.0
    acked: float = 0.0


@dataclass
class Run:
    db: str
    seed: Seed
    variant: str
    phases: list[Phase] = field(default_factory=list)
    first_ack_ms: float = 0.0
    floor: list[float] = field(default_factory=list)  # bad-signature 401s: the harness's own floor
    rss_idle: float = 0.0
    rss_after: float = 0.0
    hwm_after: float = 0.0
    pss_after: float = 0.0  # serve and its answer processes, shared pages counted once
    pss_parts: str = ""  # each process's RSS / PSS / USS
    trace: dict[str, tuple[float, ...]] = field(default_factory=dict)  # variant `trace`: serve's stamps
    pauses: list[tuple[str, float, float]] = field(default_factory=list)  # `trace`: GCs (who, began, ended)

    def pooled(self) -> list[Phase]:
        """Each (pace, kind) with its rounds together: the samples the targets are read on."""
        out: dict[tuple[str, str], Phase] = {}
        for ph in self.phases:
            pool = out.setdefault((ph.pace, ph.kind), Phase(ph.pace, ph.kind, -1))
            pool.samples += ph.samples
            pool.wall_s += ph.wall_s
            pool.serve_cpu_s += ph.serve_cpu_s
            pool.client_cpu_s += ph.client_cpu_s
            pool.sink_cpu_s += ph.sink_cpu_s
        return sorted(out.values(), key=lambda ph: (PACES.index(ph.pace), KINDS.index(ph.kind)))

    def ratios(self, pace: str, rnd: int | None = None) -> dict[str, float]:
        """Heavy ack p99 ÷ `help` ack p99 at `pace`, over every round or in round `rnd`."""
        phases = self.pooled() if rnd is None else [ph for ph in self.phases if ph.round == rnd]
        by = {ph.kind: p([x.ack_ms for x in ph.samples], 0.99) for ph in phases if ph.pace == pace}
        return {k: by[k] / by["help"] for k in HEAVY}


class Answers:
    """Arrival times at the response_url, by response name (from bench/slack_sink.py's process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: dict[str, threading.Event] = {}
        self.arrived: dict[str, tuple[float, str]] = {}

    def expect(self, name: str) -> threading.Event:
        with self.lock:
            ev = self.events[name] = threading.Event()
            return ev

    def on_answer(self, name: str, now: float, text: str) -> None:
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
def serve(db: BenchDb, fake: SlackSink, workdir: Path, port: int, threads: int,
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
    if variant == "trace":
        env["BENCH_TRACE"] = str(workdir / f"trace-{db.name}.tsv")
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


def send(port: int, fake: SlackSink, answers: Answers, name: str, kind: str, text: str,
         secret: str = SECRET) -> Sample:
    """POST one signed command and read the 200 (the ack); the answer is collected by `settle`."""
    body = slash_command_body(text, user_id=ADMIN, user_name="admin", channel_id="C0BENCH",
                              response_url=fake.response_url(name))
    answers.expect(name)
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
    return Sample(kind, (acked - began) * 1000, None, resp.status, name=name, began=began, acked=acked)


def settle(answers: Answers, sample: Sample) -> Sample:
    """Wait for the sample's reply at the response_url; answer = ack → reply (the bot's own part)."""
    with answers.lock:
        event = answers.events[sample.name]
    if event.wait(ANSWER_TIMEOUT_S):
        at, reply = answers.arrived[sample.name]
        sample.answer_ms = (at - sample.acked) * 1000
        if reply.startswith("⚠️"):
            sample.error = reply[:200]
    else:
        sample.error = f"no answer within {ANSWER_TIMEOUT_S:.0f} s"
    return sample


def one(port: int, fake: SlackSink, answers: Answers, name: str, kind: str, text: str) -> Sample:
    return settle(answers, send(port, fake, answers, name, kind, text))


KINDS = ("help", "usage @name", "usage <@user>", "usage team")
HEAVY = KINDS[1:]
PACES = ("answer", "ack")


def command_text(s: Seed, rng: random.Random, kind: str) -> str:
    """`usage @name` is the issue's `/bedrock usage @alice` (a subject named in plain text);
    `usage <@user>` is a Slack mention (looked up with users.info at FakeSlack)."""
    if kind == "help":
        return "help"
    if kind == "usage @name":
        return f"usage @user{int(rng.choice(s.user_ids_with_slack())[1:]):05d}"
    if kind == "usage <@user>":
        return f"usage <@{rng.choice(s.user_ids_with_slack())}>"
    return f"usage {rng.choice(s.team_names())}"


@dataclass
class Phase:
    pace: str  # answer: a client sends its next command once answered; ack: once acked
    kind: str
    round: int = 0
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    serve_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    sink_cpu_s: float = 0.0  # the Slack stand-in's process (users.info, the answers it parses)


def load(db: BenchDb, s: Seed, args: argparse.Namespace, workdir: Path, variant: str) -> Run:
    run = Run(db.name, s, variant)
    answers = Answers()
    rng = random.Random(42)
    with SlackSink(answers.on_answer) as fake:
        port = free_port()
        with serve(db, fake, workdir, port, args.serve_threads, variant) as proc:
            run.rss_idle = rss_mb(proc.pid)[0]
            run.first_ack_ms = one(port, fake, answers, "first", "help", "help").ack_ms
            with ThreadPoolExecutor(args.threads) as pool:  # warm every path once, unmeasured
                warm = [KINDS[i % len(KINDS)] for i in range(args.threads)]
                list(pool.map(lambda i: one(port, fake, answers, f"warm{i}", warm[i],
                                            command_text(s, rng, warm[i])), range(len(warm))))

                # The floor: the same clients and connections, a wrong signature, so Bolt answers 401
                # before any listener runs. What is left of an ack above this is the bot's.
                def refused(t: int) -> list[float]:
                    xs = [send(port, fake, answers, f"bad{t}-{i}", "help", "help", secret="wrong")
                          for i in range(args.requests)]
                    assert all(x.status == 401 for x in xs), [x.status for x in xs][:5]
                    return [x.ack_ms for x in xs]

                run.floor = sorted(v for vs in pool.map(refused, range(args.threads)) for v in vs)
            spy = start_py_spy(args.py_spy, proc.pid, f"{db.name}-{variant}")
            if variant == "trace":
                CLIENT_GC.pauses.clear()
                gc.callbacks.append(CLIENT_GC)
            for pace in PACES:
                for rnd in range(args.rounds):
                    for kind in KINDS[rnd % len(KINDS):] + KINDS[:rnd % len(KINDS)]:  # no kind always first
                        run.phases.append(phase(pace, kind, rnd, port, fake, answers, s, rng, args, proc.pid))
                        print(f"  {variant}, pace {pace}, round {rnd + 1}, {kind}: "
                              f"{run.phases[-1].wall_s:.1f} s", file=sys.stderr)
            stop_py_spy(spy)
            if CLIENT_GC in gc.callbacks:
                gc.callbacks.remove(CLIENT_GC)
            time.sleep(0.5)  # let the last response threads finish before reading memory
            run.rss_after, run.hwm_after = rss_mb(proc.pid)
            run.pss_after, run.pss_parts = pss_mb(proc.pid)
    if variant == "trace":
        run.trace, serve_gc = read_trace(workdir / f"trace-{db.name}.tsv")
        run.pauses = sorted([("serve " + g, a, b) for g, a, b in serve_gc] + CLIENT_GC.pauses,
                            key=lambda x: x[1])
    return run


class GcPauses:
    """This process's (the clients') garbage collections, for the `trace` variant."""

    def __init__(self) -> None:
        self.pauses: list[tuple[str, float, float]] = []
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((f"client gc{info['generation']}", self._began, time.perf_counter()))


CLIENT_GC = GcPauses()


def read_trace(path: Path) -> tuple[dict[str, tuple[float, ...]], list[tuple[str, float, float]]]:
    """serve_variant.py `trace`'s lines: response name → (accepted, queued, entered, gate began,
    gate done, answered: CLOCK_MONOTONIC seconds; purge: seconds); and serve's collections."""
    out, pauses = {}, []
    for line in path.read_text().splitlines():
        name, *stamps = line.split("\t")
        if name.startswith("gc"):
            pauses.append((name, float(stamps[0]), float(stamps[1])))
        else:
            out[name] = tuple(float(t) for t in stamps)
    return out, pauses


TRACE_STEPS = ("connect+accept", "read+queue", "wait for thread", "to gate", "gate (verify+claim)",
               "Bolt+hand-off", "write+read 200", "of which purge")


def trace_steps(x: Sample, stamps: tuple[float, ...]) -> list[float]:
    """An ack's time by step, ms: client sent → accepted → queued → a waitress thread took it →
    gate began → gate done → answered → client read the 200."""
    points = (x.began, *stamps[:6], x.acked)
    return [(b - a) * 1000 for a, b in itertools.pairwise(points)] + [stamps[6] * 1000]


def print_trace(r: Run) -> None:
    """Where the acks of each phase spent their time: the median ack, and the slowest 2 %."""
    rows = []
    for ph in r.pooled():
        timed = sorted((x for x in ph.samples if x.name in r.trace), key=lambda x: x.ack_ms)
        if not timed:
            continue
        slow = timed[-max(1, len(timed) // 50):]
        for label, xs in (("median", [timed[len(timed) // 2]]), (f"slowest {len(slow)}", slow)):
            steps = [trace_steps(x, r.trace[x.name]) for x in xs]
            mean = [sum(col) / len(col) for col in zip(*steps, strict=True)]
            rows.append((f"pace {ph.pace}, {ph.kind}: {label}",
                         f"{sum(x.ack_ms for x in xs) / len(xs):.1f}", *(f"{v:.1f}" for v in mean)))
    print(f"\n{r.db}, {r.variant}: where an ack's time went (ms, mean over the acks named; serve's stamps)")
    print(table(("phase: acks", "ack", *TRACE_STEPS), rows))
    timed = sorted((x for x in (y for ph in r.phases for y in ph.samples) if x.name in r.trace),
                   key=lambda x: -x.ack_ms)[:12]
    print(f"\n{r.db}, {r.variant}: the 12 slowest acks of the run, one by one (ms; `at`: s since the first)")
    first = min(x.began for ph in r.phases for x in ph.samples)
    print(table(("ack", "at", "ack ms", *TRACE_STEPS),
                [(x.name, f"{x.began - first:.2f}", f"{x.ack_ms:.1f}",
                  *(f"{v:.1f}" for v in trace_steps(x, r.trace[x.name]))) for x in timed]))
    long = [(who, a, b) for who, a, b in r.pauses if b - a > 0.005 and a >= first]
    print(f"\nGarbage collections over 5 ms during the load ({len(long)} of {len(r.pauses)}): "
          + "; ".join(f"{who} at {a - first:.2f} s, {(b - a) * 1000:.0f} ms" for who, a, b in long[:20]))


def phase(pace: str, kind: str, rnd: int, port: int, fake: SlackSink, answers: Answers, s: Seed,
          rng: random.Random, args: argparse.Namespace, pid: int) -> Phase:
    """`threads` clients each send `requests` commands of one kind. Pace `answer`: a client sends
    its next command once the previous one is answered (a person waiting for the reply: 20 in
    flight). Pace `ack`: as soon as it is acked (20 people typing at once, each command from someone
    new; this is how the issue measured from outside, and answers queue up behind the acks)."""
    out = Phase(pace, kind, rnd)
    plans = [[command_text(s, rng, kind) for _ in range(args.requests)] for _ in range(args.threads)]

    def client(t: int) -> list[Sample]:
        sent = []
        for i, text in enumerate(plans[t]):
            x = send(port, fake, answers, f"{pace}{rnd}.{KINDS.index(kind)}-{t}-{i}", kind, text)
            sent.append(settle(answers, x) if pace == "answer" else x)
        return [settle(answers, x) for x in sent] if pace == "ack" else sent

    cpu0, mine0, sink0 = family_cpu_seconds(pid), time.process_time(), fake.cpu_seconds()
    began = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool, collector_off():
        for samples in pool.map(client, range(args.threads)):
            out.samples.extend(samples)
    out.wall_s = time.perf_counter() - began
    out.serve_cpu_s = family_cpu_seconds(pid) - cpu0
    out.client_cpu_s = time.process_time() - mine0
    out.sink_cpu_s = fake.cpu_seconds() - sink0
    return out


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    """No garbage collection in the clients' process during a phase (it runs between phases):
    with the `trace` variant a 100 ms collection of this process, which holds what the seeding
    built, showed as a 100 ms ack on every client at once, the run's 12 slowest acks."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def start_py_spy(directory: str | None, pid: int, db: str) -> list[subprocess.Popen[bytes]]:
    """One py-spy per process of serve's family (its `--subprocesses` missed the forked workers)."""
    if not directory:
        return []
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("(py-spy not installed: no flame graph)", file=sys.stderr)
        return []
    Path(directory).mkdir(parents=True, exist_ok=True)
    procs = []
    for i, p in enumerate(family(pid)):  # collapsed stacks, idle frames included
        out = Path(directory) / f"serve-{db.lower()}{'' if i == 0 else f'-worker{i}'}.txt"
        procs.append(subprocess.Popen([exe, "record", "--pid", str(p), "--threads", "--idle", "--rate", "250",
                                       "--format", "raw", "-o", str(out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"  py-spy → {out}", file=sys.stderr)
    time.sleep(1.0)  # attached before the load starts
    return procs


def stop_py_spy(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def ms(v: float) -> str:
    return f"{v:,.1f} ms"


def p(values: list[float], q: float) -> float:
    return percentile(sorted(values), q)


def report(runs: list[Run], args: argparse.Namespace, out: Figures) -> bool:
    """Targets hold for the shipped code; `before` rows are the baseline of the same run."""
    ok = True
    rows = []
    for r in runs:
        shipped = r.variant == "shipped"
        for ph in r.pooled():
            acks = [x.ack_ms for x in ph.samples]
            ans = [x.answer_ms for x in ph.samples if x.answer_ms is not None]
            ack_ok = p(acks, 0.99) < ACK_TARGET_MS and max(acks) < SLACK_LIMIT_MS
            ans_ok = ph.pace != "answer" or (len(ans) == len(acks) and p(ans, 0.99) < ANSWER_TARGET_MS)
            if shipped:
                ok = ok and ack_ok and ans_ok
                out.add(f"{r.db}, pace {ph.pace}: {ph.kind}, ack p99", ms(p(acks, 0.99)),
                        f"< {ACK_TARGET_MS:.0f} ms (max < {SLACK_LIMIT_MS / 1000:.0f} s)", ack_ok)
                if ph.pace == "answer":
                    out.add(f"{r.db}, pace answer: {ph.kind}, answer p99", ms(p(ans, 0.99)) if ans else "—",
                            f"< {ANSWER_TARGET_MS / 1000:.0f} s", ans_ok)
            rows.append((f"{r.db}, {r.variant}, pace {ph.pace}: {ph.kind}", f"{len(acks):,}",
                         ms(p(acks, 0.5)), ms(p(acks, 0.99)), ms(max(acks)),
                         ms(p(ans, 0.5)) if ans else "—", ms(p(ans, 0.99)) if ans else "—",
                         verdict(ack_ok and ans_ok) if shipped else "(baseline)"))
    print(f"Ack = POST → HTTP 200 (target p99 < {ACK_TARGET_MS:.0f} ms); answer = ack → reply at the "
          f"response_url (target p99 < {ANSWER_TARGET_MS / 1000:.0f} s at pace `answer`, where people wait "
          "for their reply; at pace `ack` it is the queue of every command sent at once):")
    print(table(("database, code, pace: command", "n", "ack p50", "ack p99", "ack max", "answer p50",
                 "answer p99", "result"), rows))

    print(f"\nHeavy / help ack p99, same server, same run, every round's acks together (target ≤ "
          f"{RATIO_TARGET}); the last column is each round alone (200 acks a kind: its p99 is "
          "the 2nd-slowest ack; information):")
    ratios = []
    for r in runs:
        for pace in PACES:
            by = r.ratios(pace)
            worst = max(by.values())
            good = worst <= RATIO_TARGET
            if r.variant == "shipped":
                ok = ok and good
                out.add(f"{r.db}, pace {pace}: heavy / help ack p99, worst", f"{worst:.2f}",
                        f"≤ {RATIO_TARGET}", good)
            alone = [max(r.ratios(pace, rnd).values()) for rnd in range(args.rounds)]
            ratios.append((f"{r.db}, {r.variant}, pace {pace}", *(f"{by[k]:.2f}" for k in HEAVY),
                           f"{worst:.2f}", verdict(good) if r.variant == "shipped" else "(baseline)",
                           " / ".join(f"{v:.2f}" for v in alone)))
    print(table(("database, code, pace", *HEAVY, "worst", "result", "worst per round"), ratios))

    print("\nMemory of the serve process (VmRSS after the load; peak = VmHWM) and of serve with its "
          "answer processes (PSS: a page shared by n processes counts 1/n); the target holds for both:")
    mem = []
    for r in runs:
        good = max(r.rss_after, r.pss_after) < RSS_TARGET_MB
        if r.variant == "shipped":
            ok = ok and good
            out.add(f"{r.db}: serve RSS / with answer processes PSS, after the load",
                    f"{r.rss_after:,.0f} / {r.pss_after:,.0f} MB", f"< {RSS_TARGET_MB:.0f} MB", good)
        mem.append((f"{r.db}, {r.variant}", f"{r.rss_idle:,.0f} MB", f"{r.rss_after:,.0f} MB",
                    f"{r.hwm_after:,.0f} MB", f"{r.pss_after:,.0f} MB", f"< {RSS_TARGET_MB:.0f} MB",
                    verdict(good) if r.variant == "shipped" else "(baseline)"))
    print(table(("database, code", "idle RSS", "RSS after the load", "peak RSS", "PSS, with workers",
                 "target", "result"), mem))
    for r in runs:
        print(f"  {r.db}, {r.variant}, MB per process: {r.pss_parts}")

    print()
    for r in runs:
        print(f"{r.db}, {r.variant}: first command acked in {r.first_ack_ms:.0f} ms; floor (bad signature, "
              f"401) p50 {p(r.floor, 0.5):.1f} ms, p99 {p(r.floor, 0.99):.1f} ms")
        for ph in r.pooled():
            errors = [x for x in ph.samples if x.error or x.status != 200]
            n = len(ph.samples)
            print(f"  pace {ph.pace}, {ph.kind}: {n:,} in {ph.wall_s:.1f} s ({n / ph.wall_s:,.0f}/s), serve "
                  f"{ph.serve_cpu_s:.1f} CPU s ({ph.serve_cpu_s / n * 1000:.1f} ms a command, answer "
                  f"processes included), clients {ph.client_cpu_s:.1f} CPU s, Slack stand-in "
                  f"{ph.sink_cpu_s:.1f} CPU s; {len(errors)} failed"
                  + (f" (e.g. {errors[0].status} {errors[0].error!r})" if errors else ""))
            ok = ok and not errors
            if errors:
                out.add(f"{r.db}, {r.variant}, pace {ph.pace}, {ph.kind}: failed commands", str(len(errors)),
                        "0", False)
        if r.trace:
            print_trace(r)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--hours-per-day", type=int, default=24)
    ap.add_argument("--threads", type=int, default=20, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=None,
                    help="commands per client and phase (default 10: 200 per phase)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of every phase, kinds in a rotated order (default 3: 600 acks a kind)")
    ap.add_argument("--serve-threads", type=int, default=16, help="waitress threads (serve's default)")
    ap.add_argument("--py-spy", metavar="DIR", help="record serve's stacks during the load")
    ap.add_argument("--variants", default="before,shipped",
                    help="comma-separated: shipped, or a what-if/baseline of bench/serve_variant.py "
                         "(before = 8fafb28's answers in the listener threads; pool32, handoff, inline)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 subjects, 7 days, 5 commands each")
    args = ap.parse_args()
    if args.quick:
        args.subjects, args.days = 1_000, 7
    args.requests = args.requests or (3 if args.quick else 10)
    args.rounds = 1 if args.quick else args.rounds
    variants = args.variants.split(",")

    print(f"machine: {machine()}; revision {git_revision()}")
    for v in variants:
        if v != "shipped":
            print(f"VARIANT {v!r}: serve with bench/serve_variant.py's change, not the shipped code")
    print(f"{args.threads} concurrent clients × {args.requests} signed /bedrock commands of one kind "
          f"per phase ({', '.join(KINDS)}), paced by answer then by ack, {args.rounds} round(s) of each, "
          f"{args.subjects:,} subjects, "
          f"{args.days} days × {args.hours_per_day} h of hourly ledger rows\n")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp:
        workdir = Path(tmp)
        for ctx in databases(args.db, workdir, "bench_ack"):
            with ctx as db:
                print(f"{db.name}:", file=sys.stderr)
                s = seed(db.url, args.subjects, args.days, args.hours_per_day)
                gc.collect()
                gc.freeze()  # what the seeding left is never scanned again (see collector_off)
                for v in variants:
                    runs.append(load(db, s, args, workdir, v))
    for r in runs[::len(variants)]:
        print(f"{r.db}: {r.seed.usage_rows:,} ledger rows, seeded in {r.seed.seconds:.0f} s")
    print()
    out = Figures()
    ok = report(runs, args, out)
    print(f"\nat the end: {load_average()}")
    print(json.dumps({f"{r.db} {r.variant}": {f"{ph.pace} {ph.kind}": round(p([x.ack_ms for x in ph.samples],
                                                                                0.99), 1)
                                             for ph in r.pooled()} | {"rss_mb": round(r.rss_after)}
                      for r in runs}))
    code = out.emit()
    return code if ok else 1


if __name__ == "__main__":
    sys.exit(main())
