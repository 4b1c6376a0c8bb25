"""Adaptive polling and bedrock-mantle metering, against moto's CloudWatch, on SQLite and PostgreSQL.

The main property: over a simulated day, a bot that skips subjects far from every limit ends with
the same ledger as one that reads every profile every sync (no hour lost), while requesting fewer
GetMetricData metrics; a subject near its limit is read every sync.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.aws.metrics import CloudWatchMetrics
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput
from bot.flows.usage_sync import sync_usage
from bot.migrate import upgrade
from bot.models import Limit, Meter, PollMark, Profile, Subject, Usage
from bot.pricing import PriceTable
from bot.services import directory, mantle
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import totals
from bot.services.poll_cadence import Cadence
from bot.services.usage import SyncResult
from tests.conftest import drop_pg_schema, new_pg_schema_url

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PRICES = PriceTable.load()
DAY0 = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
ADMIN = Actor.slack("UADMIN01")
TICK = timedelta(minutes=5)
CADENCE = Cadence(sync_seconds=300, idle_seconds=900, target_seconds=60, default_tpm=200_000,
                  prices=PRICES)
# subject -> (profile id, limit on tokens per day or None)
SUBJECTS = {"near": ("pnear0000001", 1_000_000), "far": ("pfar00000001", 10_000_000_000),
            "free": ("pfree0000001", None), "team1": ("pteam0000001", None)}


@pytest.fixture
def cw() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("cloudwatch", region_name="us-east-1")


@pytest.fixture
def twin(db: Database, tmp_path: object) -> Iterator[Database]:
    """A second empty database of the same kind as `db`."""
    if db.dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/twin.db"
        upgrade(url)
        other = Database(url)
        yield other
        other.dispose()
        return
    url, schema = new_pg_schema_url()
    upgrade(url)
    other = Database(url)
    try:
        yield other
    finally:
        other.dispose()
        drop_pg_schema(schema)


def seed(db: Database, at: datetime) -> None:
    """The same subjects, AIPs (already backfilled) and limits in any database."""
    with db.session_scope() as s:
        ids = {}
        for name, (pid, amount) in SUBJECTS.items():
            sub = Subject(kind="user", name=name, created_by="test", created_at=at)
            s.add(sub)
            s.flush()
            ids[name] = sub.id
            s.add_all([Profile(arn=f"arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/{pid}",
                               profile_id=pid, name=f"{name}-haiku", model_source=HAIKU, model_id=HAIKU,
                               tags={}, subject_id=sub.id, created_by="test",
                               created_at=at - timedelta(days=9), backfilled_at=at - timedelta(days=9)),
                       Meter(kind="profile", key=pid, subject_id=sub.id, created_at=at)])
            if amount is not None:
                s.add(Limit(subject_id=sub.id, metric="tokens", amount=amount, window="day", warn=[80, 90],
                            action="notify", created_by="test", created_at=at, updated_at=at))
        s.flush()


def put(cw: Any, pid: str, at: datetime, inp: int, out: int) -> None:
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
        {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at,
         "Value": value} for name, value in (("InputTokenCount", inp), ("OutputTokenCount", out),
                                             ("Invocations", 1))])


def ledger(db: Database) -> dict[tuple[str, datetime], tuple[int, ...]]:
    with db.session_scope() as s:
        rows = s.execute(select(Meter.key, Usage.hour, Usage.input_tokens, Usage.output_tokens,
                                Usage.requests, Usage.cost_micro_usd).join(Meter, Meter.id == Usage.meter_id))
        return {(key, hour): tuple(values) for key, hour, *values in rows}


def run(db: Database, clock: FixedClock, cw: Any, cadence: Cadence | None) -> SyncResult:
    return sync_usage(db, clock, CloudWatchMetrics(cw), None, PRICES, discover=False, cadence=cadence)


def test_adaptive_polling_ends_with_the_same_ledger_over_a_day(db: Database, twin: Database, cw: Any) -> None:
    rng = random.Random(5)
    clock = FixedClock(DAY0)
    seed(db, DAY0)
    seed(twin, DAY0)
    every, adaptive = [], []
    t = DAY0
    while t < DAY0 + timedelta(days=1):
        t += TICK
        for _name, (pid, _) in SUBJECTS.items():
            if rng.random() < 0.6:  # a call somewhere in the last tick, late data included
                put(cw, pid, t - timedelta(seconds=rng.randint(1, 299)), rng.randint(100, 4000),
                    rng.randint(10, 500))
        clock.at = t
        every.append(run(db, clock, cw, None))
        adaptive.append(run(twin, clock, cw, CADENCE))
        near = {k: v for k, v in ledger(db).items() if k[0] == SUBJECTS["near"][0]}
        assert near == {k: v for k, v in ledger(twin).items() if k[0] == SUBJECTS["near"][0]}, t
    # after the idle cadence every skipped profile has been read again from its own mark
    clock.at = t + timedelta(seconds=CADENCE.idle_seconds)
    run(db, clock, cw, None)
    run(twin, clock, cw, CADENCE)

    assert ledger(db) == ledger(twin) and len(ledger(db)) > 4 * 20
    assert sum(r.skipped for r in adaptive) > 0 and all(r.skipped == 0 for r in every)
    asked_every = sum(r.metrics_requested for r in every)
    asked_adaptive = sum(r.metrics_requested for r in adaptive)
    assert 0 < asked_adaptive < asked_every


def test_a_skipped_profile_is_read_from_its_own_mark_across_an_hour(db: Database, cw: Any) -> None:
    clock = FixedClock(DAY0 + timedelta(hours=10, minutes=50))
    seed(db, DAY0)
    first = run(db, clock, cw, CADENCE)  # no marks yet: everyone is read
    assert first.skipped == 0
    pid = SUBJECTS["free"][0]
    put(cw, pid, DAY0 + timedelta(hours=10, minutes=55), 700, 70)
    clock.at = DAY0 + timedelta(hours=11, minutes=2)
    assert run(db, clock, cw, CADENCE).skipped >= 1  # "free" has no limit: idle cadence
    clock.at = DAY0 + timedelta(hours=12, minutes=5)  # its previous hour is 11:00, the data 10:55
    run(db, clock, cw, CADENCE)
    assert ledger(db)[(pid, DAY0 + timedelta(hours=10))][:2] == (700, 70)
    with db.session_scope() as s:
        mark = s.get(PollMark, ("profile", pid))
        assert mark is not None and mark.position == DAY0 + timedelta(hours=12)


# ---- bedrock-mantle ----------------------------------------------------------------------------


def put_mantle(cw: Any, project: str, model: str, at: datetime, inp: int, out: int) -> None:
    """As AWS publishes one inference: Project+Model per-inference tokens, and the Project and
    Account level totals (which the bot must not count again)."""
    both = [{"Name": "Project", "Value": project}, {"Name": "Model", "Value": model}]
    cw.put_metric_data(Namespace="AWS/BedrockMantle", MetricData=[
        {"MetricName": "InputTokens", "Dimensions": both, "Timestamp": at, "Value": inp},
        {"MetricName": "OutputTokens", "Dimensions": both, "Timestamp": at, "Value": out},
        {"MetricName": "Inferences", "Dimensions": both, "Timestamp": at, "Value": 1},
        {"MetricName": "TotalInputTokens", "Dimensions": both[:1], "Timestamp": at, "Value": inp},
        {"MetricName": "TotalOutputTokens", "Dimensions": both[:1], "Timestamp": at, "Value": out},
        {"MetricName": "Inferences", "Dimensions": both[:1], "Timestamp": at, "Value": 1},
        {"MetricName": "TotalInputTokens", "Timestamp": at, "Value": inp}])


def test_a_linked_mantle_project_is_metered_once_per_model_and_counts_for_its_subject(
        db: Database, cw: Any) -> None:
    now = DAY0 + timedelta(hours=10, minutes=30)
    clock = FixedClock(now)
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        assert mantle.link_project(s, clock, ADMIN, SubjectRef(name="carol"), "proj_abc123") == "carol"
    put_mantle(cw, "proj_abc123", HAIKU, now - timedelta(days=3), 1000, 100)  # backfilled
    put_mantle(cw, "proj_abc123", HAIKU, now - timedelta(minutes=20), 2000, 200)
    put_mantle(cw, "proj_abc123", "some.unpriced-model-v1", now - timedelta(minutes=10), 50, 5)
    put_mantle(cw, "proj_other99", HAIKU, now - timedelta(minutes=10), 9999, 999)  # not linked

    result = run(db, clock, cw, CADENCE)

    assert result.mantle_rows == 2
    with db.session_scope() as s:
        carol = directory.get(s, SubjectRef(name="carol"))
        t = totals(s, [carol.id], DAY0, DAY0 + timedelta(days=1))
        assert (t.input_tokens, t.output_tokens, t.requests) == (2050, 205, 2)
        assert t.unpriced_tokens == 55
        assert t.cost_micro_usd == PRICES.cost_micro_usd(HAIKU, 2000, 200) > 0
        week = totals(s, [carol.id], DAY0 - timedelta(days=7), DAY0 + timedelta(days=1))
        assert week.input_tokens == 3050
    # read again: idempotent, and nothing counted twice
    clock.at = now + timedelta(minutes=20)
    run(db, clock, cw, None)
    with db.session_scope() as s:
        carol = directory.get(s, SubjectRef(name="carol"))
        assert totals(s, [carol.id], DAY0, DAY0 + timedelta(days=1)).input_tokens == 2050


def test_mantle_links_are_validated_and_unlink_stops_counting(db: Database, cw: Any) -> None:
    clock = FixedClock(DAY0 + timedelta(hours=10))
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        mantle.link_project(s, clock, ADMIN, SubjectRef(name="carol"),
                            "arn:aws:bedrock-mantle:us-east-1:123456789012:project/proj_x1")
    for bad in ("proj_", "abc123", "proj_a b", "proj_" + "a" * 60,
                "arn:aws:bedrock:us-east-1:1:project/proj_x"):
        with db.session_scope() as s, pytest.raises(BadInput):
            mantle.link_project(s, clock, ADMIN, SubjectRef(name="carol"), bad)
    with db.session_scope() as s, pytest.raises(BadInput, match="already counts for carol"):
        mantle.link_project(s, clock, ADMIN, SubjectRef(name="dave"), "proj_x1")
    with db.session_scope() as s:
        mantle.unlink_project(s, clock, ADMIN, SubjectRef(name="carol"), "proj_x1")
    put_mantle(cw, "proj_x1", HAIKU, clock() - timedelta(minutes=5), 10, 1)
    assert run(db, clock, cw, None).mantle_rows == 0
    with db.session_scope() as s:
        meter = s.scalar(select(Meter).where(Meter.kind == "mantle"))
        assert meter is not None and meter.subject_id is None
