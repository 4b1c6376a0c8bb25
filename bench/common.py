"""Shared by the benchmarks: the machine line, result tables, private databases, the 10k-subject seed.

Not a benchmark itself (no `bench_` prefix, so `make bench` skips it). Import it after putting the
repo root on `sys.path`:  `from bench.common import ...`.

The seed is one shape for every bench that needs a populated database:

- `subjects` users and teams: one team per 20 subjects (`team-t0001`…, 19 members each), the rest
  users (`user00001`…); every second user has a Slack id (`U000000002`, `U000000004`, …);
- one AIP per subject (`profiles`, model Claude 3 Haiku) and its `profile` meter (same id);
- a limit on every fifth subject, over all six windows in turn;
- `days` × `hours_per_day` hourly ledger rows per meter, ending with the hour before `now`;
  subject m is active in the hours h with (h + m) % 24 < hours_per_day, so every hour of the day
  has the same number of active meters. 10k subjects × 30 days × 24 h = 7.2M rows;
- their UTC-day rollup (`usage_daily`, one row per meter and day), summed from those rows in
  the database (INSERT … SELECT … GROUP BY), as `ledger`'s writes keep it.

PostgreSQL is loaded with COPY (indexes and the foreign key dropped first and put back after,
then ANALYZE); SQLite with executemany in one transaction (ix_usage_hour rebuilt after).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot.migrate import upgrade
from bot.services.ledger import VALUE_COLS

ROOT = Path(__file__).resolve().parents[1]
PG_BASE = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ACCOUNT = "123456789012"
TEAM_EVERY = 20  # one subject in 20 is a team of 19 users
WINDOWS = ("day", "week", "month", "24h", "7d", "30d")
_SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME storage format


# ---- the machine and the tables -------------------------------------------------------------


def machine() -> str:
    """One line: CPU model, cores, RAM, OS, Python, SQLite, PostgreSQL (when it answers)."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        ram = f"{kb / 1024 / 1024:.0f} GiB"
    pg = "PostgreSQL unavailable"
    with contextlib.suppress(Exception):
        eng = create_engine(PG_BASE)
        with eng.connect() as c:
            pg = "PostgreSQL " + str(c.execute(text("SHOW server_version")).scalar_one()).split()[0]
        eng.dispose()
    return (f"{cpu}, {os.cpu_count()} cores, {ram} RAM; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
            f"SQLite {sqlite3.sqlite_version}, {pg}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
            f"{load_average()}")


