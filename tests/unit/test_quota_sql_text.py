"""The gateway's PostgreSQL statements stay inside psycopg's statement cache: a text over
`MAX_CACHED_STATEMENT_LENGTH` characters (or with over `MAX_CACHED_STATEMENT_PARAMS` parameters)
is parsed again on every execution, about 1 ms of CPU per /v1/usage (issue 18)."""

from __future__ import annotations

import pytest
from psycopg import _queries
from sqlalchemy import TextClause
from sqlalchemy.dialects import postgresql

from bot.services import quota_sql

HOT = {"settle": quota_sql._SETTLE_PG_TEXT, "reserve": quota_sql._RESERVE_PG_TEXT,
       "read": quota_sql._READ["postgresql"]}


@pytest.mark.parametrize("name", sorted(HOT))
def test_hot_statements_fit_psycopgs_cache(name: str) -> None:
    statement = HOT[name]
    assert isinstance(statement, TextClause)
    compiled = statement.compile(dialect=postgresql.psycopg.dialect())
    assert len(str(compiled).encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
    assert len(compiled.params) <= _queries.MAX_CACHED_STATEMENT_PARAMS


def test_compact_keeps_tokens_and_drops_runs_of_blanks() -> None:
    assert quota_sql.compact("SELECT  a,\n   b\n FROM t ") == "SELECT a, b FROM t"


DRIVER = {"settle": quota_sql._DRIVER_SETTLE, "reserve": quota_sql._DRIVER_RESERVE,
          "read": quota_sql._DRIVER_READ}


@pytest.mark.parametrize("name", sorted(DRIVER))
def test_driver_statements_are_the_engines_and_fit_the_cache(name: str) -> None:
    """What `Database.quick_statement` sends is the engine's statement with psycopg placeholders
    (no bind casts of its own: the caller binds naive UTC times, as UTCDateTime does)."""
    sql = DRIVER[name]
    engine_sql = str(HOT[name].compile(dialect=postgresql.psycopg.dialect()))
    assert sql == " ".join(engine_sql.split()).replace("::TIMESTAMP WITHOUT TIME ZONE", "")
    assert "%(" in sql and "::" not in sql
    assert len(sql.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH
