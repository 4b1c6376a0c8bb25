"""Upgrade → downgrade → upgrade on both databases, and no drift from the models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from bot.aws.local_registry import TABLE
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.db import Database
from bot.migrate import downgrade, upgrade
from bot.models import Base
from tests.conftest import _pg_reachable, drop_pg_schema, new_pg_schema_url

REGION, ACCOUNT = "us-east-1", "123456789012"
HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"
T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/m.db"
        return
    if not _pg_reachable():
        pytest.skip("PostgreSQL not reachable")
    url, schema = new_pg_schema_url()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


def _tables(url: str) -> set[str]:
    eng = create_engine(url)
    try:
        return set(inspect(eng).get_table_names()) - {"alembic_version"}
    finally:
        eng.dispose()


def test_up_down_up_and_no_drift(empty_url: str) -> None:
    upgrade(empty_url)
    assert _tables(empty_url) == set(Base.metadata.tables)
    downgrade(empty_url, "base")
    assert _tables(empty_url) == set()
    upgrade(empty_url)
    eng = create_engine(empty_url)
    with eng.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    eng.dispose()
    assert diff == [], f"migrations drift from bot/models.py: {diff}"


# ---------------------------------------------------------------- 0004: the local AIP registry


def _registry_shape(url: str) -> dict[str, Any]:
    eng = create_engine(url)
    try:
        insp = inspect(eng)
        return {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(TABLE)],
            "pk": insp.get_pk_constraint(TABLE),
            "unique": sorted((u["name"], tuple(u["column_names"]))
                             for u in insp.get_unique_constraints(TABLE)),
        }
    finally:
        eng.dispose()


def test_0004_drops_the_empty_registry_and_its_downgrade_makes_it_as_0001_did(
        empty_url: str) -> None:
    upgrade(empty_url, "0003")
    as_0001 = _registry_shape(empty_url)
    upgrade(empty_url)
    assert TABLE not in _tables(empty_url)
    downgrade(empty_url, "0003")
    assert _registry_shape(empty_url) == as_0001


def test_the_registry_made_on_first_use_is_the_table_0001_made(empty_url: str) -> None:
    upgrade(empty_url, "0003")
    as_0001 = _registry_shape(empty_url)
    upgrade(empty_url)
    db = Database(empty_url)
    try:
        assert LocalProfiles(db, REGION, ACCOUNT, FixedClock(T0)).list_application() == []
    finally:
        db.dispose()
    assert _registry_shape(empty_url) == as_0001
    downgrade(empty_url, "0003")  # finds the table there already
    assert _registry_shape(empty_url) == as_0001
    downgrade(empty_url, "base")
    assert _tables(empty_url) == set()


def test_0004_keeps_a_registry_that_holds_profiles(empty_url: str) -> None:
    """Dropping it would lose AIPs that `profiles` rows point at."""
    upgrade(empty_url, "0003")
    db = Database(empty_url)
    try:
        registry = LocalProfiles(db, REGION, ACCOUNT, FixedClock(T0))
        made = registry.create("alice-haiku", HAIKU_ARN, {"user": "alice"}, "", "tok-1")
        upgrade(empty_url)
        assert registry.get(made.arn) == made
        downgrade(empty_url, "0003")
        assert registry.list_application() == [replace(made, tags=None)]
    finally:
        db.dispose()


def test_0011_classifies_existing_principals_and_downgrades(empty_url: str) -> None:
    """Before 0011 only IAM users and roles could be linked: each row gets its kind."""
    upgrade(empty_url, "0004")
    eng = create_engine(empty_url)
    arns = {f"arn:aws:iam::{ACCOUNT}:user/alice": "user",
            f"arn:aws:iam::{ACCOUNT}:role/team/ml-training": "role",
            f"arn:aws:iam::{ACCOUNT}:user/BedrockAPIKey_x1": "apikey",
            f"arn:aws:iam::{ACCOUNT}:user/Bedrock-APIKey-not": "user"}
    try:
        with eng.begin() as conn:
            conn.execute(text("INSERT INTO subjects (id, kind, name, created_by, created_at) VALUES "
                              "(1, 'user', 'alice', 'test', :t)"), {"t": T0})
            for i, arn in enumerate(arns, start=1):
                conn.execute(text("INSERT INTO principals (id, arn, subject_id, created_by, created_at) "
                                  "VALUES (:i, :a, 1, 'test', :t)"), {"i": i, "a": arn, "t": T0})
        upgrade(empty_url)
        with eng.connect() as conn:
            got = dict(conn.execute(text("SELECT arn, kind FROM principals")).all())
            assert got == arns
            assert conn.execute(text("SELECT count(*) FROM revocations")).scalar_one() == 0
        downgrade(empty_url, "0004")
        with eng.connect() as conn:
            assert "kind" not in {c["name"] for c in inspect(conn).get_columns("principals")}
            assert conn.execute(text("SELECT count(*) FROM principals")).scalar_one() == 4
    finally:
        eng.dispose()
