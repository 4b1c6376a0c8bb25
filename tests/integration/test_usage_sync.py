"""The usage sync (CloudWatch → ledger) against moto's CloudWatch and the local AIP registry,
on SQLite and PostgreSQL: hourly rows and costs, idempotent re-reads, first-sight backfill,
gaps, unknown ModelIds, adoption of tagged profiles, and the GetMetricData call budget."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from math import ceil
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from sqlalchemy import func, select

from bot.aws.metrics import CloudWatchMetrics
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.db import Database
from bot.flows.usage_sync import sync_usage
from bot.models import AuditEvent, Meter, Profile, Subject, SyncCursor, Usage
from bot.pricing import PriceTable
from bot.services import audit, directory
from bot.services.directory import Actor, SubjectRef
from bot.services.usage import SyncResult, report
from tests.aips import provision_aip

ACCOUNT = "123456789012"
REGION = "us-east-1"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"  # $0.00025 in / $0.00125 out per 1k tokens
HAIKU_35 = "anthropic.claude-3-5-haiku-20241022-v1:0"  # cache read $0.00008 per 1k tokens
HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"
T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # the `clock` fixture's time
H = timedelta(hours=1)
ADMIN = Actor.slack("UADMIN01")
PRICES = PriceTable.load()

# (meter key, hour) -> (input, output, cache read, cache write, requests, micro-USD)
Ledger = dict[tuple[str, datetime], tuple[int, int, int, int, int, int]]


# ---- helpers ---------------------------------------------------------------------------


class Recording:
    """Passes calls through to a CloudWatch client and keeps every request."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def list_metrics(self, **request: Any) -> dict[str, Any]:
        self.requests.append(("ListMetrics", request))
        return dict(self.client.list_metrics(**request))

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self.requests.append(("GetMetricData", request))
        return dict(self.client.get_metric_data(**request))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [r for op, r in self.requests if op == operation]


