"""Engine and session factory. `session_scope()` is the only place that commits."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Dialect, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from bot.services.audit import KEYRING_INFO, NO_KEY, Keyring
from bot.services.leases import current_fence


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # psycopg prepares a statement on its 5th execution and PostgreSQL then switches to a
    # generic plan, one that ignores the values: a team's usage sum (meters IN members, a day
    # range) went from 7 ms to 23 ms from the 10th report on a connection. The answers' and
    # jobs' statements are planned for their values (PostgreSQL 12+); the gateway's quick
    # engine keeps generic plans for its one-row statements.
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _custom_plans(dbapi_conn: Any, _record: Any) -> None:  # once per new connection
        with dbapi_conn.cursor() as cur:
            cur.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_conn.commit()

    return engine


def make_quick_engine(url: str) -> Engine:
    """For the gateway's hot path (bot/services/quota_sql.py), statements that are each a whole
    transaction, and the SNS store's pipelined transactions (`Database.pipelined`, which sends its
    own BEGIN). PostgreSQL: autocommit (no BEGIN/COMMIT round trips) and no pre-ping (no
    `SELECT 1` per checkout; a connection the server dropped fails one request, and the pool
    replaces it). SQLite: `synchronous=NORMAL` (WAL: a commit is not fsynced, it may be lost
    with power, never corrupt), the counterpart of PostgreSQL's `synchronous_commit = off`."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, synchronous="NORMAL")
    # At most 15 connections (the main pool has 30): each statement is short, and more
    # connections than cores buy no throughput, only PostgreSQL's max_connections.
    return create_engine(url, pool_pre_ping=False, pool_size=5, max_overflow=10,
                         isolation_level="AUTOCOMMIT")


_READING: ContextVar[bool] = ContextVar("sqlite_reading", default=False)
_INHERITED: list[Any] = []  # a forked child's copies of the parent's pools (Database.after_fork)
_GATES: dict[str, threading.Lock] = {}
_GATES_LOCK = threading.Lock()
GATE_WAIT = 30.0  # seconds, as the busy timeout; past it BEGIN IMMEDIATE waits and fails as before


@contextmanager
def reading() -> Iterator[None]:
    """Transactions begun in this block only read. On SQLite they begin DEFERRED under
    `PRAGMA query_only` (a write raises), so they neither take nor wait for the write lock:
    WAL readers see the last commit while a writer works. PostgreSQL readers never block."""
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


def _gate(url: str) -> threading.Lock:
    with _GATES_LOCK:
        return _GATES.setdefault(url, threading.Lock())


