"""Enforce's evaluation over 2,000 limits on 10k subjects, on SQLite and PostgreSQL (issue 19).

Target: `enforce.evaluate` — the database half of the enforce job, everything it does before
any IAM call (limits read, usage of every limit, alert marks, exceptions, revocations to lift,
breaches planned) — under 0.5 s at 2,000 limits, bot side (the IAM calls of the revocations it
plans come after, with no transaction open, and are not timed here).

Per database: bench/common.py's seed (10k subjects: 9,500 users and 500 teams of 19, one AIP
meter each, `--days` × `--hours-per-day` hourly ledger rows per meter — 24, every hour, by
default: the dense worst case —, a limit on every fifth subject over the six windows in turn —
day, week, month, 24h, 7d, 30d — on tokens or cost, amounts around the usage so that many are
over 80% or 100%). Then, each the median (max) of `--runs`, every run in a fresh session that
is rolled back:

- baseline: `limit_status` called per limit, the pre-issue-19 read (one ledger query per limit,
  through the day rollup, one for a team's members, one for its raises). The old `evaluate`
  did this and more per limit (a mark query per crossed threshold, the team's members,
  exception and revocation queries at 100%): the baseline is a lower bound of the old one;
- `limit_statuses`, hourly rows only: the same statuses read in bulk from the hourly ledger
  alone (`rollup=False`: a 30-day window reads 30 × 24 rows a meter), checked equal;
- `limit_statuses`: the same statuses read in bulk, whole UTC days from the day rollup
  (`usage_daily`, seeded from the hours) and hour edges (`ledger.spans`), checked equal;
- `evaluate`, first run: no alert marks yet, so every crossed threshold is marked and every
  warning reads its users (the run after a month starts looks like this);
- `evaluate`, steady state: the marks of a previous (committed) run exist: the every-minute case.

Statements = SQL statements sent (cursor executes). Exits 1 when an `evaluate` misses the target.

    .venv/bin/python bench/bench_enforce_scale.py [--db both|sqlite|postgres] [--subjects 10000]
        [--days 30] [--hours-per-day 24] [--runs 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from bench.common import (
    BenchDb,
    cpu_seconds,
    databases,
    git_revision,
    load_average,
    machine,
    seed,
    table,
    verdict,
)
from bot.clock import FixedClock
from bot.db import Database
from bot.models import Limit, Subject
from bot.services import enforce
from bot.services.ledger import floor_hour
from bot.services.limit_usage import LimitStatus, limit_status, limit_statuses

TARGET_S = 0.5
TZ = ZoneInfo("Europe/Berlin")
WEEK_START = 0


@dataclass(frozen=True)
class Figure:
    db: str
    what: str
    seconds: list[float]
    cpu: list[float]
    statements: int
    detail: str
    target: bool  # held to TARGET_S

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@contextmanager
def counting(db: Database) -> Iterator[list[int]]:
    n = [0]

    def count(*_: Any) -> None:
        n[0] += 1

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        yield n
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def _pairs(session: Session) -> list[tuple[Limit, Subject]]:
    return list(session.execute(select(Limit, Subject).join(Subject, Subject.id == Limit.subject_id)
                                .order_by(Limit.id)).tuples())


def baseline(session: Session, now: datetime) -> dict[int, LimitStatus]:
    return {limit.id: limit_status(session, limit, subject, now, TZ, WEEK_START)
            for limit, subject in _pairs(session)}


def batch(session: Session, now: datetime, rollup: bool = True) -> dict[int, LimitStatus]:
    return limit_statuses(session, _pairs(session), now, TZ, WEEK_START, rollup)


def timed(db: Database, runs: int, fn: Callable[[Session], Any]
          ) -> tuple[list[float], list[float], int, Any]:
    """`fn` in a fresh session per run, rolled back after: (wall seconds per run, CPU seconds
    per run, statements, last result). CPU = this process's, plus on PostgreSQL the backend
    serving the session (same host): the work itself, whatever else runs on the machine."""
    seconds, cpu, statements, result = [], [], 0, None
    for _ in range(runs):
        session = db.factory()
        try:
            backend = session.execute(text("SELECT pg_backend_pid()")).scalar_one() \
                if db.dialect == "postgresql" else None
            with counting(db) as n:
                cpu0 = time.process_time() + (cpu_seconds(backend) if backend else 0.0)
                began = time.perf_counter()
                result = fn(session)
                seconds.append(time.perf_counter() - began)
                cpu.append(time.process_time() + (cpu_seconds(backend) if backend else 0.0) - cpu0)
            statements = n[0]
        finally:
            session.rollback()
            session.close()
    return seconds, cpu, statements, result


def _evaluation(ev: enforce.Evaluation) -> str:
    return (f"{ev.checked:,} limits: {len(ev.warnings):,} warnings, {len(ev.breaches):,} breaches, "
            f"{len(ev.lifts):,} lifts")


def run_db(bench: BenchDb, args: argparse.Namespace) -> list[Figure]:
    now = floor_hour(datetime.now(UTC)) + timedelta(minutes=37)
    print(f"{bench.name}:", file=sys.stderr)
    seed(bench.url, args.subjects, args.days, args.hours_per_day, now=now)
    db = Database(bench.url)
    clock = FixedClock(now)
    out: list[Figure] = []
    try:
        secs, cpu, n, old = timed(db, args.runs, lambda s: baseline(s, now))
        out.append(Figure(bench.name, "baseline: limit_status per limit", secs, cpu, n,
                          f"{len(old):,} statuses", False))
        secs, cpu, n, hourly = timed(db, args.runs, lambda s: batch(s, now, rollup=False))
        assert hourly == old, "limit_statuses over the hourly rows disagrees with limit_status"
        out.append(Figure(bench.name, "limit_statuses, hourly rows only", secs, cpu, n,
                          "equal to the baseline; no day rollup (before the merge)", False))
        secs, cpu, n, new = timed(db, args.runs, lambda s: batch(s, now))
        assert new == old, "limit_statuses disagrees with limit_status"
        over = sum(s.percent >= 100 for s in new.values())
        out.append(Figure(bench.name, "limit_statuses (bulk)", secs, cpu, n,
                          f"equal to the baseline; {over:,} at ≥ 100%", False))
        evaluate = lambda s: enforce.evaluate(s, clock, TZ, WEEK_START)  # noqa: E731
        secs, cpu, n, ev = timed(db, args.runs, evaluate)
        out.append(Figure(bench.name, "evaluate, first run", secs, cpu, n, _evaluation(ev), True))
        with db.session_scope() as session:  # a previous run's marks, committed
            enforce.evaluate(session, clock, TZ, WEEK_START)
        clock.advance(minutes=1)
        secs, cpu, n, ev = timed(db, args.runs, evaluate)
        out.append(Figure(bench.name, "evaluate, steady state", secs, cpu, n, _evaluation(ev), True))
        for f in out:
            print(f"  {f.what}: {f.median:.3f} s (CPU {statistics.median(f.cpu):.3f} s), "
                  f"{f.statements:,} statements", file=sys.stderr)
    finally:
        db.dispose()
    return out


def report(figures: list[Figure]) -> bool:
    ok = True
    rows = []
    for f in figures:
        base = next(b for b in figures if b.db == f.db and b.what.startswith("baseline"))
        meets = f.median < TARGET_S
        ok = ok and (meets or not f.target)
        rows.append((f.db, f.what, f"{f.median:.3f} s ({max(f.seconds):.3f})",
                     f"{statistics.median(f.cpu):.3f} s",
                     f"< {TARGET_S} s" if f.target else "—", verdict(meets) if f.target else "—",
                     f"{base.median / f.median:.1f}x" if f is not base else "1x",
                     f"{f.statements:,}", f.detail))
    print("CPU = CPU seconds of the bot process and, on PostgreSQL, of its backend (median): the work\n"
          "itself, which wall time exceeds when other processes share the cores.")
    print(table(("database", "what", "seconds median (max)", "CPU s", "target", "result", "vs baseline",
                 "statements", "outcome"), rows))
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    p.add_argument("--subjects", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--hours-per-day", type=int, default=24,
                   help="hours of each day a subject uses Bedrock (24: every hour, the dense worst case)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="1,000 subjects (200 limits), 7 days, 1 run")
    args = p.parse_args()
    if args.quick:
        args.subjects, args.days, args.runs = 1_000, 7, 1
    if args.subjects < 20 or args.days < 1 or args.runs < 1 or not 1 <= args.hours_per_day <= 24:
        p.error("--subjects ≥ 20, --days ≥ 1, --runs ≥ 1, --hours-per-day 1..24")
    print(f"# bench_enforce_scale — {git_revision()}\n{machine()}")
    print(f"{args.subjects:,} subjects, {args.subjects // 5:,} limits, {args.days} days × "
          f"{args.hours_per_day} h of ledger; BOT_TIMEZONE {TZ.key}; median (max) of {args.runs} run(s)\n")
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as work:
        for ctx in databases(args.db, work, "bench_enforce"):
            with ctx as bench:
                figures += run_db(bench, args)
    ok = report(figures)
    print(f"\n{load_average()} (after the run)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
