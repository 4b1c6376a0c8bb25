"""The check's hot path in SQL: one statement per check, text compiled once, no ORM objects.

Every check asks the database two things in the same statement as its counters: is the
caller's cached view still *fresh* — no governance audit row (a limit change, revoke, restore,
exception, link, membership…) since the audit id the view was loaded at, and the ledger
version (`max(sync_cursors.updated_at)`) unchanged — and what are the owners' counters. So a
change made from Slack, on any replica, reaches the very next check; only audit actions that
cannot change a gateway answer (`HARMLESS`) are ignored.

- `read`: freshness + counters, one `SELECT` (no lock; PostgreSQL in autocommit: one round trip).
- `reserve` on PostgreSQL: one statement — lock the capped owners' rows in id order (`FOR
  UPDATE` returns the newest row version after a wait), decide, add to `reserved_*` and insert
  the reservation only when every owner fits and the view is fresh, and commit with
  `synchronous_commit` off (`set_config(…, true)`, local to that statement's transaction).
- `reserve` on SQLite: `BEGIN IMMEDIATE` (one writer at a time), the same `SELECT`, then the
  `UPDATE` and `INSERT` only when it fits — decided under the write lock.

This module knows nothing of rules or decisions: `bot/services/quota.py` passes per-owner caps
and per-metric asks, and turns the rows into `Counters`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.dialects import postgresql

from bot.db import Database, reading
from bot.flows.group_commit import GroupCommit  # generic batching, no flow logic
from bot.models import UTCDateTime, naive_utc
from bot.services.ledger import floor_day


def compact(sql: str) -> str:
    """One space between tokens: psycopg parses a statement once and caches it only while it is
    at most 4,096 characters (`MAX_CACHED_STATEMENT_LENGTH`); longer, every execution re-parses
    it (about 1 ms of CPU for the settle). No `--` comments or quoted runs of spaces here."""
    return " ".join(sql.split())

COLS = ("reserved_tokens", "reserved_requests", "reserved_cost", "settled_input", "settled_output",
        "settled_requests", "settled_cost")
METRICS = ("tokens", "input_tokens", "output_tokens", "requests", "cost_usd")
# What a reservation's WHERE adds up per metric (the same sums as `fits` below).
_SUMS = {"tokens": "reserved_tokens + settled_input + settled_output",
         "input_tokens": "reserved_tokens + settled_input",
         "output_tokens": "reserved_tokens + settled_output",
         "requests": "reserved_requests + settled_requests",
         "cost_usd": "reserved_cost + settled_cost"}
# Audit actions that change nothing a gateway answer depends on; any other action (known or
# not) makes every view loaded before it stale.
HARMLESS = ("gateway.unauthorized", "digest.post", "sns.refuse", "slack.error", "usage.divergence",
            "bill.reconcile", "request.create", "raise_request.create")
_HARMLESS_SQL = ", ".join(f"'{a}'" for a in HARMLESS)
_STALE = (f"EXISTS (SELECT 1 FROM audit_events WHERE id > :gov AND action NOT IN ({_HARMLESS_SQL}))"
          " OR (SELECT max(updated_at) FROM sync_cursors) IS NOT :led")
_COUNTER_LIST = ", ".join(f"c.{c}" for c in COLS)
VERSIONS = text("SELECT (SELECT coalesce(max(id), 0) FROM audit_events), "
                "(SELECT max(updated_at) FROM sync_cursors)")

_READ_SQLITE = f"""
SELECT ({_STALE}) AS stale, {_COUNTER_LIST}, c.subject_id
FROM (SELECT 1) AS one
LEFT JOIN gateway_counters AS c ON c.subject_id IN (SELECT value FROM json_each(:owners))
"""
_READ_PG = f"""
SELECT ({_STALE.replace("IS NOT :led", "IS DISTINCT FROM CAST(:led AS timestamp)")}) AS stale,
       {_COUNTER_LIST}, c.subject_id
