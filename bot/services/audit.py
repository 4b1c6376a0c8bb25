"""The tamper-evident audit log: an append-only hash chain in `audit_events`.

hash = SHA-256(prev_hash + canonical JSON of the row). Ids are assigned as previous id + 1
while holding a lock, so the chain never forks and a deleted row leaves a visible gap.

`record()` only queues the event on the session; the queued events of a transaction are
chained and inserted together right before it commits (a `before_commit` hook). The chain
lock (an advisory lock on PostgreSQL) is therefore taken once, at the end, and held for a
few milliseconds — never across the AWS calls a flow makes — and a transaction that rolls
back leaves no audit row and never took the lock. One exception: `lock_after` takes the lock
(and reads the head) earlier, pipelined after a statement of the caller's, for a transaction
that goes straight on to commit (the SNS store); `locked_head_after` and `append_at_commit` do
the same for a transaction with no session (`bot.db.Pipelined`, the SNS group commit).

With `BOT_AUDIT_KEY` set, hash = HMAC-SHA256(key, prev_hash + canonical JSON) and the row's
`alg` names the key (`hmac-sha256:<key id>`): someone who can write the database but does not
hold the key cannot recompute hashes after rewriting rows. Rows written before the key stay
`sha256`; once a keyed row exists, an unkeyed one after it is a break (a downgrade). The key
reaches the commit hook through `session.info` (set by `Database` from settings). A cut
*tail* is invisible to the chain alone: `audit_anchor` checkpoints the head outside it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Dialect, Table, event, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.models import AuditEvent, UTCDateTime

if TYPE_CHECKING:
    from bot.db import Pipelined

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "error")
SHA256 = "sha256"
_HMAC = "hmac-sha256:"
KEYRING_INFO = "audit_keyring"  # the session.info entry that carries the Keyring
_PG_LOCK_KEY = 0x62656472  # "bedr": serialises appends across replicas


def canonical(row_id: int, at: datetime, actor: str, action: str, target: str,
              details: str, outcome: str) -> str:
    body = {"id": row_id, "at": at.isoformat(timespec="microseconds"), "actor": actor,
            "action": action, "target": target, "details": details, "outcome": outcome}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, canonical_json: str) -> str:
    return hashlib.sha256((prev_hash + canonical_json).encode()).hexdigest()


def keyed_hash(key: bytes, prev_hash: str, canonical_json: str) -> str:
    return hmac.new(key, (prev_hash + canonical_json).encode(), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """Names a key in `alg` without revealing it: an HMAC of a fixed label, 8 hex digits."""
    return hmac.new(key, b"bedrock-bot audit key id", hashlib.sha256).hexdigest()[:8]


class Keyring:
    """The current key (signs new rows) and previous ones (verify rows from before a rotation).
    Its repr never shows a key."""

    def __init__(self, current: str | bytes | None, previous: Sequence[str | bytes] = ()) -> None:
        self.current = _bytes(current) if current is not None else None
        keys = ([self.current] if self.current is not None else []) + [_bytes(k) for k in previous]
        self._by_id = {key_id(k): k for k in keys}

    @property
    def alg(self) -> str:
        return _HMAC + key_id(self.current) if self.current is not None else SHA256

    @property
    def ids(self) -> list[str]:
        return list(self._by_id)

    def key(self, alg: str) -> bytes | None:
        return self._by_id.get(alg.removeprefix(_HMAC))

    def sign(self, prev_hash: str, canonical_json: str) -> tuple[str, str]:
        """(alg, hash) for a new row."""
        if self.current is None:
            return SHA256, chain_hash(prev_hash, canonical_json)
        return self.alg, keyed_hash(self.current, prev_hash, canonical_json)

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids})"


def _bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


NO_KEY = Keyring(None)


def _details_json(details: dict[str, Any] | None) -> str:
    return json.dumps(details or {}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Pending:
    at: datetime
    actor: str
    action: str
    target: str
    details: str
    outcome: str


_PENDING = "audit_pending"


def record(session: Session, clock: Clock, actor: str, action: str, target: str,
           details: dict[str, Any] | None = None, outcome: str = "ok") -> None:
    """Queue one event in the caller's transaction: it is written when that transaction
    commits and vanishes with it when it rolls back."""
    enqueue(session, pending(clock, actor, action, target, details, outcome))


def enqueue(session: Session, event: Pending) -> None:
    """Queue an event built by `pending` in the caller's transaction (as `record`)."""
    session.info.setdefault(_PENDING, []).append(event)


