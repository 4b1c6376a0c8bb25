"""Shared fixtures. Every database test runs on SQLite and on PostgreSQL.

PostgreSQL tests use a private schema per test run, so parallel runs never collide.
When PostgreSQL is unreachable they skip, unless REQUIRE_POSTGRES=1 (CI) makes that fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text

from bot.aws.local_registry import TABLE as LOCAL_REGISTRY
from bot.clock import FixedClock
from bot.db import Database
from bot.migrate import upgrade
from bot.models import Base

PG_BASE = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> bool:
    try:
        eng = create_engine(PG_BASE, connect_args={"connect_timeout": 3})
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    if not _pg_reachable():
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but not reachable at {PG_BASE}")
        pytest.skip("PostgreSQL not reachable")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def new_pg_schema_url() -> tuple[str, str]:
    """A fresh, empty schema (for migration tests); caller drops it."""
    schema = f"m_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return f"{PG_BASE}?options=-csearch_path%3D{schema}", schema


def drop_pg_schema(schema: str) -> None:
    admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="session")
def _pg_migrated(pg_url: str) -> Iterator[Database]:
    upgrade(pg_url)
    database = Database(pg_url)
    yield database
    database.dispose()


def _wipe(database: Database) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with database.engine.begin() as c:
        if inspect(c).has_table(LOCAL_REGISTRY):  # made on first use, outside the migrations
            tables.append(LOCAL_REGISTRY)
        if database.dialect == "postgresql":
            c.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            for t in tables:
                c.execute(text(f'DELETE FROM "{t}"'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Database]:
    """A migrated, empty database: SQLite file per test, or the run's PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/bot.db"
        upgrade(url)
        database = Database(url)
        yield database
        database.dispose()
    else:
        database = request.getfixturevalue("_pg_migrated")
        _wipe(database)
        yield database


@pytest.fixture
def sqlite_db(tmp_path: object) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path}/bot.db"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 11, 25, 10, 30, tzinfo=UTC))


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never reach real AWS: dummy credentials, a fixed region, no shared config."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SECURITY_TOKEN": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                 "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