FROM (SELECT 1) AS one
LEFT JOIN gateway_counters AS c ON c.subject_id = ANY(CAST(:owners AS bigint[]))
"""
_FITS_PG = " AND ".join(f"(k.{m} IS NULL OR l.{_SUMS[m].replace(' + ', ' + l.')} + :ask_{m} <= k.{m})"
                        for m in METRICS)
_RESERVE_PG = f"""
WITH v AS MATERIALIZED (
  SELECT ({_STALE.replace("IS NOT :led", "IS DISTINCT FROM CAST(:led AS timestamp)")}) AS stale,
         set_config('synchronous_commit', 'off', true) AS quick
),
k AS (
  SELECT * FROM unnest(CAST(:capped AS bigint[]), CAST(:cap_tokens AS bigint[]),
                       CAST(:cap_input_tokens AS bigint[]), CAST(:cap_output_tokens AS bigint[]),
                       CAST(:cap_requests AS bigint[]), CAST(:cap_cost_usd AS bigint[]))
    AS k(owner, tokens, input_tokens, output_tokens, requests, cost_usd)
),
locked AS (
  SELECT c.* FROM gateway_counters AS c WHERE c.subject_id = ANY(CAST(:capped AS bigint[]))
  ORDER BY c.subject_id FOR UPDATE
),
ok AS (
  SELECT NOT (SELECT stale FROM v) AND count(*) = :n AND coalesce(bool_and({_FITS_PG}), false) AS go
  FROM locked AS l JOIN k ON k.owner = l.subject_id
),
upd AS (
  UPDATE gateway_counters AS c SET reserved_tokens = c.reserved_tokens + :tokens,
         reserved_requests = c.reserved_requests + :requests, reserved_cost = c.reserved_cost + :cost
  FROM ok WHERE ok.go AND c.subject_id = ANY(CAST(:capped AS bigint[]))
  RETURNING {_COUNTER_LIST}, c.subject_id
),
ins AS (
  INSERT INTO gateway_reservations (id, subject_id, owners, tokens, requests, cost, state, created_at,
                                    expires_at)
  SELECT :rid, :subject, CAST(:owners_json AS json), :tokens, :requests, :cost, 'held', :now, :expires
  FROM ok WHERE ok.go
)
SELECT v.stale, ok.go, x.*
FROM v CROSS JOIN ok LEFT JOIN LATERAL (
  SELECT * FROM upd
  UNION ALL SELECT {_COUNTER_LIST.replace("c.", "l.")}, l.subject_id FROM locked AS l WHERE NOT ok.go
  UNION ALL SELECT {_COUNTER_LIST}, c.subject_id FROM gateway_counters AS c
            WHERE c.subject_id = ANY(CAST(:rest AS bigint[]))
) AS x ON true
"""
_ADD_SQLITE = text("""
UPDATE gateway_counters SET reserved_tokens = reserved_tokens + :tokens,
       reserved_requests = reserved_requests + :requests, reserved_cost = reserved_cost + :cost
WHERE subject_id IN (SELECT value FROM json_each(:capped))
""")
_HOLD_SQLITE = text("""
INSERT INTO gateway_reservations (id, subject_id, owners, tokens, requests, cost, state, created_at,
                                  expires_at)
VALUES (:rid, :subject, :owners_json, :tokens, :requests, :cost, 'held', :now, :expires)
""").bindparams(bindparam("now", type_=UTCDateTime()), bindparam("expires", type_=UTCDateTime()))
_READ = {"sqlite": text(_READ_SQLITE), "postgresql": text(_READ_PG)}
_RESERVE_PG_TEXT = text(compact(_RESERVE_PG)).bindparams(bindparam("now", type_=UTCDateTime()),
                                                bindparam("expires", type_=UTCDateTime()))

# The same three statements for psycopg itself (`Database.quick_statement`): `%(name)s`
# placeholders, times bound as naive UTC by the caller (what UTCDateTime would bind).
_PSYCOPG = postgresql.psycopg.dialect()
_DRIVER_READ = str(text(compact(_READ_PG)).compile(dialect=_PSYCOPG))
_DRIVER_RESERVE = str(text(compact(_RESERVE_PG)).compile(dialect=_PSYCOPG))

Row = tuple[int, ...]  # one owner's counters, in COLS order


@dataclass(frozen=True)
class Stamp:
    """What a view was loaded at: the audit head and the ledger version, as the database has them."""

    gov: int
    led: Any  # a datetime (or its SQLite text); None before the first sync


@dataclass(frozen=True)
class Outcome:
    stale: bool  # the view must be reloaded; nothing was reserved
    counters: dict[int, Row]  # after the reservation when one was made, else as found
    reservation: str | None = None


def fits(row: Row, cap: Mapping[str, int], ask: Mapping[str, int]) -> bool:
    """The reservation's WHERE in Python (SQLite decides under its write lock)."""
    c = dict(zip(COLS, row, strict=True))
    sums = {"tokens": c["reserved_tokens"] + c["settled_input"] + c["settled_output"],
            "input_tokens": c["reserved_tokens"] + c["settled_input"],
            "output_tokens": c["reserved_tokens"] + c["settled_output"],
            "requests": c["reserved_requests"] + c["settled_requests"],
            "cost_usd": c["reserved_cost"] + c["settled_cost"]}
    return all(sums[m] + ask[m] <= limit for m, limit in cap.items())


