"""Engine and session factory. `session_scope()` is the only place that commits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from bot.services.audit import KEYRING_INFO, NO_KEY, Keyring
from bot.services.leases import current_fence


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def make_quick_engine(url: str) -> Engine:
    """For the gateway's hot path (bot/services/quota_sql.py), statements that are each a whole
    transaction. PostgreSQL: autocommit (no BEGIN/COMMIT round trips) and no pre-ping (no
    `SELECT 1` per checkout; a connection the server dropped fails one request, and the pool
    replaces it). SQLite: `synchronous=NORMAL` (WAL: a commit is not fsynced, it may be lost
    with power, never corrupt), the counterpart of PostgreSQL's `synchronous_commit = off`."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, synchronous="NORMAL")
    # At most 15 connections (the main pool has 30): each statement is short, and more
    # connections than cores buy no throughput, only PostgreSQL's max_connections.
    return create_engine(url, pool_pre_ping=False, pool_size=5, max_overflow=10,
                         isolation_level="AUTOCOMMIT")


def _sqlite_engine(url: str, synchronous: str | None = None, **kwargs: Any) -> Engine:
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", 30)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    # pysqlite's deferred BEGIN lets two writers read the same audit head and then fail
    # on upgrade; BEGIN IMMEDIATE serialises writers up front, which is what we want for
    # an embedded, low-write database.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if ":memory:" not in url:
            cur.execute("PRAGMA journal_mode=WAL")
            if synchronous:
                cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _check_fence(session: Session) -> None:
    """Inside `leases.fenced()` (a scheduled job), commit only while the lease is still held:
    checked in this transaction, which then rolls back with `LeaseLost` if it is not."""
    fence = current_fence()
    if fence is not None:
        fence.check(session)


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
    def session_scope(self, join: bool = False) -> Iterator[Session]:
        """One transaction: commit when the block ends cleanly, roll back otherwise.

        `join=True` reuses the transaction already open in this thread, if any (the local
        AIP registry lives in our own database; on SQLite a second writer would deadlock).
        """
        current = self._current.get()
        if join and current is not None:
            yield current
            return
        session = self.factory()
        token = self._current.set(session)
        try:
            yield session
            _check_fence(session)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            self._current.reset(token)
            session.close()

    def engines(self) -> list[Engine]:
        """Every engine this database opens connections with (hooks such as the rotated
        password's go on each)."""
        return [self.engine] if self.quick is self.engine else [self.engine, self.quick]

    def dispose(self) -> None:
        for engine in self.engines():
            engine.dispose()