class FakeCloudWatch:
    """Just enough CloudWatch for syncs moto can't model: hourly sums per (ModelId, metric),
    ListMetrics in pages of 500 that honour RecentlyActive=PT3H against `clock`, and
    GetMetricData refusing more than 500 queries, as the real API does."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.points: dict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def put(self, model_id: str, at: datetime, **values: float) -> None:
        for metric, value in values.items():
            self.points[(model_id, metric)].append((at, value))

    def list_metrics(self, **request: Any) -> dict[str, Any]:
        self.requests.append(("ListMetrics", request))
        assert request["Namespace"] == "AWS/Bedrock"
        since = self.clock() - 3 * H if request.get("RecentlyActive") == "PT3H" else None
        every = sorted(key for key, points in self.points.items()
                       if since is None or any(at >= since for at, _ in points))
        offset = int(request.get("NextToken", 0))
        response: dict[str, Any] = {"Metrics": [
            {"Namespace": "AWS/Bedrock", "MetricName": metric,
             "Dimensions": [{"Name": "ModelId", "Value": model_id}]}
            for model_id, metric in every[offset:offset + 500]]}
        if offset + 500 < len(every):
            response["NextToken"] = str(offset + 500)
        return response

    def get_metric_data(self, **request: Any) -> dict[str, Any]:
        self.requests.append(("GetMetricData", request))
        queries = request["MetricDataQueries"]
        if len(queries) > 500:
            raise ClientError({"Error": {"Code": "ValidationError", "Message": "> 500 queries"}},
                              "GetMetricData")
        start, end = request["StartTime"], request["EndTime"]
        results = []
        for query in queries:
            metric = query["MetricStat"]["Metric"]
            assert query["MetricStat"]["Period"] == 3600 and query["MetricStat"]["Stat"] == "Sum"
            key = (metric["Dimensions"][0]["Value"], metric["MetricName"])
            sums: dict[datetime, float] = defaultdict(float)
            for at, value in self.points.get(key, []):
                if start <= at < end:
                    sums[at.replace(minute=0, second=0, microsecond=0)] += value
            hours = sorted(sums)
            results.append({"Id": query["Id"], "Label": metric["MetricName"], "Timestamps": hours,
                            "Values": [sums[h] for h in hours], "StatusCode": "Complete"})
        return {"MetricDataResults": results, "Messages": []}

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [r for op, r in self.requests if op == operation]


@pytest.fixture
def cw() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("cloudwatch", region_name=REGION)


def put(cw: Any, model_id: str, at: datetime, inp: int = 0, out: int = 0, calls: int = 0,
        cache_read: int = 0) -> None:
    """Datapoints as Bedrock publishes them for one moment of use."""
    data = [("InputTokenCount", inp), ("OutputTokenCount", out), ("Invocations", calls),
            ("CacheReadInputTokenCount", cache_read)]
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
        {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": model_id}],
         "Timestamp": at, "Value": value}
        for name, value in data if value])


def backend_for(db: Database, clock: FixedClock) -> LocalProfiles:
    return LocalProfiles(db, REGION, ACCOUNT, clock)


def provision(db: Database, clock: FixedClock, who: str = "alice", model: str = HAIKU) -> str:
    """A profile made through the bot; returns its id (CloudWatch's ModelId)."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
    made = provision_aip(db, clock, backend_for(db, clock), REGION, ADMIN, SubjectRef(name=who), model)
    return made.profile_id


def sync(db: Database, clock: FixedClock, client: Any, backend: LocalProfiles | None = None,
         metrics: CloudWatchMetrics | None = None) -> SyncResult:
    metrics = metrics or CloudWatchMetrics(client)
    return sync_usage(db, clock, metrics, backend, PRICES, discover=backend is not None)


def ledger(db: Database) -> Ledger:
    with db.session_scope() as s:
        rows = s.execute(select(Meter.key, Usage.hour, Usage.input_tokens, Usage.output_tokens,
                                Usage.cache_read_tokens, Usage.cache_write_tokens, Usage.requests,
                                Usage.cost_micro_usd).join(Meter, Meter.id == Usage.meter_id))
        return {(key, hour): tuple(values) for key, hour, *values in rows}  # type: ignore[misc]


def profile_row(db: Database, profile_id: str) -> Profile:
    with db.session_scope() as s:
        found = s.scalar(select(Profile).where(Profile.profile_id == profile_id))
        assert found is not None
        return found


# ---- hourly rows and cost --------------------------------------------------------------


def test_current_and_previous_hour_become_ledger_rows_with_cost(db: Database, clock: FixedClock,
                                                                 cw: Any) -> None:
    pid = provision(db, clock)
    put(cw, pid, T0 - timedelta(minutes=80), inp=1000, out=200, calls=2)  # 09:10
    put(cw, pid, T0 - timedelta(minutes=40), inp=500, out=100, calls=1)  # 09:50
    put(cw, pid, T0 - timedelta(minutes=25), inp=4000, out=800, calls=3)  # 10:05

    result = sync(db, clock, cw)

    nine, ten = T0.replace(minute=0) - H, T0.replace(minute=0)
    # Haiku: 0.25 micro-USD per input token, 1.25 per output token.
    assert ledger(db) == {
        (pid, nine): (1500, 300, 0, 0, 3, 750),
        (pid, ten): (4000, 800, 0, 0, 3, 2000),
    }
    assert PRICES.cost_micro_usd(HAIKU, 1500, 300) == 750
    assert (result.rows, result.backfilled, result.adopted) == (2, 1, 0)
    with db.session_scope() as s:
        meter = s.scalar(select(Meter).where(Meter.kind == "profile", Meter.key == pid))
        alice = s.scalar(select(Subject).where(Subject.name == "alice"))
        assert meter is not None and alice is not None and meter.subject_id == alice.id
        assert s.get(SyncCursor, "usage_sync").position == ten  # type: ignore[union-attr]


def test_rerun_is_idempotent_and_a_later_read_overwrites_the_hour(db: Database, clock: FixedClock,
                                                                   cw: Any) -> None:
    pid = provision(db, clock)
    put(cw, pid, T0 - timedelta(minutes=80), inp=1000, out=200, calls=2)
    put(cw, pid, T0 - timedelta(minutes=25), inp=4000, out=800, calls=3)
    sync(db, clock, cw)
    first = ledger(db)

    again = sync(db, clock, cw)
    assert ledger(db) == first  # same rows, nothing doubled
    assert again.rows == 2 and again.backfilled == 0

    put(cw, pid, T0 - timedelta(minutes=10), inp=600, out=100, calls=1)  # 10:20, same hour
    clock.advance(minutes=5)
    sync(db, clock, cw)
    ten = T0.replace(minute=0)
    assert ledger(db) == {
        (pid, ten - H): (1000, 200, 0, 0, 2, 500),
        (pid, ten): (4600, 900, 0, 0, 4, 2275),  # CloudWatch's new sum, not 4000 + 4600
    }


# ---- first-sight backfill and gaps -----------------------------------------------------


def test_first_sight_backfills_current_and_previous_month_once(db: Database, clock: FixedClock,
                                                                cw: Any) -> None:
    pid = provision(db, clock)
    put(cw, pid, T0 - timedelta(days=20), inp=700, out=70, calls=7)  # Nov 5 10:30
    put(cw, pid, datetime(2026, 10, 20, 8, 15, tzinfo=UTC), inp=300, out=30, calls=3)
    put(cw, pid, datetime(2026, 10, 1, 0, 5, tzinfo=UTC), inp=11, out=1, calls=1)
    put(cw, pid, datetime(2026, 9, 15, 12, 0, tzinfo=UTC), inp=999, out=99, calls=9)  # too old
    put(cw, pid, T0 - timedelta(minutes=20), inp=5, out=1, calls=1)  # 10:10 today
    rec = Recording(cw)

    first = CloudWatchMetrics(rec)
    result = sync(db, clock, rec, metrics=first)

    assert ledger(db) == {
        (pid, datetime(2026, 10, 1, 0, tzinfo=UTC)): (11, 1, 0, 0, 1, 4),  # 2.75 + 1.25
        (pid, datetime(2026, 10, 20, 8, tzinfo=UTC)): (300, 30, 0, 0, 3, 113),  # 75 + 37.5
        (pid, datetime(2026, 11, 5, 10, tzinfo=UTC)): (700, 70, 0, 0, 7, 263),  # 175 + 87.5
        (pid, datetime(2026, 11, 25, 10, tzinfo=UTC)): (5, 1, 0, 0, 1, 3),  # 1.25 + 1.25
    }
    assert result.backfilled == 1
    assert profile_row(db, pid).backfilled_at == T0
    (start,) = [r["StartTime"] for r in rec.of("GetMetricData")]
    # October begins at Sep 30 10:00 UTC in UTC+14 and at Oct 1 12:00 UTC in UTC-12: the
    # backfill covers the previous month in any BOT_TIMEZONE, with at most a day to spare.
    assert datetime(2026, 9, 29, 10, tzinfo=UTC) <= start <= datetime(2026, 9, 30, 10, tzinfo=UTC)
    hours = (datetime(2026, 11, 25, 11, tzinfo=UTC) - start) // H
    assert first.calls["GetMetricData"] == CloudWatchMetrics.calls_needed(3, hours) == 1

    rec.requests.clear()
    clock.advance(minutes=1)
    second = CloudWatchMetrics(rec)
    again = sync(db, clock, rec, metrics=second)

    assert again.backfilled == 0
    assert profile_row(db, pid).backfilled_at == T0
    assert second.calls["GetMetricData"] == CloudWatchMetrics.calls_needed(3, 2) == 1
    assert [r["StartTime"] for r in rec.of("GetMetricData")] == [datetime(2026, 11, 25, 9, tzinfo=UTC)]
    assert len(ledger(db)) == 4


def test_skipped_hours_are_read_after_a_gap(db: Database, clock: FixedClock, cw: Any) -> None:
    pid = provision(db, clock)
    put(cw, pid, T0 - timedelta(minutes=25), inp=10, calls=1)  # 10:05
    sync(db, clock, cw)

    clock.advance(hours=5)  # 15:30; nothing ran at 11:xx .. 14:xx
    for hour, tokens in ((11, 110), (12, 120), (13, 130), (14, 140), (15, 150)):
        put(cw, pid, datetime(2026, 11, 25, hour, 5, tzinfo=UTC), inp=tokens, calls=1)
    rec = Recording(cw)
    result = sync(db, clock, rec)

    assert result.start == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert {hour.hour: row[0] for (_, hour), row in ledger(db).items()} == {
        10: 10, 11: 110, 12: 120, 13: 130, 14: 140, 15: 150}
    # 5.5 hours since the cursor: RecentlyActive=PT3H would miss profiles idle since 11:xx.
    assert [r.get("RecentlyActive") for r in rec.of("ListMetrics")] == [None]
    assert [r["StartTime"] for r in rec.of("GetMetricData")] == [datetime(2026, 11, 25, 10, tzinfo=UTC)]

    rec.requests.clear()
    clock.advance(minutes=1)
    normal = sync(db, clock, rec)
    assert normal.start == datetime(2026, 11, 25, 14, tzinfo=UTC)
    assert [r.get("RecentlyActive") for r in rec.of("ListMetrics")] == ["PT3H"]


def test_metrics_of_unknown_model_ids_are_ignored(db: Database, clock: FixedClock, cw: Any) -> None:
    pid = provision(db, clock)
    at = T0 - timedelta(minutes=25)
    put(cw, pid, at, inp=40, out=4, calls=1)
    put(cw, HAIKU, at, inp=5000, out=500, calls=50)  # a foundation model called directly
    put(cw, "zzzzzzzzzzzz", at, inp=7000, out=700, calls=70)  # an AIP the bot doesn't know

    result = sync(db, clock, cw)
    again = sync(db, clock, cw)

    assert ledger(db) == {(pid, T0.replace(minute=0)): (40, 4, 0, 0, 1, 15)}
    assert (result.rows, again.rows, again.active) == (1, 1, 1)
    with db.session_scope() as s:
        assert list(s.scalars(select(Meter.key))) == [pid]


# ---- adoption of profiles made outside the bot -----------------------------------------


def test_tagged_profiles_are_adopted_and_untagged_ignored(db: Database, clock: FixedClock,
                                                          cw: Any) -> None:
    managed = provision(db, clock, "alice")
    backend = backend_for(db, clock)
    team = backend.create("ml-shared", HAIKU_ARN, {"team": "team-ml"}, "", "")
    carol = backend.create("carol-console", HAIKU_ARN, {"user": "carol", "cost-center": "42"}, "", "")
    loose = backend.create("nobody-s", HAIKU_ARN, {}, "", "")
    at = T0 - timedelta(minutes=25)
    put(cw, team.id, at, inp=100, out=10, calls=1)
    put(cw, carol.id, at, inp=200, out=20, calls=2)
    put(cw, loose.id, at, inp=300, out=30, calls=3)

    result = sync(db, clock, cw, backend)

    assert result.adopted == 2
    with db.session_scope() as s:
        bound = {p.profile_id: (s.get(Subject, p.subject_id).name, s.get(Subject, p.subject_id).kind,
                                p.managed, p.model_id)  # type: ignore[union-attr]
                 for p in s.scalars(select(Profile))}
        assert bound == {managed: ("alice", "user", True, HAIKU),
                         team.id: ("team-ml", "team", False, HAIKU),
                         carol.id: ("carol", "user", False, HAIKU)}
        adopts = [(e.actor, e.target) for e in s.scalars(
            select(AuditEvent).where(AuditEvent.action == "profile.adopt").order_by(AuditEvent.id))]
        assert sorted(adopts) == [("system:usage_sync", "team:team-ml"),
                                  ("system:usage_sync", "user:carol")]
        created = set(s.scalars(select(AuditEvent.target).where(AuditEvent.action == "subject.create")))
        assert {"team:team-ml", "user:carol"} <= created
        check = audit.verify(s)
        assert check.ok, check.reason
    ten = T0.replace(minute=0)
    assert ledger(db) == {(team.id, ten): (100, 10, 0, 0, 1, 38),
                          (carol.id, ten): (200, 20, 0, 0, 2, 75)}

    again = sync(db, clock, cw, backend)
    assert again.adopted == 0
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action == "profile.adopt")) == 2
        assert s.scalar(select(func.count()).select_from(Profile)) == 3
        assert audit.verify(s).ok


