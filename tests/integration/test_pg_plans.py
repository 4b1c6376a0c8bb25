"""PostgreSQL plans the answers' and jobs' statements for their values (bot/db.py): a generic
plan, which PostgreSQL adopts for a statement psycopg has prepared, made a team's usage sum 3x
slower. The gateway's quick engine keeps PostgreSQL's default for its one-row statements."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from bot.db import Database


def test_the_main_engine_plans_for_the_values_and_the_quick_one_is_default(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("a PostgreSQL setting")
    with db.session_scope(read_only=True) as s:
        assert s.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_custom_plan"
    with db.quick.connect() as conn:
        assert conn.execute(text("SHOW plan_cache_mode")).scalar_one() == "auto"
