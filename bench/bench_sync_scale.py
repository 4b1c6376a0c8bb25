"""Usage sync at scale: 10k active AIPs, CloudWatch answered by a stub, on SQLite and PostgreSQL.

Targets (DESIGN.md §6): GetMetricData calls per sync ≤ ⌈3 × active profiles / 500⌉; a sync of 10k
active profiles < 5 s on the bot's side.

Per database: seed 10k subjects, AIPs and meters with 30 days of hourly ledger history
(bench/common.py), leave the sync cursor at the current hour (the steady state: every profile
backfilled, the previous sync a minute ago), then run `sync_usage` — the `usage_sync` job's
flow: a short planning transaction, then with none open discovery through a profiles backend
that lists every AIP (all known), ListMetrics, GetMetricData for the previous and current hour,
then the recording transaction (ledger rows, upsert, commit) — `--syncs` times a
minute apart, with 100, 1,000 and 10,000 of the profiles active. CloudWatch is
bench_sync_calls.FakeCloudWatch: ListMetrics pages of 500, every active profile publishing the three
token metrics, GetMetricData answering hourly sums. Bot seconds = wall time minus time inside the stub;
upsert seconds = time in `ledger.upsert`; SQL seconds = time in cursor.execute (upsert included);
commit seconds = time in the sync's session commits (before_commit to after_commit).
The monthly CloudWatch bill is computed from the metrics actually requested. Then `enforce` (the
job that follows every sync) over the seeded 2,000 limits, with an IAM stub, for information.

`--variant executemany` measures a what-if, not the shipped code: `ledger.upsert` sending one cached
single-row INSERT … ON CONFLICT as an executemany, instead of compiling a 2,000-row multi-VALUES
statement per chunk.

    .venv/bin/python bench/bench_sync_scale.py [--db both|sqlite|postgres] [--profiles 10000]
        [--days 30] [--syncs 3] [--latency-ms 0] [--variant shipped|executemany] [--quick] [--adaptive]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from math import ceil
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from bench.bench_sync_calls import (
    SYNC_SECONDS,
    SYNCS_PER_MONTH,
    USD_PER_1K_METRICS,
    USD_PER_1K_REQUESTS,
    FakeCloudWatch,
)
from bench.common import (
    ACCOUNT,
    BenchDb,
    Figures,
    databases,
    git_revision,
    load_average,
    machine,
    profile_id,
    seed,
    table,
    verdict,
)
from bot.aws.profiles import InferenceProfileInfo
from bot.clock import FixedClock
from bot.config import load_settings
from bot.flows.usage_sync import cadence_of, sync_usage
from bot.models import Profile, SyncCursor
from bot.runtime import Services, build_services
from bot.services import ledger
from bot.services.ledger import LedgerRow, floor_hour
from bot.services.usage import CURSOR, SyncResult
from jobs import enforce

BOT_TARGET_S = 5.0
SIZES = (100, 1_000, 10_000)


class ListingBackend:
    """A profiles backend whose listing is every seeded AIP (all known: no tag look-ups)."""

    def __init__(self, infos: list[InferenceProfileInfo]) -> None:
        self.infos = infos

    def list_application(self) -> list[InferenceProfileInfo]:
        return list(self.infos)

    def tags_of(self, arn: str) -> dict[str, str]:
        raise AssertionError(f"every AIP is known; no tags should be read ({arn})")


class SlowCloudWatch(FakeCloudWatch):
    """The stub, each call taking `latency` seconds more (counted as time in the stub)."""

    def __init__(self, latency: float) -> None:
        super().__init__(0)
        self.latency = latency

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self._wait()
        return super().get_metric_data(**request)

    def list_metrics(self, **request: Any) -> dict[str, Any]:
        self._wait()
        return super().list_metrics(**request)

    def _wait(self) -> None:
        if self.latency:
            time.sleep(self.latency)
            self.seconds += self.latency


class StubIam:
    """Counts IAM calls and answers empty: the seeded subjects have no principals to put a deny on."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        def call(**_: Any) -> dict[str, Any]:
            self.calls[name] = self.calls.get(name, 0) + 1
            return {}

        return call


