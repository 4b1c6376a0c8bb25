"""Daily digest over 10k subjects × 30 days of hourly ledger rows, on PostgreSQL (target < 1 s).

Seeds a private schema (created, migrated with `bot.migrate.upgrade`, dropped at the end):
9,500 users and 500 teams of 19 members (10,000 subjects, one AIP meter each), 30 days of
hourly usage for every meter (7.2M rows, stored hour by hour as the sync writes them;
`--hours-per-day 8` for a sparser 2.4M), limits on 1 subject in 5 (2,000, the six windows in
turn; `--limits-every 1` puts one on every subject, the worst case), 100 active revocations
and 30 pending restore requests. Rows are generated server-side (INSERT … SELECT
generate_series, with the indexes and the foreign key put back afterwards, then VACUUM
ANALYZE as autovacuum would): faster than streaming 7.2M rows through COPY. The UTC-day
rollup `usage_daily` is filled from them as migration 0013's backfill does (INSERT … SELECT …
GROUP BY, server-side). Then times `build_digest` reading the rollup and, as the baseline in
the same run (interleaved, so both see the same load), `build_digest(rollup=False)` reading
the hourly rows alone (the code before the rollup); checks both give the same digest; times
`digest_blocks` and the chart; median of `--runs`. Exits 1 when a target is missed.
`--baseline REV` also times `build_digest` as `bot/services/digest.py` is at git revision
REV (the rest of the code as it is now), interleaved with the current one (turn about, which
goes first), and checks it gives the same digest.

    .venv/bin/python bench/bench_digest.py [--subjects 10000] [--days 30] [--hours-per-day 24]
                                           [--runs 5] [--limits-every 5] [--baseline main]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text

from bot.db import Database
from bot.migrate import upgrade
from bot.render.digest import digest_blocks, digest_chart
from bot.services import digest as digest_service
from bot.services.digest import DigestData
from bot.services.ledger import VALUE_COLS

PG_BASE = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)  # 09:00 in Berlin: digest time
TZ = ZoneInfo("Europe/Berlin")
TARGET_S = 1.0
TEAM_SIZE = 19


def seed(url: str, subjects: int, days: int, hours_per_day: int, limits_every: int = 5) -> int:
    teams = subjects // (TEAM_SIZE + 1)
    users = subjects - teams
    start = NOW - timedelta(days=days)
    params = {"users": users, "teams": teams, "now": NOW.replace(tzinfo=None),
              "start": start.replace(tzinfo=None), "hpd": hours_per_day}
    eng = create_engine(url)
    with eng.begin() as c:
        c.execute(text("SELECT setseed(0.42)"))
        c.execute(text("""
            INSERT INTO subjects (id, kind, name, slack_user_id, created_by, created_at)
            SELECT i, 'user', 'user' || lpad(i::text, 5, '0'), 'U' || lpad(i::text, 9, '0'), 'bench', :start
            FROM generate_series(1, :users) i
            UNION ALL
            SELECT :users + i, 'team', 'team-t' || lpad(i::text, 4, '0'), NULL, 'bench', :start
            FROM generate_series(1, :teams) i"""), params)
        c.execute(text("SELECT setval(pg_get_serial_sequence('subjects', 'id'), :n)"), {"n": subjects})
        c.execute(text("""
            INSERT INTO team_members (team_id, user_id, added_by, added_at)
            SELECT :users + 1 + (u - 1) / :size, u, 'bench', :start
            FROM generate_series(1, :users) u WHERE (u - 1) / :size < :teams"""),
                  params | {"size": TEAM_SIZE})
        c.execute(text("""
            INSERT INTO meters (id, kind, key, subject_id, created_at)
            SELECT id, 'profile', 'aip' || lpad(id::text, 9, '0'), id, :start FROM subjects"""), params)
        c.execute(text("SELECT setval(pg_get_serial_sequence('meters', 'id'), :n)"), {"n": subjects})
        # Load without the indexes and the foreign key, then put them back (same final schema).
        c.execute(text("ALTER TABLE usage DROP CONSTRAINT fk_usage_meter_id_meters"))
        c.execute(text("ALTER TABLE usage DROP CONSTRAINT pk_usage"))
        c.execute(text("DROP INDEX ix_usage_hour"))
        # A skewed load: meter m uses (m % 97 + 1) × ~1k input tokens an hour, output a tenth;
        # $3 / $15 per million tokens. A subject is active `hpd` hours of each day.
        c.execute(text("""
            INSERT INTO usage (meter_id, hour, input_tokens, output_tokens, cache_read_tokens,
                               cache_write_tokens, requests, cost_micro_usd, updated_at)
            SELECT m.id, h, t.i, t.i / 10, 0, 0, 1 + t.i / 2000, t.i * 3 + (t.i / 10) * 15, :now
            FROM meters m
            CROSS JOIN generate_series(:start, :now - interval '1 hour', interval '1 hour') h
            CROSS JOIN LATERAL (SELECT (random() * 2000 * (m.id % 97 + 1))::bigint AS i) t
            WHERE (extract(hour FROM h)::int + m.id) % 24 < :hpd
            ORDER BY h, m.id"""), params)
        c.execute(text("ALTER TABLE usage ADD CONSTRAINT pk_usage PRIMARY KEY (meter_id, hour)"))
        c.execute(text("CREATE INDEX ix_usage_hour ON usage (hour)"))
        c.execute(text("""ALTER TABLE usage ADD CONSTRAINT fk_usage_meter_id_meters FOREIGN KEY (meter_id)
                          REFERENCES meters (id) ON DELETE CASCADE"""))
        cols = ", ".join(VALUE_COLS)
        c.execute(text(f"""
            INSERT INTO usage_daily (meter_id, day, {cols})
            SELECT meter_id, date_trunc('day', hour), {", ".join(f"sum({x})" for x in VALUE_COLS)}
            FROM usage GROUP BY 1, 2 ORDER BY 2, 1"""))
        # A limit on every 5th subject (2,000), the six windows in turn, amounts around their
        # usage so that a share of them sits above 80%.
        c.execute(text("""
            INSERT INTO limits (subject_id, metric, amount, "window", warn, action, alarm, created_by,
                                created_at, updated_at)
            SELECT s, CASE WHEN s % 3 = 0 THEN 'cost_usd' ELSE 'tokens' END,
                   ((s % 97 + 1) * 1100 * 24 * CASE w WHEN 'day' THEN 1 WHEN '24h' THEN 1 WHEN 'week' THEN 5
                        WHEN '7d' THEN 7 ELSE 25 END * CASE WHEN s % 3 = 0 THEN 4.6 ELSE 1 END
                        * (0.7 + random() * 1.5))::bigint,
                   w, '[80, 90]', 'revoke', false, 'bench', :start, :start
            FROM generate_series(1, :n, :every) s
            CROSS JOIN LATERAL (
                SELECT (ARRAY['day', 'week', 'month', '24h', '7d', '30d'])[1 + (s / :every) % 6] AS w) x
            """), params | {"n": subjects, "every": limits_every})
        c.execute(text("""
            INSERT INTO revocations (subject_id, reason, note, state, revoked_by, revoked_at, principals)
            SELECT s, 'limit', 'tokens/day', 'active', 'system:enforce', :now - (s || ' minutes')::interval,
                   '[]'
            FROM generate_series(3, 300, 3) s"""), params)
        c.execute(text("""
            INSERT INTO restore_requests (revocation_id, requester, reason, status, decision_note, created_at,
                                          expires_at)
            SELECT id, 'U' || lpad(subject_id::text, 9, '0'), 'deadline today', 'pending', '',
                   :now - interval '2 hours', :now + interval '22 hours'
            FROM revocations ORDER BY id LIMIT 30"""), params)
        rows = int(c.execute(text("SELECT count(*) FROM usage")).scalar_one())
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE"))
    eng.dispose()
    return rows


def digest_at(rev: str):  # type: ignore[no-untyped-def]
    """bot/services/digest.py as it is at git revision `rev`, loaded as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(root), "show", f"{rev}:bot/services/digest.py"],
                         capture_output=True, text=True, check=True).stdout
    name = f"digest_at_{rev.replace('/', '_').replace('-', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(src, f"{rev}:bot/services/digest.py", "exec"), module.__dict__)
    return module