class CheckSql:
    """The statements above on the database's quick engine (`bot/db.make_quick_engine`:
    PostgreSQL in autocommit without pre-ping, SQLite with `synchronous=NORMAL`)."""

    def __init__(self, db: Database) -> None:
        self.dialect = db.dialect
        self.db = db
        self.direct = db.on_psycopg()  # the hot statements go straight to psycopg
        self.engine: Engine = db.quick
        self.durable: Engine = db.engine  # commits with a full fsync (SQLite's usage reports)
        # SQLite commits one writer at a time, each with an fsync: reports that arrive while one
        # commits go together in the next transaction (one fsync), as SNS messages do. Under 200
        # clients, one report per transaction queued for 18-25 s (issue 18).
        self.settles: GroupCommit[Usage, Done] = GroupCommit(self._settle_together, self._settle_alone)

    def _settle_together(self, batch: Sequence[Usage]) -> list[Done]:
        with self.durable.begin() as conn:
            return [_settle_sqlite(conn, u) for u in batch]

    def _settle_alone(self, u: Usage) -> Done:
        with self.durable.begin() as conn:
            return _settle_sqlite(conn, u)

    def read(self, owners: Sequence[int], stamp: Stamp) -> Outcome:
        if self.direct:
            rows = self.db.quick_statement(_DRIVER_READ, {"owners": list(owners), "gov": stamp.gov,
                                                          "led": stamp.led})
            return _outcome(rows)
        with reading(), self.engine.connect() as conn:
            out = self._read(conn, owners, stamp)
            conn.commit()
            return out

    def _read(self, conn: Connection, owners: Sequence[int], stamp: Stamp) -> Outcome:
        ids: Any = json.dumps(list(owners)) if self.dialect == "sqlite" else list(owners)
        return _outcome(conn.execute(_READ[self.dialect], {"owners": ids, "gov": stamp.gov,
                                                           "led": stamp.led}).all())

    def reserve(self, subject: int, owners: Sequence[int], caps: Mapping[int, Mapping[str, int]],
                ask: Mapping[str, int], now: datetime, expires: datetime, stamp: Stamp) -> Outcome:
        """Reserve `ask` on every owner in `caps` if each fits under its caps and the view is
        fresh; the counters of `owners` either way."""
        rid = uuid.uuid4().hex
        capped = sorted(caps)
        params = {"gov": stamp.gov, "led": stamp.led, "tokens": ask["tokens"], "requests": ask["requests"],
                  "cost": ask["cost_usd"], "rid": rid, "subject": subject, "owners_json": json.dumps(capped),
                  "now": now, "expires": expires}
        if self.dialect == "postgresql":
            return self._reserve_pg(params, owners, capped, caps, ask)
        with self.engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock, up front
            seen = self._read(conn, owners, stamp)
            if seen.stale or not all(o in seen.counters and fits(seen.counters[o], caps[o], ask)
                                     for o in capped):
                return Outcome(seen.stale, seen.counters)
            conn.execute(_ADD_SQLITE, {**params, "capped": json.dumps(capped)})
            conn.execute(_HOLD_SQLITE, params)
        after = dict(seen.counters)
        for o in capped:
            r = after[o]
            after[o] = (r[0] + ask["tokens"], r[1] + ask["requests"], r[2] + ask["cost_usd"], *r[3:])
        return Outcome(False, after, rid)

    def _reserve_pg(self, params: dict[str, Any], owners: Sequence[int], capped: list[int],
                    caps: Mapping[int, Mapping[str, int]], ask: Mapping[str, int]) -> Outcome:
        params.update({"capped": capped, "n": len(capped),
                       "rest": [o for o in owners if o not in caps]})
        for m in METRICS:
            params[f"cap_{m}"] = [caps[o].get(m) for o in capped]
            params[f"ask_{m}"] = ask[m]
        rows: Sequence[Any]
        if self.direct:
            rows = self.db.quick_statement(_DRIVER_RESERVE, {**params, "now": naive_utc(params["now"]),
                                                             "expires": naive_utc(params["expires"])})
        else:
            with self.engine.connect() as conn:
                rows = conn.execute(_RESERVE_PG_TEXT, params).all()
                conn.commit()
        stale, go = bool(rows[0][0]), bool(rows[0][1])
        counters = {r[-1]: tuple(r[2:-1]) for r in rows if r[-1] is not None}
        return Outcome(stale, counters, params["rid"] if go and not stale else None)