@dataclass
class SyncFigures:
    db: str
    active: int
    result: SyncResult
    wall_s: float
    cloudwatch_s: float
    upsert_s: float
    upsert_sql_s: float  # of upsert_s, in cursor.execute
    sql_s: float  # every cursor.execute, the upsert's included
    commit_s: float
    longest_tx_s: float  # the longest transaction (on SQLite: the writer lock held)

    @property
    def bot_s(self) -> float:
        return self.wall_s - self.cloudwatch_s

    @property
    def queries(self) -> int:
        return 3 * self.active  # three token metrics per active profile, as the stub publishes


def upsert_executemany(session: Session, rows: Sequence[LedgerRow], now: datetime) -> int:
    """Was a what-if; `ledger.upsert` ships it now, so both variants measure the same code."""
    return ledger.upsert(session, rows, now)


class Timers:
    """Seconds in `ledger.upsert`, in cursor.execute (in and outside the upsert) and in session
    commits, while installed."""

    def __init__(self, services: Services, variant: str = "shipped") -> None:
        self.upsert_s = 0.0
        self.sql_s = 0.0
        self.upsert_sql_s = 0.0
        self.commit_s = 0.0
        self._commit_began = 0.0
        self.longest_tx_s = 0.0
        self._in_upsert = False
        self._original = ledger.upsert
        self._engine = services.db.engine
        measured = upsert_executemany if variant == "executemany" else ledger.upsert

        def upsert(*args: Any, **kwargs: Any) -> int:
            began = time.perf_counter()
            self._in_upsert = True
            try:
                return measured(*args, **kwargs)
            finally:
                self._in_upsert = False
                self.upsert_s += time.perf_counter() - began

        self._upsert = upsert

    def _before(self, conn: Any, *_: Any) -> None:
        conn.info["bench_began"] = time.perf_counter()

    def _after(self, conn: Any, *_: Any) -> None:
        took = time.perf_counter() - conn.info.pop("bench_began", time.perf_counter())
        self.sql_s += took
        if self._in_upsert:
            self.upsert_sql_s += took

    def _before_commit(self, _session: Session) -> None:
        self._commit_began = time.perf_counter()

    def _after_commit(self, session: Session) -> None:
        self.commit_s += time.perf_counter() - self._commit_began
        self._tx_end(session)

    def _tx_begin(self, session: Session, *_: Any) -> None:
        session.info["bench_tx_began"] = time.perf_counter()

    def _tx_end(self, session: Session) -> None:
        began = session.info.pop("bench_tx_began", None)
        if began is not None:
            self.longest_tx_s = max(self.longest_tx_s, time.perf_counter() - began)

    def __enter__(self) -> Timers:
        ledger.upsert = self._upsert  # type: ignore[assignment]
        event.listen(self._engine, "before_cursor_execute", self._before)
        event.listen(self._engine, "after_cursor_execute", self._after)
        event.listen(Session, "before_commit", self._before_commit)
        event.listen(Session, "after_commit", self._after_commit)
        event.listen(Session, "after_begin", self._tx_begin)
        event.listen(Session, "after_rollback", self._tx_end)
        return self

    def __exit__(self, *exc: object) -> None:
        ledger.upsert = self._original  # type: ignore[assignment]
        event.remove(self._engine, "before_cursor_execute", self._before)
        event.remove(self._engine, "after_cursor_execute", self._after)
        event.remove(Session, "before_commit", self._before_commit)
        event.remove(Session, "after_commit", self._after_commit)
        event.remove(Session, "after_begin", self._tx_begin)
        event.remove(Session, "after_rollback", self._tx_end)


ADAPTIVE = False  # --adaptive


def one_sync(services: Services, clock: FixedClock, fake: FakeCloudWatch, backend: ListingBackend,
             db: str, active: int, variant: str) -> SyncFigures:
    fake.seconds = 0.0
    with Timers(services, variant) as timers:
        began = time.perf_counter()
        cadence = cadence_of(services) if ADAPTIVE else None
        result = sync_usage(services.db, clock, services.metrics, backend, services.prices, discover=True,
                            cadence=cadence)
        ended = time.perf_counter()
    # adaptive: the planner skips profiles far from their limits (the figures include its queries)
    assert ADAPTIVE or (result.active == active and result.rows == 2 * active), result
    return SyncFigures(db, active, result, ended - began, fake.seconds, timers.upsert_s, timers.upsert_sql_s,
                       timers.sql_s, timers.commit_s, timers.longest_tx_s)