class _GatedConnection(sqlite3.Connection):
    """A pysqlite connection that holds its process's write gate from BEGIN IMMEDIATE until its
    COMMIT or ROLLBACK has returned. Writers of one process then queue on a lock instead of in
    SQLite's busy handler, which sleeps up to 100 ms between retries and lets a late writer
    overtake: 20 concurrent replay claims had ack tails of 0.5–2 s (issue 19)."""

    gate_key = ""
    held: Any = None  # the gate, while this connection's write transaction is open
    query_only = False

    def commit(self) -> None:
        self._ending(super().commit)

    def rollback(self) -> None:
        self._ending(super().rollback)

    def close(self) -> None:
        self._ending(super().close)

    def _ending(self, end: Any) -> None:
        """However the transaction ends (or fails to), the gate is given back."""
        try:
            end()
        finally:
            self.release()

    def release(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            held.release()


def _sqlite_engine(url: str, synchronous: str | None = None, **kwargs: Any) -> Engine:
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", 30)
    memory = ":memory:" in url
    if not memory:
        connect_args.setdefault("factory", _GatedConnection)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    key = engine.url.database or url

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        if isinstance(dbapi_conn, _GatedConnection):
            dbapi_conn.gate_key = key
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            if synchronous:
                cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    # pysqlite's deferred BEGIN lets two writers read the same audit head and then fail
    # on upgrade; BEGIN IMMEDIATE serialises writers up front, which is what we want for
    # an embedded, low-write database. Readers (`reading()`) begin deferred instead.
    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        _begin(conn, _READING.get())

    return engine


def _begin(conn: Any, read_only: bool) -> None:
    dbapi_conn = conn.connection.dbapi_connection
    gated = isinstance(dbapi_conn, _GatedConnection)
    if gated and dbapi_conn.query_only != read_only:
        dbapi_conn.execute(f"PRAGMA query_only={int(read_only)}")
        dbapi_conn.query_only = read_only
    if read_only:
        conn.exec_driver_sql("BEGIN")
        return
    if gated and dbapi_conn.held is None:
        gate = _gate(dbapi_conn.gate_key)
        # Past the wait (a thread nesting two write transactions), go on ungated: BEGIN
        # IMMEDIATE then waits out the busy timeout and fails, as it would without a gate.
        if gate.acquire(timeout=GATE_WAIT):
            dbapi_conn.held = gate
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if gated:
            dbapi_conn.release()
        raise


def _check_fence(session: Session) -> None:
    """Inside `leases.fenced()` (a scheduled job), commit only while the lease is still held:
    checked in this transaction, which then rolls back with `LeaseLost` if it is not."""
    fence = current_fence()
    if fence is not None:
        fence.check(session)


class Pipelined:
    """A PostgreSQL transaction sent straight to psycopg 3 in pipelines, one round trip each:
    `run` sends BEGIN with its first statements; `at_commit` holds statements that go with
    COMMIT (the audit rows), so a transaction that reads once before it writes takes two
    round trips. Driver errors are raised as SQLAlchemy's (IntegrityError, OperationalError …)."""

    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect
        self.at_commit: list[tuple[str, Any]] = []
        self._begun = False

    def run(self, *statements: tuple[str, Any]) -> list[Any]:
        """(sql with psycopg placeholders, params) each, in order, in one pipeline: their cursors."""
        with self.errors(statements[0][0]), self.conn.pipeline():
            if not self._begun:
                self.conn.execute("BEGIN")
                self._begun = True
            return [self.conn.execute(sql, params) for sql, params in statements]

    def commit(self) -> None:
        if not self._begun:
            return
        with self.errors("COMMIT"), self.conn.pipeline():
            for sql, params in self.at_commit:
                self.conn.execute(sql, params)
            self.conn.execute("COMMIT")

    def errors(self, sql: str) -> AbstractContextManager[None]:
        return driver_errors(self.dialect, sql)


@contextmanager
def driver_errors(dialect: Dialect, sql: str) -> Iterator[None]:
    """psycopg's errors raised as SQLAlchemy's (IntegrityError, OperationalError …), as the
    statements sent through the engine would raise them."""
    dbapi = dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc


def _roll_back(proxy: Any, conn: Any) -> None:
    """After a failure: roll back, or drop the connection from the pool when that fails too
    (the first error is the one raised)."""
    try:
        if not conn.broken:
            conn.rollback()
            return
    except Exception:  # the connection is discarded below
        pass
    proxy.invalidate()


class Database:
    """Owns the engine and hands out sessions. Built once from settings."""

    def __init__(self, url: str, audit_keyring: Keyring | None = None, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        # A second pool for the gateway's one-statement checks (SQLite in memory: the same one).
        self.quick = self.engine if ":memory:" in url else make_quick_engine(url)
        # The audit commit hook has only the session: the key reaches it through session.info.
        self.audit_keyring = audit_keyring or NO_KEY
        info = {KEYRING_INFO: self.audit_keyring}
        self.factory = sessionmaker(self.engine, expire_on_commit=False, autoflush=True, info=info)
        self._current: ContextVar[Session | None] = ContextVar(f"session_{id(self)}", default=None)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session_scope(self, join: bool = False, read_only: bool = False) -> Iterator[Session]:
        """One transaction: commit when the block ends cleanly, roll back otherwise.

        `join=True` reuses the transaction already open in this thread, if any (the local
        AIP registry lives in our own database; on SQLite a second writer would deadlock).
        `read_only=True`: the block only reads (`reading()`: on SQLite it takes no write lock,
        and a write raises).
        """
        current = self._current.get()
        if join and current is not None:
            yield current
            return
        session = self.factory()
        token = self._current.set(session)
        try:
            with reading() if read_only else nullcontext():
                yield session
            _check_fence(session)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            self._current.reset(token)
            session.close()

    def can_pipeline(self) -> bool:
        """Whether `pipelined()` may be used here: PostgreSQL through psycopg 3, and not inside
        `leases.fenced()` (whose commits check the lease in their session)."""
        return self.on_psycopg() and current_fence() is None

    def on_psycopg(self) -> bool:
        """PostgreSQL through psycopg 3: where `quick_statement()` may be used."""
        return self.quick.dialect.name == "postgresql" and self.quick.dialect.driver == "psycopg"

    @contextmanager
    def pipelined(self) -> Iterator[Pipelined]:
        """One transaction on the quick engine's connection (no pool ping: a connection the
        server dropped fails this transaction, and the pool replaces it), committed when the
        block ends cleanly, rolled back otherwise (see `Pipelined`). Only where `can_pipeline()`."""
        proxy = self.quick.raw_connection()
        tx = Pipelined(proxy.driver_connection, self.quick.dialect)
        try:
            yield tx
            tx.commit()
        except BaseException:
            _roll_back(proxy, tx.conn)
            raise
        finally:
            proxy.close()

    def quick_statement(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """One statement that is a whole transaction (the connection is in autocommit) sent
        straight to the quick engine's psycopg connection, as `pipelined()` sends its own: `sql`
        with psycopg placeholders, its rows back. SQLAlchemy's execution layer around a gateway
        check's one statement was about half of its Python time (issue 18). Only where
        `on_psycopg()`; errors are SQLAlchemy's, and a broken connection leaves the pool."""
        proxy = self.quick.raw_connection()
        conn: Any = proxy.driver_connection
        try:
            with driver_errors(self.quick.dialect, sql):
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
        except BaseException:
            _roll_back(proxy, conn)
            raise
        finally:
            proxy.close()

    def engines(self) -> list[Engine]:
        """Every engine this database opens connections with (hooks such as the rotated
        password's go on each)."""
        return [self.engine] if self.quick is self.engine else [self.engine, self.quick]

    def dispose(self) -> None:
        for engine in self.engines():
            engine.dispose()

    def after_fork(self) -> None:
        """In a forked child: new pools, the parent's connections neither used nor closed (they
        are the parent's; SQLAlchemy, "Using Connection Pools with Multiprocessing"). The old
        pools stay referenced, so no connection of the parent's is finalized here either (a
        closing sqlite3 connection may checkpoint the parent's WAL)."""
        for engine in self.engines():
            _INHERITED.append(engine.pool)
            engine.dispose(close=False)