# ---- the GetMetricData budget ----------------------------------------------------------


def _bulk_profiles(db: Database, clock: FixedClock, n: int) -> list[str]:
    """n known profiles of one user, already backfilled, inserted directly (fast)."""
    ids = [f"p{i:011d}" for i in range(n)]
    with db.session_scope() as s:
        owner = directory.ensure_user(s, clock, Actor.system("test"), SubjectRef(name="bulk"))
        s.add_all(Profile(arn=f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/{pid}",
                          profile_id=pid, name=f"bulk-{pid}", model_source=HAIKU_ARN, model_id=HAIKU,
                          tags={"user": "bulk"}, subject_id=owner.id, status="ACTIVE", managed=True,
                          created_by="test", created_at=clock(), backfilled_at=clock())
                  for pid in ids)
        s.add_all(Meter(kind="profile", key=pid, subject_id=owner.id, created_at=clock())
                  for pid in ids)
    return ids


@pytest.mark.parametrize("n", [1, 167, 1200])
def test_get_metric_data_calls_match_the_plan(db: Database, clock: FixedClock, n: int) -> None:
    ids = _bulk_profiles(db, clock, n)
    fake = FakeCloudWatch(clock)
    for i, pid in enumerate(ids):
        for at, scale in ((T0 - H, 1), (T0 - timedelta(minutes=10), 2)):
            fake.put(pid, at, InputTokenCount=scale * (100 + i), OutputTokenCount=scale * 10,
                     Invocations=scale)

    result = sync(db, clock, fake)

    needed = CloudWatchMetrics.calls_needed(3 * n, 2)
    assert result.calls["GetMetricData"] == needed == ceil(3 * n / 500)
    assert result.calls["ListMetrics"] == ceil(3 * n / 500)
    assert all(len(r["MetricDataQueries"]) <= 500 for r in fake.of("GetMetricData"))
    assert (result.active, result.read, result.rows, result.backfilled) == (n, 2 * n, 2 * n, 0)
    rows = ledger(db)
    assert len(rows) == 2 * n
    last = ids[-1]
    assert rows[(last, T0.replace(minute=0))] == (2 * (99 + n), 20, 0, 0, 2,
                                                  PRICES.cost_micro_usd(HAIKU, 2 * (99 + n), 20))
    assert sum(r[0] for r in rows.values()) == 3 * sum(100 + i for i in range(n))