def run_db(db: BenchDb, args: argparse.Namespace) -> tuple[list[SyncFigures], list[tuple[str, str]]]:
    now = floor_hour(datetime.now(UTC)) + timedelta(minutes=37)
    print(f"{db.name}:", file=sys.stderr)
    seed(db.url, args.profiles, args.days, 24, now=now)
    clock = FixedClock(now)
    iam = StubIam()
    settings = load_settings(None, DATABASE_URL=db.url, BOT_PROFILES_BACKEND="local")
    fake = SlowCloudWatch(args.latency_ms / 1000)
    services = build_services(settings, clock=clock, cloudwatch=fake, iam=iam, account_id=ACCOUNT)
    out: list[SyncFigures] = []
    notes: list[tuple[str, str]] = []
    try:
        with services.db.session_scope() as session:  # the previous sync ran this hour
            session.add(SyncCursor(name=CURSOR, position=floor_hour(now), updated_at=now))
            infos = [InferenceProfileInfo(p.profile_id, p.arn, p.name, p.model_source, (p.model_source,),
                                          "ACTIVE", "APPLICATION") for p in session.scalars(select(Profile))]
        backend = ListingBackend(infos)
        for active in [n for n in args.sizes if n <= args.profiles]:
            fake.ids = [profile_id(m) for m in range(1, active + 1)]
            for _ in range(args.syncs):
                clock.advance(minutes=1)
                out.append(one_sync(services, clock, fake, backend, db.name, active, args.variant))
                print(f"  {active:,} active: sync {out[-1].bot_s:.2f} s bot side", file=sys.stderr)
        for label in ("first run", "steady state"):
            began = time.perf_counter()
            res = enforce.run(services)
            seconds = time.perf_counter() - began
            assert res.ok and res.value is not None, res.message
            notes.append((f"{db.name}: enforce after the sync, {label}",
                          f"{seconds:.2f} s for {res.value.checked:,} limits "
                          f"({len(res.value.warnings)} warnings, {len(res.value.breaches)} revocations; "
                          f"IAM calls {sum(iam.calls.values())})"))
            clock.advance(minutes=1)
    finally:
        services.db.dispose()
    return out, notes


def s_(v: float) -> str:
    return f"{v:.2f} s"


def _median(runs: list[SyncFigures], get: Callable[[SyncFigures], float]) -> float:
    return statistics.median(get(f) for f in runs)