def _outcome(rows: Sequence[Any]) -> Outcome:
    """A read's rows: the freshness, then each owner's counters and id (none for a missing row)."""
    return Outcome(bool(rows[0][0]), {r[-1]: tuple(r[1:-1]) for r in rows if r[-1] is not None})


def stamp_now(conn: Any) -> Stamp:
    """The audit head and ledger version in the caller's transaction (a view's load)."""
    gov, led = conn.execute(VERSIONS).one()
    return Stamp(int(gov), led)


# ---- /v1/usage: the request id, the reservation, the counters and the ledger at once ---------

_LEDGER_COLS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "requests",
                "cost_micro_usd", "unpriced_tokens", "unpriced_requests")
_REQUEST_INSERT = """
INSERT INTO gateway_requests (request_id, subject_id, reservation_id, model, input_tokens, output_tokens,
                              cache_read_tokens, cache_write_tokens, cost_micro_usd, counted_by, received_at)
"""
_REQUEST_VALUES = (":request_id, :subject, CAST(:reservation AS varchar), :model, :input_tokens, "
                   ":output_tokens, :cache_read_tokens, :cache_write_tokens, :cost_micro_usd, :counted, :now")
_LEDGER_UPSERT = f"""
INSERT INTO usage AS u (hour, updated_at, meter_id, {", ".join(_LEDGER_COLS)})
{{source}}
ON CONFLICT (meter_id, hour) DO UPDATE SET
  {", ".join(f"{c} = u.{c} + excluded.{c}" for c in _LEDGER_COLS)}, updated_at = excluded.updated_at
"""
# The UTC-day rollup takes the same increment (bot/services/ledger.py keeps the two equal; this
# statement is the gateway's one-round-trip form of `ledger.add`).
_DAY_UPSERT = f"""
INSERT INTO usage_daily AS d (day, meter_id, {", ".join(_LEDGER_COLS)})
{{source}}
ON CONFLICT (meter_id, day) DO UPDATE SET
  {", ".join(f"{c} = d.{c} + excluded.{c}" for c in _LEDGER_COLS)}
"""
_INCREMENT = f"CAST(:meter AS bigint), {', '.join(f':{c}' for c in _LEDGER_COLS)}"  # meter_id, columns
_DAY_VALUES = f":day, {_INCREMENT}"
_LEDGER_VALUES = f":hour, :now, {_INCREMENT}"
# One counters UPDATE per owner row: a reservation given back and/or settled usage added (a row
# may be updated only once by one statement). On PostgreSQL the rows are locked in id order
# first (`lk`), as a reservation locks them, so the two never wait on each other in a cycle.
_COUNTERS_SET = """
  reserved_tokens = c.reserved_tokens - t.tokens, reserved_requests = c.reserved_requests - t.requests,
  reserved_cost = c.reserved_cost - t.cost, settled_input = c.settled_input + t.s_input,
  settled_output = c.settled_output + t.s_output, settled_requests = c.settled_requests + t.s_requests,
  settled_cost = c.settled_cost + t.s_cost
"""
_SETTLE_PG = f"""
WITH other AS (
  SELECT subject_id, state FROM gateway_reservations WHERE id = :reservation
),
req AS (
  {_REQUEST_INSERT}
  SELECT {_REQUEST_VALUES}
  WHERE NOT EXISTS (SELECT 1 FROM other WHERE other.subject_id <> :subject)
  ON CONFLICT DO NOTHING RETURNING request_id
),
rel AS (
  UPDATE gateway_reservations AS r SET state = 'settled'
  WHERE r.id = :reservation AND r.subject_id = :subject AND r.state = 'held' AND EXISTS (SELECT 1 FROM req)
  RETURNING r.owners, r.tokens, r.requests, r.cost
),
back AS (
  SELECT CAST(json_array_elements_text(rel.owners) AS bigint) AS owner, rel.tokens, rel.requests, rel.cost
  FROM rel
),
adds AS (
  SELECT o AS owner FROM unnest(CAST(:settle_owners AS bigint[])) AS o WHERE EXISTS (SELECT 1 FROM req)
),
t AS (
  SELECT coalesce(b.owner, a.owner) AS owner, coalesce(b.tokens, 0) AS tokens,
         coalesce(b.requests, 0) AS requests, coalesce(b.cost, 0) AS cost,
         CAST(a.owner IS NOT NULL AS int) AS s_requests, CAST(a.owner IS NOT NULL AS int) * :input_tokens
         AS s_input, CAST(a.owner IS NOT NULL AS int) * :output_tokens AS s_output,
         CAST(a.owner IS NOT NULL AS int) * :cost_micro_usd AS s_cost
  FROM back AS b FULL JOIN adds AS a ON a.owner = b.owner
),
lk AS (
  SELECT c.subject_id FROM gateway_counters AS c WHERE c.subject_id IN (SELECT owner FROM t)
  ORDER BY c.subject_id FOR UPDATE
),
cnt AS (
  UPDATE gateway_counters AS c SET {_COUNTERS_SET} FROM t
  WHERE c.subject_id = t.owner AND (SELECT count(*) FROM lk) >= 0
),
v AS (SELECT {_INCREMENT} FROM req WHERE CAST(:meter AS bigint) IS NOT NULL),
led AS ({_LEDGER_UPSERT.format(source="SELECT :hour, :now, v.* FROM v")}),
led_day AS ({_DAY_UPSERT.format(source="SELECT :day, v.* FROM v")})
SELECT (SELECT count(*) FROM req), (SELECT count(*) FROM rel), (SELECT subject_id FROM other),
       (SELECT state FROM other)
"""
# Its times are bound as naive UTC by `settle` (no `CAST(… AS TIMESTAMP WITHOUT TIME ZONE)` from
# the UTCDateTime type: that kept the text over psycopg's cache limit).
_SETTLE_PG_TEXT = text(compact(_SETTLE_PG))
_DRIVER_SETTLE = str(_SETTLE_PG_TEXT.compile(dialect=_PSYCOPG))
TIMES = ("now", "hour", "day")
_OTHER_SQLITE = text("SELECT subject_id, state FROM gateway_reservations WHERE id = :reservation")
_REQUEST_SQLITE = text(f"{_REQUEST_INSERT} VALUES ({_REQUEST_VALUES}) ON CONFLICT DO NOTHING "
                       "RETURNING request_id").bindparams(bindparam("now", type_=UTCDateTime()))