# ---- regressions: each was a defect found while writing these tests ---------------------


def test_sync_result_counts_only_its_own_calls(db: Database, clock: FixedClock) -> None:
    """The runtime keeps one CloudWatchMetrics for the process; its counter keeps growing."""
    pid = provision(db, clock)
    fake = FakeCloudWatch(clock)
    fake.put(pid, T0 - timedelta(minutes=5), InputTokenCount=10, OutputTokenCount=1, Invocations=1)
    metrics = CloudWatchMetrics(fake)
    sync(db, clock, fake, metrics=metrics)
    clock.advance(minutes=1)

    second = sync(db, clock, fake, metrics=metrics)

    assert second.calls == {"ListMetrics": 1, "GetMetricData": CloudWatchMetrics.calls_needed(3, 2)}
    assert metrics.calls == {"ListMetrics": 2, "GetMetricData": 2}


@pytest.mark.parametrize("recent", [
    pytest.param({}, id="idle"),
    pytest.param({"CacheReadInputTokenCount": 10}, id="active-with-cache"),
    pytest.param(None, id="active-without-cache"),
])
def test_backfill_reads_cache_tokens(db: Database, clock: FixedClock,
                                     recent: dict[str, int] | None) -> None:
    """Yesterday's cache-read tokens are backfilled whatever the profile published lately."""
    pid = provision(db, clock, model=HAIKU_35)
    fake = FakeCloudWatch(clock)
    yesterday = datetime(2026, 11, 24, 12, 15, tzinfo=UTC)
    fake.put(pid, yesterday, InputTokenCount=1000, OutputTokenCount=100, Invocations=2,
             CacheReadInputTokenCount=5000)
    if recent != {}:  # used in the last 3 hours, with or without prompt caching
        fake.put(pid, T0 - timedelta(minutes=5), InputTokenCount=10, OutputTokenCount=1,
                 Invocations=1, **(recent or {}))

    sync(db, clock, fake)

    # 3.5 Haiku: 0.8 / 4 / 0.08 micro-USD per input / output / cache-read token.
    assert ledger(db)[(pid, yesterday.replace(minute=0))] == (1000, 100, 5000, 0, 2, 1600)


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "Pacific/Kiritimati", "America/New_York"])
def test_backfill_covers_the_previous_month_in_the_configured_zone(db: Database, clock: FixedClock,
                                                                   cw: Any, zone: str) -> None:
    """Months are local: east of UTC, October starts on Sep 30 in UTC."""
    tz = ZoneInfo(zone)
    pid = provision(db, clock)
    put(cw, pid, datetime(2026, 10, 1, 0, 0, tzinfo=tz).astimezone(UTC), inp=100, calls=1)
    put(cw, pid, datetime(2026, 10, 15, 12, 0, tzinfo=UTC), inp=50, calls=1)
    put(cw, pid, datetime(2026, 9, 30, 22, 0, tzinfo=tz).astimezone(UTC), inp=7, calls=1)  # Sept.
    sync(db, clock, cw)

    with db.session_scope() as s:
        month = report(s, clock, tz, 0, Actor.system("test"), SubjectRef(name="alice"), "month")
    assert (month.previous.input_tokens, month.previous.requests) == (150, 2)