def pending(clock: Clock, actor: str, action: str, target: str, details: dict[str, Any] | None = None,
            outcome: str = "ok") -> Pending:
    """One event, checked and clipped to its columns, to be chained at commit."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    return Pending(clock(), actor[:160], action[:64], target[:512], _details_json(details), outcome)


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    queue: list[Pending] = session.info.pop(_PENDING, [])
    head: Head | None = session.info.pop(_HEAD, None)
    if queue:
        _append(session, queue, head)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_HEAD, None)


Head = tuple[tuple[int, str] | None]  # the chain's head (id, hash), or None on an empty chain
_HEAD = "audit_head"  # session.info: the head read under the lock by `lock_after`


def _append(session: Session, queue: list[Pending], head: Head | None = None) -> None:
    """Chain the queued events onto the head, under the lock, in one INSERT of plain rows (no
    ORM objects): on PostgreSQL one statement with the rows as a JSON parameter, elsewhere a
    Core executemany (psycopg's executemany of five rows took twice the CPU of this statement)."""
    top = head[0] if head is not None else _locked_head(session)
    rows = _chain(queue, top, session.info.get(KEYRING_INFO) or NO_KEY)
    dialect = session.get_bind().dialect
    if dialect.name != "postgresql":
        session.execute(_INSERT, rows)
        return
    session.execute(_INSERT_PG, {"rows": _rows_json(rows, dialect)})


def append_at_commit(tx: Pipelined, keyring: Keyring, queue: Sequence[Pending],
                     head: tuple[int, str] | None) -> None:
    """`_append` for a pipelined transaction (`bot.db.Pipelined`) whose chain lock is held and
    head read (`locked_head_after`): the INSERT goes in the pipeline of its COMMIT."""
    if queue:
        tx.at_commit.append((_INSERT_PG_RAW, {"rows": _rows_json(_chain(queue, head, keyring), tx.dialect)}))


def _chain(queue: Sequence[Pending], top: tuple[int, str] | None, keyring: Keyring) -> list[dict[str, Any]]:
    """The queued events as rows chained onto the head `top` (id, hash)."""
    row_id, prev = (top[0], top[1]) if top else (0, GENESIS)
    rows: list[dict[str, Any]] = []
    for p in queue:
        row_id += 1
        alg, digest = keyring.sign(prev, canonical(row_id, p.at, p.actor, p.action, p.target,
                                                   p.details, p.outcome))
        rows.append({"id": row_id, "at": p.at, "actor": p.actor, "action": p.action, "target": p.target,
                     "details": p.details, "outcome": p.outcome, "prev_hash": prev, "hash": digest,
                     "alg": alg})
        prev = digest
    return rows


def _rows_json(rows: list[dict[str, Any]], dialect: Dialect) -> str:
    """The rows as `_INSERT_PG`'s parameter."""
    for r in rows:
        r["at"] = _stored_at(r["at"], dialect)
    return json.dumps(rows, ensure_ascii=False)


def _stored_at(at: datetime, dialect: Dialect) -> str:
    """`at` as the column stores it (UTCDateTime: naive UTC, a naive input refused): what
    `verify` reads back and hashes again."""
    value = UTCDateTime().process_bind_param(at, dialect)
    assert value is not None
    return value.isoformat()


_INSERT = insert(cast(Table, AuditEvent.__table__))
_INSERT_PG_SQL = """INSERT INTO audit_events (id, at, actor, action, target, details, outcome, prev_hash,
  hash, alg)
SELECT r.id, r.at, r.actor, r.action, r.target, r.details, r.outcome, r.prev_hash, r.hash, r.alg
FROM json_to_recordset(CAST(:rows AS json)) AS r(id bigint, at timestamp, actor text, action text,
  target text, details text, outcome text, prev_hash text, hash text, alg text)"""
_INSERT_PG = text(_INSERT_PG_SQL)
_INSERT_PG_RAW = _INSERT_PG_SQL.replace(":rows", "%(rows)s")  # psycopg's placeholder
_LOCK = "SELECT pg_advisory_xact_lock(%s)"
_HEAD_SQL = "SELECT id, hash FROM audit_events ORDER BY id DESC LIMIT 1"


def pipelined(session: Session) -> Any | None:
    """The psycopg 3 connection under this session's transaction when it can pipeline
    (PostgreSQL), else None."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    raw = session.connection().connection.driver_connection
    return raw if raw is not None and hasattr(raw, "pipeline") else None


def lock_after(session: Session, raw: Any, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run `sql` (psycopg placeholders) on `raw` (from `pipelined`), then take the chain lock and
    read the head, all in one pipeline: with the transaction's BEGIN, one round trip instead
    of three. The head is kept for this transaction's append at commit (the lock is held until
    then, so it cannot move); returns `sql`'s rows. The lock comes after `sql`, as it would at
    commit, so a statement waiting on another transaction's row never does so holding it."""
    with _as_sqlalchemy_errors(session, sql), raw.pipeline():
        cur = raw.execute(sql, params)
        raw.execute(_LOCK, (_PG_LOCK_KEY,))
        head = raw.execute(_HEAD_SQL)
    rows: list[tuple[Any, ...]] = cur.fetchall()
    got = head.fetchone()
    session.info[_HEAD] = ((int(got[0]), str(got[1])) if got else None,)
    return rows


def locked_head_after(tx: Pipelined, sql: str, params: Mapping[str, Any]
                      ) -> tuple[list[tuple[Any, ...]], tuple[int, str] | None]:
    """`lock_after` for a pipelined transaction: BEGIN, `sql`, the chain lock and the head read in
    one round trip; (`sql`'s rows, the head) for `append_at_commit`."""
    cur, _, head = tx.run((sql, params), (_LOCK, (_PG_LOCK_KEY,)), (_HEAD_SQL, None))
    got = head.fetchone()
    return cur.fetchall(), (int(got[0]), str(got[1])) if got else None


@contextmanager
def _as_sqlalchemy_errors(session: Session, sql: str) -> Iterator[None]:
    """Statements sent on the driver's connection raise what the engine would have raised
    (sqlalchemy.exc.IntegrityError, OperationalError …), so callers catch one family."""
    dbapi = session.get_bind().dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc


def _locked_head(session: Session) -> tuple[int, str] | None:
    """Take the chain lock, then read the head (id, hash). The head is read by a statement that
    starts after the lock is held, so it sees every append committed before (READ COMMITTED: a
    snapshot per statement). With psycopg 3 both statements go in one pipeline: one round trip."""
    raw = pipelined(session)
    if raw is not None:
        with _as_sqlalchemy_errors(session, _HEAD_SQL), raw.pipeline():
            raw.execute(_LOCK, (_PG_LOCK_KEY,))
            cur = raw.execute(_HEAD_SQL)
        got = cur.fetchone()
        return (int(got[0]), str(got[1])) if got else None
    head_query = select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    row = session.execute(head_query).first()
    return (row[0], row[1]) if row else None


def seen_since(session: Session, action: str, target: str, details: dict[str, Any] | None,
               outcome: str, since: datetime) -> bool:
    """Whether the same event (action, target, details, outcome) was recorded at or after `since`."""
    return session.execute(select(AuditEvent.id).where(
        AuditEvent.action == action, AuditEvent.target == target[:512], AuditEvent.outcome == outcome,
        AuditEvent.details == _details_json(details), AuditEvent.at >= since).limit(1)).first() is not None


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows: int
    broken_id: int | None = None
    reason: str = ""
    head_id: int = 0
    head_hash: str = GENESIS
    keyed_from: int | None = None  # the first row under a key; None: no keyed row
    unverifiable: bool = False  # keyed rows, and no key to check them with


@dataclass(frozen=True)
class Start:
    """Where a walk begins: the genesis, or a row already trusted (a matching checkpoint)."""

    id: int = 0
    hash: str = GENESIS
    keyed: bool = False


def verify(session: Session, keyring: Keyring = NO_KEY, start: Start = Start(),
           batch: int = 5000) -> VerifyResult:
    """Walk the chain in id order from `start`; name the first row that does not fit."""
    prev_hash, prev_id, count = start.hash, start.id, 0
    keyed_from = start.id if start.keyed else None
    rows = session.execute(select(AuditEvent).where(AuditEvent.id > start.id)
                           .order_by(AuditEvent.id).execution_options(yield_per=batch)).scalars()
    for ev in rows:
        count += 1
        if ev.alg != SHA256 and keyed_from is None:
            keyed_from = ev.id
        problem, unverifiable = _check_row(ev, prev_id, prev_hash, keyring, keyed_from)
        if problem:
            return VerifyResult(False, count, ev.id, problem, prev_id, prev_hash, keyed_from,
                                unverifiable)
        prev_hash, prev_id = ev.hash, ev.id
    return VerifyResult(True, count, head_id=prev_id, head_hash=prev_hash, keyed_from=keyed_from)


def _check_row(ev: AuditEvent, prev_id: int, prev_hash: str, keyring: Keyring,
               keyed_from: int | None) -> tuple[str, bool]:
    """('', False) when the row fits; else the reason and whether only a key was missing."""
    if ev.id != prev_id + 1:
        return f"row {ev.id}: rows {prev_id + 1}..{ev.id - 1} are missing", False
    if ev.prev_hash != prev_hash:
        return f"row {ev.id}: prev_hash does not match row {prev_id}", False
    body = canonical(ev.id, ev.at, ev.actor, ev.action, ev.target, ev.details, ev.outcome)
    if ev.alg == SHA256:
        if keyed_from is not None:
            return (f"row {ev.id}: unkeyed after keyed rows from {keyed_from} (written without "
                    "BOT_AUDIT_KEY, or rewritten)"), False
        return ("" if ev.hash == chain_hash(prev_hash, body)
                else f"row {ev.id}: contents do not match its hash"), False
    key = keyring.key(ev.alg) if ev.alg.startswith(_HMAC) else None
    if key is None:
        return _no_key(ev, keyring), ev.alg.startswith(_HMAC) and not keyring.ids
    if not hmac.compare_digest(ev.hash, keyed_hash(key, prev_hash, body)):
        return f"row {ev.id}: contents do not match its keyed hash", False
    return "", False


def _no_key(ev: AuditEvent, keyring: Keyring) -> str:
    if not ev.alg.startswith(_HMAC):
        return f"row {ev.id}: unknown hash algorithm {ev.alg[:32]!r}"
    if not keyring.ids:
        return f"row {ev.id}: keyed ({ev.alg}); set BOT_AUDIT_KEY to verify it"
    return (f"row {ev.id}: keyed with a key not configured ({ev.alg}); configured key ids: "
            f"{', '.join(keyring.ids)} (after a rotation, add the old key to "
            "BOT_AUDIT_PREVIOUS_KEYS)")


@dataclass(frozen=True)
class AuditLine:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]


def recent(session: Session, target: str | None = None, limit: int = 20) -> list[AuditLine]:
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 100)))
    if target:
        q = q.where(AuditEvent.target == target)
    return [AuditLine(e.id, e.at, e.actor, e.action, e.target, e.outcome, json.loads(e.details))
            for e in session.execute(q).scalars()]