_RELEASE_SQLITE = text("UPDATE gateway_reservations SET state = 'settled' WHERE id = :reservation "
                       "AND subject_id = :subject AND state = 'held' "
                       "RETURNING owners, tokens, requests, cost")
_COUNTERS_SQLITE = text(f"""
UPDATE gateway_counters SET {_COUNTERS_SET.replace("c.", "").replace("t.", ":")}
WHERE subject_id = :owner
""")
_LEDGER_SQLITE = text(_LEDGER_UPSERT.format(source=f"SELECT {_LEDGER_VALUES} WHERE true")).bindparams(
    bindparam("now", type_=UTCDateTime()), bindparam("hour", type_=UTCDateTime()))
_DAY_SQLITE = text(_DAY_UPSERT.format(source=f"SELECT {_DAY_VALUES} WHERE true")).bindparams(
    bindparam("day", type_=UTCDateTime()))


_METER = text("INSERT INTO meters (kind, key, subject_id, created_at) VALUES (:kind, :key, :subject, :now) "
              "ON CONFLICT (kind, key) DO UPDATE SET subject_id = excluded.subject_id RETURNING id"
              ).bindparams(bindparam("now", type_=UTCDateTime()))


def ensure_meter(sql: CheckSql, kind: str, key: str, subject: int, now: datetime) -> int:
    """The (kind, key) meter of `subject`, made if missing: one upsert, so concurrent first
    calls of one subject agree on one meter instead of racing to insert it."""
    with sql.durable.begin() as conn:
        made = conn.execute(_METER, {"kind": kind, "key": key, "subject": subject, "now": now})
        return int(made.scalar_one())