def load_average() -> str:
    """The 1-minute load average: anything else running on a small machine shows in every figure."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "load unknown"
    busy = " (machine busy: figures are pessimistic)" if one > 0.5 * (os.cpu_count() or 1) else ""
    return f"load average {one:.2f}{busy}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable in a terminal too): first column left, the rest right-aligned."""
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB, from /proc/<pid>/status (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()

    def field(name: str) -> float:
        m = re.search(rf"^{name}:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) / 1024 if m else float("nan")

    return field("VmRSS"), field("VmHWM")


def family(pid: int) -> list[int]:
    """`pid` and its descendants (serve forks its answer processes), from /proc (Linux)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """Rss, Pss and Uss (private pages) of one process in MiB, from /proc/<pid>/smaps_rollup."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()

    def kb(name: str) -> int:
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) if m else 0

    return {"rss": kb("Rss") / 1024, "pss": kb("Pss") / 1024,
            "uss": (kb("Private_Clean") + kb("Private_Dirty")) / 1024}


def pss_mb(pid: int) -> tuple[float, str]:
    """Proportional set size of `pid` and its descendants together, in MiB (each page shared by
    n of them counts 1/n, so forked workers sharing the parent's pages are not counted twice),
    and each one's RSS/PSS/USS as text."""
    total, parts = 0.0, []
    for p in family(pid):
        with contextlib.suppress(OSError):
            m = memory_mb(p)
            total += m["pss"]
            parts.append(f"{p}: RSS {m['rss']:.0f}, PSS {m['pss']:.0f}, USS {m['uss']:.0f}")
    return total, "; ".join(parts)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def family_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (serve's answer processes) together."""
    total = 0.0
    for p in family(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


# ---- figures `make bench` collects --------------------------------------------------------

FIGURE_PREFIX = "FIGURE"  # a reported line: FIGURE<TAB>bench<TAB>figure<TAB>value<TAB>target<TAB>result


@dataclass
class Figures:
    """What a bench reports to `make bench`: each figure with its value, target and result.

        report = Figures()                              # the bench's name: the script's file name
        report.add("PostgreSQL, 8 threads", f"{rate:,.0f}/s", "≥ 1,000/s", rate >= 1000)
        report.add("commit (WAL flush)", f"{ms:.2f} ms")  # no target: shown as info
        return report.emit()                            # 0, or 1 when a figure missed

    `emit()` prints one `FIGURE` line per figure (tab-separated, after the bench's own tables) and,
    when `BENCH_FIGURES` names a file, appends the same lines there: `make bench` sets it and
    `bench/summary.py` turns it into the final table. A bench that reports no figure and exits
    non-zero shows in that table as failed."""

    bench: str = ""
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bench = self.bench or Path(sys.argv[0]).stem

    def add(self, figure: str, value: str, target: str = "", ok: bool | None = None) -> bool:
        """Record one figure; `ok` None means no target (info). Returns `ok` (True when None)."""
        result = "info" if ok is None else verdict(ok)
        self.rows.append((_cell(figure), _cell(value), _cell(target or "—"), result))
        return ok is not False

    @property
    def missed(self) -> bool:
        return any(r[3] == "MISS" for r in self.rows)

    def lines(self) -> list[str]:
        return ["\t".join((FIGURE_PREFIX, self.bench, *row)) for row in self.rows]

    def emit(self) -> int:
        lines = self.lines()
        print()
        print("\n".join(lines), flush=True)
        out = os.environ.get("BENCH_FIGURES")
        if out:
            with open(out, "a", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
        return 1 if self.missed else 0


def _cell(text: str) -> str:
    return " ".join(str(text).split())  # no tabs or newlines inside a field


# ---- private databases ---------------------------------------------------------------------


@dataclass
class BenchDb:
    name: str  # "SQLite" | "PostgreSQL"
    url: str


@contextlib.contextmanager
def sqlite_db(workdir: str | Path) -> Iterator[BenchDb]:
    path = Path(workdir) / f"bench-{uuid.uuid4().hex[:8]}.db"
    try:
        yield BenchDb("SQLite", f"sqlite:///{path}")
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def postgres_db(prefix: str) -> Iterator[BenchDb]:
    """A schema of its own in the test database, dropped at the end whatever happens."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield BenchDb("PostgreSQL", f"{PG_BASE}?options=-csearch_path%3D{schema}")
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def postgres_available() -> bool:
    try:
        eng = create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        return False


def databases(which: str, workdir: str | Path,
              prefix: str) -> Iterator[contextlib.AbstractContextManager[BenchDb]]:
    """The database contexts `--db sqlite|postgres|both` asks for (PostgreSQL skipped, with a note,
    when nothing answers at BENCH_POSTGRES_URL)."""
    if which in ("sqlite", "both"):
        yield sqlite_db(workdir)
    if which in ("postgres", "both"):
        if postgres_available():
            yield postgres_db(prefix)
        else:
            print(f"(PostgreSQL skipped: nothing answers at {PG_BASE})", file=sys.stderr)


# ---- the seed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    subjects: int
    users: int
    teams: int
    usage_rows: int
    seconds: float
    now: datetime  # the ledger ends with the hour before this one

    def user_ids_with_slack(self) -> list[str]:
        return [slack_id(i) for i in range(2, self.users + 1, 2)]

    def team_names(self) -> list[str]:
        return [team_name(t) for t in range(1, self.teams + 1)]


def slack_id(user: int) -> str:
    return f"U{user:09d}"


def team_name(team: int) -> str:
    return f"team-t{team:04d}"


def profile_id(meter: int) -> str:
    """A 12-character AIP id, as Bedrock makes them (and CloudWatch's ModelId calls them)."""
    return f"aip{meter:09d}"


def _usage_values(meter: int, hour_index: int) -> tuple[int, int, int, int]:
    """(input, output, requests, cost micro-USD) for one meter-hour: skewed by meter, varying by hour."""
    inp = ((meter * 2654435761 + hour_index * 40503) % 2000 + 1) * (meter % 97 + 1)
    out = inp // 10
    return inp, out, 1 + inp // 2000, (inp * 250 + out * 1250) // 1000  # Haiku: $0.25 / $1.25 per M


def _hours(now: datetime, days: int) -> list[datetime]:
    top = now.replace(minute=0, second=0, microsecond=0)
    return [top - timedelta(hours=h) for h in range(days * 24, 0, -1)]


def _active(meter: int, hour: datetime, hours_per_day: int) -> bool:
    return (hour.hour + meter) % 24 < hours_per_day


def seed(url: str, subjects: int = 10_000, days: int = 30, hours_per_day: int = 24,
         now: datetime | None = None, migrate: bool = True, log: bool = True) -> Seed:
    """Migrate `url` and load the seed described in the module docstring."""
    began = time.perf_counter()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if migrate:
        upgrade(url)
    teams = subjects // TEAM_EVERY
    users = subjects - teams
    created = now - timedelta(days=days + 1)
    if make_url(url).get_backend_name() == "postgresql":
        rows = _seed_postgres(url, users, teams, days, hours_per_day, now, created)
    else:
        rows = _seed_sqlite(url, users, teams, days, hours_per_day, now, created)
    s = Seed(subjects, users, teams, rows, time.perf_counter() - began, now)
    if log:
        print(f"  seeded {subjects:,} subjects ({users:,} users, {teams:,} teams), {subjects:,} AIPs and "
              f"meters, {rows:,} hourly ledger rows ({days} d × {hours_per_day} h) in {s.seconds:.0f} s",
              file=sys.stderr)
    return s


def _directory_rows(users: int, teams: int, created: datetime) -> dict[str, list[tuple[object, ...]]]:
    subjects: list[tuple[object, ...]] = []
    for u in range(1, users + 1):
        subjects.append((u, "user", f"user{u:05d}", slack_id(u) if u % 2 == 0 else None, "bench", created))
    for t in range(1, teams + 1):
        subjects.append((users + t, "team", team_name(t), None, "bench", created))
    members = [(users + 1 + (u - 1) // (TEAM_EVERY - 1), u, "bench", created)
               for u in range(1, users + 1) if (u - 1) // (TEAM_EVERY - 1) < teams]
    n = users + teams
    profiles = [(m, f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/{profile_id(m)}",
                 profile_id(m), f"s{m}-claude-3-haiku",
                 f"arn:aws:bedrock:us-east-1::foundation-model/{MODEL}",
                 MODEL, '{"managed-by": "bedrock-bot"}', m, "ACTIVE", True, "bench", created, created)
                for m in range(1, n + 1)]
    meters = [(m, "profile", profile_id(m), m, created) for m in range(1, n + 1)]
    limits = []
    for s in range(1, n + 1, 5):
        window = WINDOWS[(s // 5) % 6]
        metric = "cost_usd" if s % 3 == 0 else "tokens"
        scale = {"day": 1, "24h": 1, "week": 5, "7d": 7}.get(window, 25)
        amount = (s % 97 + 1) * 1100 * 24 * scale * (4 if metric == "cost_usd" else 1)
        limits.append((s, metric, amount, window, "[80, 90]", "revoke", False, "bench", created, created))
    return {"subjects": subjects, "team_members": members, "profiles": profiles, "meters": meters,
            "limits": limits}


_COLUMNS = {
    "subjects": "id, kind, name, slack_user_id, created_by, created_at",
    "team_members": "team_id, user_id, added_by, added_at",
    "profiles": ("id, arn, profile_id, name, model_source, model_id, tags, subject_id, status, managed, "
                 "created_by, created_at, backfilled_at"),
    "meters": "id, kind, key, subject_id, created_at",
    "limits": 'subject_id, metric, amount, "window", warn, action, alarm, created_by, created_at, updated_at',
    "usage": ("meter_id, hour, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, requests, "
              "cost_micro_usd, updated_at"),
}


def _rollup_sql(day: str) -> str:
    """Fill `usage_daily` from the seeded hours: `day` is the dialect's UTC midnight of `hour`."""
    cols = ", ".join(VALUE_COLS)
    sums = ", ".join(f"sum({c})" for c in VALUE_COLS)
    return (f"INSERT INTO usage_daily (meter_id, day, {cols}) SELECT meter_id, {day}, {sums} "
            f"FROM usage GROUP BY meter_id, {day} ORDER BY {day}, meter_id")


def _seed_sqlite(url: str, users: int, teams: int, days: int, hpd: int, now: datetime,
                 created: datetime) -> int:
    path = make_url(url).database
    assert path, "a file-backed SQLite URL"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA synchronous=OFF")
        con.execute("BEGIN")

        def ts(at: datetime) -> str:
            return at.astimezone(UTC).replace(tzinfo=None).strftime(_SQLITE_TS)

        for name, rows in _directory_rows(users, teams, created).items():
            marks = ", ".join("?" * len(rows[0]))
            con.executemany(f"INSERT INTO {name} ({_COLUMNS[name]}) VALUES ({marks})",
                            [tuple(ts(v) if isinstance(v, datetime) else v for v in r) for r in rows])
        con.execute("DROP INDEX ix_usage_hour")
        hours = _hours(now, days)
        stamps = [ts(h) for h in hours]
        updated = ts(now)
        total = 0
        for m in range(1, users + teams + 1):
            batch = []
            for i, h in enumerate(hours):
                if _active(m, h, hpd):
                    inp, out, req, cost = _usage_values(m, i)
                    batch.append((m, stamps[i], inp, out, 0, 0, req, cost, updated))
            con.executemany(f"INSERT INTO usage ({_COLUMNS['usage']}) VALUES ({', '.join('?' * 9)})", batch)
            total += len(batch)
        con.execute("CREATE INDEX ix_usage_hour ON usage (hour)")
        con.execute(_rollup_sql("date(hour) || ' 00:00:00.000000'"))  # UTCDateTime's text at 00:00
        con.execute("COMMIT")
        con.execute("ANALYZE")
    finally:
        con.close()
    return total


def _seed_postgres(url: str, users: int, teams: int, days: int, hpd: int, now: datetime,
                   created: datetime) -> int:
    eng = create_engine(url)
    try:
        with eng.begin() as c:
            raw = c.connection.driver_connection
            assert raw is not None
            cur = raw.cursor()
            for name, rows in _directory_rows(users, teams, created).items():
                with cur.copy(f"COPY {name} ({_COLUMNS[name]}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(tuple(v.replace(tzinfo=None) if isinstance(v, datetime) else v
                                             for v in r))
            for seq_table in ("subjects", "meters", "profiles"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{seq_table}', 'id'), {users + teams})")
            # Load the ledger without its indexes and foreign key, then put them back (same schema).
            cur.execute("ALTER TABLE usage DROP CONSTRAINT fk_usage_meter_id_meters")
            cur.execute("ALTER TABLE usage DROP CONSTRAINT pk_usage")
            cur.execute("DROP INDEX ix_usage_hour")
            hours = _hours(now, days)
            stamps = [h.replace(tzinfo=None).isoformat(sep=" ") for h in hours]
            updated = now.replace(tzinfo=None).isoformat(sep=" ")
            total = 0
            with cur.copy(f"COPY usage ({_COLUMNS['usage']}) FROM STDIN") as copy:
                for m in range(1, users + teams + 1):
                    lines = []
                    for i, h in enumerate(hours):
                        if _active(m, h, hpd):
                            inp, out, req, cost = _usage_values(m, i)
                            lines.append(f"{m}\t{stamps[i]}\t{inp}\t{out}\t0\t0\t{req}\t{cost}\t{updated}\n")
                    copy.write("".join(lines))
                    total += len(lines)
            cur.execute("ALTER TABLE usage ADD CONSTRAINT pk_usage PRIMARY KEY (meter_id, hour)")
            cur.execute("CREATE INDEX ix_usage_hour ON usage (hour)")
            cur.execute("ALTER TABLE usage ADD CONSTRAINT fk_usage_meter_id_meters FOREIGN KEY (meter_id) "
                        "REFERENCES meters (id) ON DELETE CASCADE")
            cur.execute(_rollup_sql("date_trunc('day', hour)"))
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            vacuum_and_checkpoint(c)
    finally:
        eng.dispose()
    return total


def vacuum_and_checkpoint(c: Connection) -> None:
    """VACUUM ANALYZE this schema's tables only: a bare VACUUM covers every schema of the shared
    test database, so one bench's seed scanned another's 7M-row ledger while that one measured.
    Then CHECKPOINT, so the seed's dirty pages are written before the measuring starts rather
    than by a spread checkpoint during it (issue 18: slow gateway checks overlapped one)."""
    tables = c.execute(text("SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()"
                            )).scalars().all()
    if tables:
        c.execute(text(f"VACUUM ANALYZE {', '.join(tables)}"))
    try:
        c.execute(text("CHECKPOINT"))
    except DBAPIError as exc:  # needs superuser or pg_checkpoint: measured without, and said
        print(f"(no CHECKPOINT after the seed: {str(exc).splitlines()[0]})", file=sys.stderr)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"
