"""The offline AIP registry (`BOT_PROFILES_BACKEND=local`): same shapes and error codes as
Bedrock, stored in the bot's own database but outside its migrations: every test starts from an
empty database. Runs on SQLite, and on PostgreSQL when reachable."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from bot.aws import local_registry
from bot.aws import profiles as profiles_module
from bot.aws.local_registry import LocalInferenceProfile
from bot.aws.profiles import (
    PROFILE_ARN_RE,
    PROFILE_ID_RE,
    LocalProfiles,
    ProfilesBackend,
    managed_tags,
)
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import AwsError
from bot.models import Base

ACCOUNT = "123456789012"
REGION = "us-east-1"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"
SYSTEM_ARN = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:inference-profile/us.{HAIKU}"
PG_BASE = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


def _sqlite(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 't.db'}")
    yield db
    db.dispose()


def _postgres() -> Iterator[Database]:
    """A private schema per test, dropped afterwards, so parallel runs never collide."""
    try:
        admin = create_engine(PG_BASE, isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable: {type(exc).__name__}")
    schema = f"t_profiles_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db = Database(f"{PG_BASE}?options=-csearch_path%3D{schema}", pool_size=2, max_overflow=0)
    try:
        yield db
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def local_db(tmp_path: Path) -> Iterator[Database]:
    yield from _sqlite(tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from (_sqlite(tmp_path) if request.param == "sqlite" else _postgres())


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def registry(local_db: Database, clock: FixedClock) -> LocalProfiles:
    return LocalProfiles(local_db, REGION, ACCOUNT, clock)


def test_lifecycle(any_db: Database, clock: FixedClock) -> None:
    registry = LocalProfiles(any_db, REGION, ACCOUNT, clock)
    assert isinstance(registry, ProfilesBackend)
    tags = managed_tags("user", "alice", {"cost-center": "42"})

    made = registry.create("alice-haiku", HAIKU_ARN, tags, "alice haiku", "tok-1")
    assert PROFILE_ID_RE.match(made.id)
    assert PROFILE_ARN_RE.match(made.arn)
    assert made.arn == f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/{made.id}"
    assert (made.name, made.model_source, made.model_arns) == ("alice-haiku", HAIKU_ARN,
                                                               (HAIKU_ARN,))
    assert (made.status, made.type, made.description, made.tags) == (
        "ACTIVE", "APPLICATION", "alice haiku", tags)

    assert registry.get(made.id) == made
    assert registry.get(made.arn) == made
    listed = registry.list_application()
    assert [(p.id, p.tags) for p in listed] == [(made.id, None)]
    assert registry.tags_of(made.arn) == tags

    # Same token: the same profile back, nothing new made.
    assert registry.create("alice-haiku", HAIKU_ARN, tags, "alice haiku", "tok-1") == made
    assert len(registry.list_application()) == 1

    with pytest.raises(AwsError) as err:
        registry.create("alice-haiku", HAIKU_ARN, tags, "", "tok-2")
    assert (err.value.operation, err.value.code) == ("CreateInferenceProfile",
                                                     "ConflictException")

    registry.delete(made.id)
    assert registry.get(made.id) is None
    assert registry.get(made.arn) is None
    assert registry.list_application() == []
    registry.delete(made.id)  # missing is fine


def test_each_call_commits_on_its_own(registry: LocalProfiles, local_db: Database,
                                      clock: FixedClock) -> None:
    made = registry.create("p1", HAIKU_ARN, {}, "", "")
    second_process = Database(local_db.url)
    try:
        assert LocalProfiles(second_process, REGION, ACCOUNT, clock).get(made.arn) == made
    finally:
        second_process.dispose()


def test_created_at_comes_from_the_clock(registry: LocalProfiles, local_db: Database) -> None:
    made = registry.create("p1", HAIKU_ARN, {}, "", "")
    with local_db.session_scope() as s:
        row = s.get(LocalInferenceProfile, made.id)
        assert row is not None and row.created_at == T0


def test_from_a_system_profile_lists_the_foundation_model(registry: LocalProfiles) -> None:
    made = registry.create("team-eng-haiku", SYSTEM_ARN, {"team": "team-eng"}, "", "")
    assert made.model_source == SYSTEM_ARN
    assert made.model_arns == (HAIKU_ARN,)
    assert registry.get(made.id) == made


def test_ids_are_random_and_distinct(registry: LocalProfiles) -> None:
    ids = {registry.create(f"p{i}", HAIKU_ARN, {}, "", "").id for i in range(20)}
    assert len(ids) == 20


def test_a_colliding_random_id_is_retried(registry: LocalProfiles,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = registry.create("p1", HAIKU_ARN, {}, "", "")
    chars = iter(first.id + "zzzzzzzzzzzz")
    monkeypatch.setattr(profiles_module.secrets, "choice", lambda _alphabet: next(chars))
    second = registry.create("p2", HAIKU_ARN, {}, "", "")
    assert second.id == "zzzzzzzzzzzz"
    assert registry.get(first.id) == first


def test_name_taken_without_token_conflicts(registry: LocalProfiles) -> None:
    registry.create("p1", HAIKU_ARN, {}, "", "")
    with pytest.raises(AwsError, match="ConflictException"):
        registry.create("p1", HAIKU_ARN, {}, "", "")


def test_token_reused_with_other_parameters_conflicts(registry: LocalProfiles) -> None:
    registry.create("p1", HAIKU_ARN, {}, "", "tok-1")
    with pytest.raises(AwsError, match="ConflictException"):
        registry.create("p2", HAIKU_ARN, {}, "", "tok-1")


def test_tags_of_a_missing_profile(registry: LocalProfiles) -> None:
    arn = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/aaaaaaaaaaaa"
    with pytest.raises(AwsError) as err:
        registry.tags_of(arn)
    assert (err.value.operation, err.value.code) == ("ListTagsForResource",
                                                     "ResourceNotFoundException")


def test_list_is_in_creation_order(registry: LocalProfiles, clock: FixedClock) -> None:
    for name in ("b", "a", "c"):
        registry.create(name, HAIKU_ARN, {}, "", "")
        clock.advance(seconds=1)
    assert [p.name for p in registry.list_application()] == ["b", "a", "c"]


@pytest.mark.parametrize(("name", "source", "tags", "description", "token", "field"), [
    ("", HAIKU_ARN, {}, "", "", "inferenceProfileName"),
    ("bad name!", HAIKU_ARN, {}, "", "", "inferenceProfileName"),
    ("-lead", HAIKU_ARN, {}, "", "", "inferenceProfileName"),
    ("a--b", HAIKU_ARN, {}, "", "", "inferenceProfileName"),
    ("a" * 65, HAIKU_ARN, {}, "", "", "inferenceProfileName"),
    ("p", HAIKU, {}, "", "", "modelSource.copyFrom"),
    ("p", f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/aaaaaaaaaaaa",
     {}, "", "", "modelSource.copyFrom"),
    ("p", "arn:aws:bedrock:us-east-1::foundation-model/x y", {}, "", "", "modelSource.copyFrom"),
    ("p", HAIKU_ARN, {}, "made for @alice!", "", "description"),
    ("p", HAIKU_ARN, {}, "d" * 201, "", "description"),
    ("p", HAIKU_ARN, {}, "", "tok_1", "clientRequestToken"),
    ("p", HAIKU_ARN, {"aws:x": "y"}, "", "", "tags"),
    ("p", HAIKU_ARN, {"k": "a;b"}, "", "", "tags"),
])
def test_create_validates_like_aws(registry: LocalProfiles, name: str, source: str,
                                   tags: dict[str, str], description: str, token: str,
                                   field: str) -> None:
    with pytest.raises(AwsError) as err:
        registry.create(name, source, tags, description, token)
    assert (err.value.operation, err.value.code) == ("CreateInferenceProfile",
                                                     "ValidationException")
    assert field in str(err.value)
    assert registry.list_application() == []


def test_too_many_tags(registry: LocalProfiles) -> None:
    with pytest.raises(AwsError, match="TooManyTagsException"):
        registry.create("p", HAIKU_ARN, {f"k{i}": "v" for i in range(51)}, "", "")


def test_bad_identifier_is_a_validation_error(registry: LocalProfiles) -> None:
    with pytest.raises(AwsError, match="ValidationException"):
        registry.get("not an id")
    with pytest.raises(AwsError, match="ValidationException"):
        registry.delete("")


def test_partition_follows_the_region(local_db: Database, clock: FixedClock) -> None:
    gov = LocalProfiles(local_db, "us-gov-west-1", ACCOUNT, clock)
    made = gov.create("p", f"arn:aws-us-gov:bedrock:us-gov-west-1::foundation-model/{HAIKU}",
                      {}, "", "")
    assert made.arn.startswith("arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:")
    assert PROFILE_ARN_RE.match(made.arn)


def test_account_id(registry: LocalProfiles) -> None:
    assert registry.account_id() == ACCOUNT


@pytest.mark.parametrize(("region", "account"), [("us-east-1", "123"), ("US East", ACCOUNT)])
def test_constructor_checks_region_and_account(local_db: Database, clock: FixedClock,
                                               region: str, account: str) -> None:
    with pytest.raises(ValueError):
        LocalProfiles(local_db, region, account, clock)


# ---------------------------------------------------------------- its table, outside the migrations


def _has_table(db: Database) -> bool:
    return inspect(db.engine).has_table(local_registry.TABLE)


def test_the_table_is_no_production_table() -> None:
    assert local_registry.TABLE not in Base.metadata.tables
    assert LocalInferenceProfile.metadata is not Base.metadata


def test_the_table_is_made_on_first_use(any_db: Database, clock: FixedClock) -> None:
    registry = LocalProfiles(any_db, REGION, ACCOUNT, clock)
    assert not _has_table(any_db)  # building the backend touches nothing
    assert registry.list_application() == []
    assert _has_table(any_db)


def test_made_again_after_a_caller_rolls_back_the_first_use(any_db: Database,
                                                            clock: FixedClock) -> None:
    registry = LocalProfiles(any_db, REGION, ACCOUNT, clock)
    with pytest.raises(RuntimeError), any_db.session_scope():
        registry.create("p1", HAIKU_ARN, {}, "", "")  # joins the caller's transaction
        raise RuntimeError("the caller fails after the call")
    assert not _has_table(any_db)  # the CREATE TABLE was rolled back with the caller
    made = registry.create("p1", HAIKU_ARN, {}, "", "")
    assert registry.get(made.id) == made


def test_losing_the_race_to_make_the_table_is_harmless(any_db: Database, clock: FixedClock,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process made the table between our look and our CREATE: that CREATE fails in a
    savepoint and the call carries on in the same transaction (PostgreSQL would otherwise
    refuse every later statement of it)."""
    registry = LocalProfiles(any_db, REGION, ACCOUNT, clock)
    registry.list_application()
    real, looks = local_registry.inspect, []

    def first_look_misses(conn: Any) -> Any:
        looks.append(conn)
        return SimpleNamespace(has_table=lambda _name: False) if len(looks) == 1 else real(conn)

    monkeypatch.setattr(local_registry, "inspect", first_look_misses)
    made = registry.create("p1", HAIKU_ARN, {}, "", "")
    assert len(looks) == 2  # missed, tried, looked again
    assert registry.get(made.id) == made