@dataclass(frozen=True)
class Usage:
    """One /v1/usage as the statement needs it; `meter` None when nothing goes to the ledger."""

    request_id: str
    subject: int
    reservation: str | None
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_micro_usd: int
    counted: str  # gateway | profile | none
    meter: int | None
    settle_owners: tuple[int, ...]  # whose settled counters grow (the subject and its teams)
    unpriced_tokens: int
    unpriced_requests: int
    now: datetime
    hour: datetime


@dataclass(frozen=True)
class Done:
    inserted: bool  # False: a duplicate request id, nothing changed
    released: bool
    other: tuple[int, str] | None  # the reservation's (subject, state) as found, if it exists


def settle(sql: CheckSql, u: Usage) -> Done:
    """PostgreSQL: one statement (autocommit, durable). SQLite: one short transaction, shared with
    the reports that arrive while another commits (`CheckSql.settles`). A reservation of another
    subject changes nothing (the caller answers 400)."""
    params = _settle_params(u)
    if sql.dialect == "postgresql":
        params.update({k: naive_utc(params[k]) for k in TIMES})
        row: Any
        if sql.direct:
            (row,) = sql.db.quick_statement(_DRIVER_SETTLE, params)
        else:
            with sql.engine.connect() as conn:
                row = conn.execute(_SETTLE_PG_TEXT, params).one()
                conn.commit()
        return Done(bool(row[0]), bool(row[1]), (int(row[2]), str(row[3])) if row[2] is not None else None)
    return sql.settles.submit(u)


def _settle_params(u: Usage) -> dict[str, Any]:
    return {**u.__dict__, "settle_owners": list(u.settle_owners), "requests": 1 if u.meter else 0,
            "day": floor_day(u.hour)}


def _settle_sqlite(conn: Connection, u: Usage) -> Done:
    """One report inside an open SQLite transaction; a duplicate request id (also one earlier in
    the same transaction) changes nothing."""
    params = _settle_params(u)
    found = conn.execute(_OTHER_SQLITE, params).first() if u.reservation else None
    other = (int(found[0]), str(found[1])) if found else None
    if (other and other[0] != u.subject) or conn.execute(_REQUEST_SQLITE, params).first() is None:
        return Done(False, False, other)
    held = conn.execute(_RELEASE_SQLITE, params).first() if u.reservation else None
    back = {o: held[1:] for o in json.loads(held[0])} if held else {}
    per = [{"owner": o, "tokens": back.get(o, (0, 0, 0))[0], "requests": back.get(o, (0, 0, 0))[1],
            "cost": back.get(o, (0, 0, 0))[2], **_settled(u, o)}
           for o in sorted(set(back) | set(u.settle_owners))]
    if per:
        conn.execute(_COUNTERS_SQLITE, per)
    if u.meter is not None:
        conn.execute(_LEDGER_SQLITE, params)
        conn.execute(_DAY_SQLITE, params)
    return Done(True, held is not None, other)


def _settled(u: Usage, owner: int) -> dict[str, int]:
    mine = owner in u.settle_owners
    return {"s_input": u.input_tokens if mine else 0, "s_output": u.output_tokens if mine else 0,
            "s_requests": 1 if mine else 0, "s_cost": u.cost_micro_usd if mine else 0}