def report(figures: list[SyncFigures], notes: Sequence[tuple[str, str]], out: Figures) -> bool:
    ok = True
    rows = []
    keys = sorted({(f.db, f.active) for f in figures}, key=lambda k: (k[0] != "SQLite", k[1]))
    for db, active in keys:
        runs = [f for f in figures if (f.db, f.active) == (db, active)]
        bot = _median(runs, lambda f: f.bot_s)
        calls = max(f.result.calls.get("GetMetricData", 0) for f in runs)
        target_calls = ceil(3 * active / 500)
        meets_calls, meets_time = calls <= target_calls, bot < BOT_TARGET_S
        ok = ok and meets_calls and meets_time
        out.add(f"{db}, {active:,} active: GetMetricData calls", str(calls), f"≤ {target_calls}", meets_calls)
        out.add(f"{db}, {active:,} active: bot side of one sync (median)", s_(bot), f"< {BOT_TARGET_S:.0f} s",
                meets_time)
        upsert, upsert_sql = _median(runs, lambda f: f.upsert_s), _median(runs, lambda f: f.upsert_sql_s)
        other_sql = _median(runs, lambda f: f.sql_s - f.upsert_sql_s)
        python = _median(runs, lambda f: f.bot_s - f.upsert_s - (f.sql_s - f.upsert_sql_s) - f.commit_s)
        rows.append((f"{db}, {active:,} active", f"{calls} (≤ {target_calls})", verdict(meets_calls),
                     f"{2 * active:,}", f"{s_(bot)} ({s_(max(f.bot_s for f in runs))})",
                     f"< {BOT_TARGET_S:.0f} s", verdict(meets_time), f"{s_(upsert)} ({s_(upsert_sql)})",
                     s_(other_sql), s_(_median(runs, lambda f: f.commit_s)), s_(python),
                     s_(_median(runs, lambda f: f.longest_tx_s)),
                     s_(_median(runs, lambda f: f.cloudwatch_s))))
    print("One sync (previous + current hour); seconds are the median (max) of the syncs, bot = wall − "
          "time in the CloudWatch stub;\nupsert = `ledger.upsert` (its SQL execute in brackets); other SQL = "
          "every other cursor.execute; Python = the rest; longest tx = the longest transaction of the sync\n"
          "(on SQLite the writer lock is held that long; before issue 13 the sync was one transaction, "
          "bot s + in stub):")
    print(table(("database, profiles", "GMD calls", "calls", "rows", "bot s", "target", "result",
                 "upsert (SQL)", "other SQL", "commit", "Python", "longest tx", "in stub"), rows))

    print(f"\nCloudWatch per sync, and the bill at one sync every {SYNC_SECONDS} s ({SYNCS_PER_MONTH:,} a "
          f"month): GetMetricData ${USD_PER_1K_METRICS} per 1,000 metrics requested; the naive baseline is "
          f"one GetMetricStatistics call per metric, ${USD_PER_1K_REQUESTS} per 1,000 calls:")
    bill = []
    for active in sorted({f.active for f in figures}):
        f = next(x for x in figures if x.active == active)
        calls = f.result.calls.get("GetMetricData", 0)
        naive = f.queries
        ours = f.queries * SYNCS_PER_MONTH / 1000 * USD_PER_1K_METRICS
        theirs = naive * SYNCS_PER_MONTH / 1000 * USD_PER_1K_REQUESTS
        bill.append((f"{active:,}", f"{f.queries:,}", f"{calls:,}", f"{naive:,}",
                     f"{naive / calls:,.0f}x fewer", f"${ours:,.2f}", f"${theirs:,.2f}",
                     f"{theirs / ours:.1f}x", f"${ours * SYNC_SECONDS / 300:,.2f}"))
    print(table(("active profiles", "metrics / sync", "GMD calls / sync", "naive calls / sync",
                 "calls vs naive", "GMD $ / month", "naive $ / month", "bill vs naive",
                 "GMD $ / month, sync every 300 s"), bill))

    if notes:
        print()
        print(table(("figure (no target)", "measured"), notes))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("--profiles", type=int, default=10_000, help="AIPs (and subjects) in the database")
    ap.add_argument("--days", type=int, default=30, help="days of hourly ledger history already stored")
    ap.add_argument("--syncs", type=int, default=3, help="syncs per size, a minute apart")
    ap.add_argument("--sizes", type=lambda v: tuple(int(x) for x in v.split(",")), default=SIZES,
                    help="active profiles, comma-separated (default 100,1000,10000)")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="added to every CloudWatch call (real calls take tens to hundreds of ms)")
    ap.add_argument("--variant", choices=("shipped", "executemany"), default="shipped",
                    help="what-if: ledger.upsert as an executemany (see the docstring)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1,000 profiles, 2 days of history")
    ap.add_argument("--adaptive", action="store_true",
                    help="adaptive polling on (docs/usage-sync.md): the plan computes every limit's headroom")
    args = ap.parse_args()
    global ADAPTIVE
    ADAPTIVE = args.adaptive
    if args.quick:
        args.profiles, args.days = 1_000, 2

    print(f"machine: {machine()}; revision {git_revision()}")
    if args.variant != "shipped":
        print(f"VARIANT {args.variant!r}: ledger.upsert replaced by a what-if, not the shipped code")
    print(f"{args.profiles:,} AIPs with {args.days} days of hourly ledger history; "
          f"{args.syncs} syncs per size\n")
    figures: list[SyncFigures] = []
    notes: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        for ctx in databases(args.db, tmp, "bench_sync"):
            with ctx as db:
                f, n = run_db(db, args)
                figures += f
                notes += n
    out = Figures()
    ok = report(figures, notes, out)
    print(f"\nat the end: {load_average()}")
    code = out.emit()
    return code if ok else 1


if __name__ == "__main__":
    sys.exit(main())