def timed(fn, runs: int):  # type: ignore[no-untyped-def]
    out, times = None, []
    for _ in range(runs):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return out, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--hours-per-day", type=int, default=24)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--limits-every", type=int, default=5,
                    help="a limit on every n-th subject (1: every subject, the worst case)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also time build_digest as bot/services/digest.py is at this git revision")
    args = ap.parse_args()
    before = digest_at(args.baseline) if args.baseline else None

    schema = f"bench_digest_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    db: Database | None = None
    try:
        upgrade(url)
        began = time.perf_counter()
        rows = seed(url, args.subjects, args.days, args.hours_per_day, args.limits_every)
        seeded = time.perf_counter() - began
        n_limits = -(-args.subjects // args.limits_every)
        print(f"seeded {args.subjects:,} subjects, {rows:,} hourly ledger rows "
              f"({args.days} days × {args.hours_per_day} h/day), {n_limits:,} limits (1 subject in "
              f"{args.limits_every}), in {seeded:.0f} s; "
              f"PostgreSQL, schema {schema}\n")

        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work on the box inflates "
              f"wall times)\n")
        db = Database(url)

        def build(rollup: bool, module: Any = digest_service) -> DigestData:
            assert db is not None
            with db.session_scope() as s:
                return module.build_digest(s, NOW, TZ, 0, rollup=rollup)

        t_build: list[float] = []
        t_base: list[float] = []
        t_rev: list[float] = []
        data = base = at_rev = None
        for i in range(args.runs):  # interleaved: every path under the same load
            base, (t,) = timed(lambda: build(False), 1)
            t_base.append(t)
            for current in ((True, False) if i % 2 else (False, True)):
                if current:
                    data, (t,) = timed(lambda: build(True), 1)
                    t_build.append(t)
                elif before is not None:
                    at_rev, (t,) = timed(lambda: build(True, before), 1)
                    t_rev.append(t)
        assert data is not None and base is not None
        same = data == base and (at_rev is None or dataclasses.asdict(at_rev) == dataclasses.asdict(data))
        _, t_blocks = timed(lambda: digest_blocks(data, TZ), args.runs)
        _, t_chart = timed(lambda: digest_chart(data), args.runs)
        med = {k: statistics.median(v) for k, v in
               (("build", t_build), ("base", t_base), ("blocks", t_blocks), ("chart", t_chart))}
        total = med["build"] + med["blocks"] + med["chart"]

        target = f"< {TARGET_S:g} s"
        rows_out = [
            (f"baseline: hourly rows only, median of {args.runs}", "—", med["base"], None),
            *([(f"baseline: build_digest at {args.baseline}, median of {args.runs}", "—",
                statistics.median(t_rev), None)] if t_rev else []),
            ("build_digest with the rollup, first run", target, t_build[0], TARGET_S),
            (f"build_digest with the rollup, median of {args.runs}", target, med["build"], TARGET_S),
            (f"digest_blocks, median of {args.runs}", "—", med["blocks"], None),
            (f"chart PNG 1200×600, median of {args.runs}", "—", med["chart"], None),
            ("digest end to end (build + blocks + chart)", target, total, TARGET_S),
        ]
        print(f"{'figure':<50} {'target':>7} {'measured':>10}  result")
        print("-" * 78)
        ok = same
        for name, tgt, measured, limit in rows_out:
            verdict = "—" if limit is None else ("pass" if measured < limit else "MISS")
            ok = ok and verdict != "MISS"
            print(f"{name:<50} {tgt:>7} {measured * 1000:>8.0f} ms  {verdict}")
        print(f"\nspeed-up of build_digest over the hourly baseline: {med['base'] / med['build']:.1f}x"
              + (f", over {args.baseline}: {statistics.median(t_rev) / med['build']:.2f}x" if t_rev else "")
              + f"; the same digest from all: {'yes' if same else 'NO (a bug: exit 1)'}")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average after the runs: {load}")
        print(f"\ndigest for {data.day}: {data.totals.tokens:,} tokens, "
              f"${data.totals.cost_micro_usd / 1e6:,.2f}; {len(data.subjects):,} subjects with usage, "
              f"{len(data.at_risk):,} limits ≥80%, {len(data.revocations)} revoked, "
              f"{len(data.requests)} pending; chart series: {', '.join(data.chart.series)}")
        return 0 if ok else 1
    finally:
        if db is not None:
            db.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
