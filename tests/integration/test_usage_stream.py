"""Usage by push: CloudWatch Logs subscription records in moto's Kinesis → the consumer → the
ledger, on SQLite and PostgreSQL. Exactly once across crashes, restarts, replica takeover and
CloudWatch Logs redeliveries; the handover hour between polling and the stream; attribution;
the cross-check against CloudWatch; and a breach acted on from pushed usage."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import func, select

from bot.aws.invocation_records import CONTROL_MESSAGE, encode_subscription
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.config import load_settings
from bot.db import Database
from bot.flows import usage_stream
from bot.flows.usage_stream import StreamConsumer
from bot.models import (
    AuditEvent,
    Meter,
    Revocation,
    StreamCheckpoint,
    StreamEvent,
    Subject,
    SyncCursor,
    Usage,
)
from bot.pricing import PriceTable
from bot.quantities import Metric, Window, parse_amount
from bot.runtime import Services
from bot.services import directory, ledger, limits, profiles, stream_usage
from bot.services.directory import Actor, SubjectRef
from bot.services.logs_usage import map_metadata
from jobs import usage_sync
from tests.aips import provision_aip

ACCOUNT = "123456789012"
REGION = "us-east-1"
STREAM = "bedrock-usage"
GROUP = "/aws/bedrock/modelinvocations"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"  # 0.25 µ$ per input token, 1.25 per output token
T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # the `clock` fixture's time
ELEVEN = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # the handover hour fixed at T0
H = timedelta(hours=1)
ADMIN = Actor.slack("UADMIN01")
PRICES = PriceTable.load()
ALICE_ARN = f"arn:aws:iam::{ACCOUNT}:user/alice"
_ids = count(31953106606966983378809025079804211143289615424298221568)


def _set(clock: FixedClock, at: datetime) -> None:
    clock.at = at


def event_id() -> str:
    return str(next(_ids))


def record(at: datetime, model: str, *, arn: str = ALICE_ARN, inp: int = 100, out: int = 10,
           cache_read: int = 0, cache_write: int = 0, metadata: dict[str, str] | None = None) -> str:
    """One invocation log record (the message of a log event), as Bedrock writes it."""
    doc: dict[str, Any] = {
        "schemaType": "ModelInvocationLog", "schemaVersion": "1.0",
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "accountId": ACCOUNT,
        "identity": {"arn": arn}, "region": REGION, "requestId": str(uuid.uuid4()),
        "operation": "Converse", "modelId": model,
        "input": {"inputContentType": "application/json", "inputTokenCount": inp,
                  "cacheReadInputTokenCount": cache_read, "cacheWriteInputTokenCount": cache_write},
        "output": {"outputContentType": "application/json", "outputTokenCount": out},
    }
    if metadata is not None:
        doc["requestMetadata"] = metadata
    return json.dumps(doc)


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        kinesis = boto3.client("kinesis", region_name=REGION)
        kinesis.create_stream(StreamName=STREAM, ShardCount=2)
        yield {"kinesis": kinesis, "cloudwatch": boto3.client("cloudwatch", region_name=REGION),
               "iam": boto3.client("iam", region_name=REGION)}


def services_for(db: Database, clock: FixedClock, aws: dict[str, Any], **env: str) -> Services:
    settings = load_settings(None, DATABASE_URL=db.url, BOT_USAGE_STREAM=STREAM, BOT_METADATA_KEYS="userId",
                             BOT_PROFILES_BACKEND="local", **env)
    return Services(settings, db, clock, overrides={**aws, "account_id": ACCOUNT})


def put(aws: dict[str, Any], events: list[tuple[str, str]], at: datetime, key: str = "k") -> None:
    """One Kinesis record carrying these (event id, message) log events, as a subscription puts it."""
    ms = int(at.timestamp() * 1000)
    aws["kinesis"].put_record(StreamName=STREAM, PartitionKey=key,
                              Data=encode_subscription(GROUP, [(i, ms, m) for i, m in events]))


def setup_directory(db: Database, clock: FixedClock) -> str:
    """alice: an AIP and her IAM user; carol: a requestMetadata value. Returns alice's AIP ARN."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
    made = provision_aip(db, clock, LocalProfiles(db, REGION, ACCOUNT, clock), REGION, ADMIN,
                         SubjectRef(name="alice"), HAIKU)
    with db.session_scope() as s:
        directory.link_principal(s, clock, ADMIN, SubjectRef(name="alice"), ALICE_ARN)
        map_metadata(s, clock, ADMIN, "userId", "u-carol", SubjectRef(name="carol"), ["userId"])
    return made.arn


def start_stream(db: Database, clock: FixedClock) -> None:
    """The stream's first read at T0 fixes the handover at 11:00; the tests then run at 11:10."""
    with db.session_scope() as s:
        assert stream_usage.ensure_handover(s, clock) == ELEVEN
    _set(clock, ELEVEN + timedelta(minutes=10))


def totals(db: Database, name: str, hour: datetime = ELEVEN) -> ledger.Totals:
    with db.session_scope() as s:
        subject = s.scalar(select(Subject).where(Subject.name == name))
        assert subject is not None
        return ledger.totals(s, [subject.id], hour, hour + H)


def usage_rows(db: Database) -> list[tuple[Any, ...]]:
    with db.session_scope() as s:
        return [tuple(r) for r in s.execute(
            select(Meter.kind, Meter.key, Usage.hour, Usage.input_tokens, Usage.output_tokens,
                   Usage.cache_read_tokens, Usage.cache_write_tokens, Usage.requests, Usage.cost_micro_usd)
            .join(Meter, Meter.id == Usage.meter_id).order_by(Meter.kind, Meter.key, Usage.hour))]


# ---- counting and attribution ----------------------------------------------------------


def test_calls_are_attributed_once_and_every_token_kind_is_counted(db: Database, clock: FixedClock,
                                                                    aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    at = ELEVEN + timedelta(minutes=5)
    put(aws, [(event_id(), record(at, aip, inp=1000, out=200, cache_read=5000, cache_write=300)),
              # through alice's AIP by someone else: the AIP decides, not the caller
              (event_id(), record(at, aip, arn=f"arn:aws:iam::{ACCOUNT}:user/bob", inp=10, out=1)),
              (event_id(), record(at, HAIKU, inp=400, out=40)),  # alice's IAM user, no AIP
              (event_id(), record(at, HAIKU, arn=f"arn:aws:iam::{ACCOUNT}:user/bob", inp=7, out=7,
                                  metadata={"userId": "u-carol"})),  # a mapped value wins
              (event_id(), record(at, HAIKU, arn=f"arn:aws:iam::{ACCOUNT}:user/zed", inp=9, out=9))],
        at)

    result = usage_stream.consume(services)

    assert (result.counted, result.unattributed, result.unattributed_tokens) == (4, 1, 18)
    assert list(result.strangers) == [f"arn:aws:iam::{ACCOUNT}:user/zed"]
    pid = aip.rsplit("/", 1)[1]
    assert usage_rows(db) == [
        ("metadata", "userId=u-carol", ELEVEN, 7, 7, 0, 0, 1, PRICES.cost_micro_usd(HAIKU, 7, 7)),
        ("principal", ALICE_ARN, ELEVEN, 400, 40, 0, 0, 1, PRICES.cost_micro_usd(HAIKU, 400, 40)),
        ("profile", pid, ELEVEN, 1010, 201, 5000, 300, 2, PRICES.cost_micro_usd(HAIKU, 1010, 201, 5000, 300)),
    ]
    alice = totals(db, "alice")
    assert alice.tokens == 1010 + 201 + 5000 + 300 + 400 + 40  # cache read and write included
    assert alice.metric("input_tokens") == 1010 + 5000 + 300 + 400  # input includes cache tokens
    assert totals(db, "carol").requests == 1


def test_calls_the_gateway_made_are_left_to_its_usage_reports(db: Database, clock: FixedClock,
                                                               aws: dict[str, Any]) -> None:
    """BOT_GATEWAY_PRINCIPALS' own calls (not through an AIP) are counted by /v1/usage, so the
    stream skips them, as the Logs Insights reader does; through an AIP they stay the AIP's."""
    aip = setup_directory(db, clock)
    gateway = f"arn:aws:sts::{ACCOUNT}:assumed-role/litellm/proxy-1"
    services = services_for(db, clock, aws, BOT_GATEWAY_PRINCIPALS=f"arn:aws:iam::{ACCOUNT}:role/litellm")
    start_stream(db, clock)
    at = ELEVEN + timedelta(minutes=5)
    put(aws, [(event_id(), record(at, HAIKU, arn=gateway, inp=50, out=5, metadata={"userId": "u-carol"})),
              (event_id(), record(at, aip, arn=gateway, inp=10, out=1))], at)

    result = usage_stream.consume(services)

    assert (result.counted, result.skipped_gateway) == (1, 1)
    assert totals(db, "carol").requests == 0
    assert totals(db, "alice").requests == 1


def test_an_unknown_aip_is_metered_without_a_subject_and_follows_its_adoption(
        db: Database, clock: FixedClock, aws: dict[str, Any]) -> None:
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    unknown = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/zz11yy22xx33"
    at = ELEVEN + timedelta(minutes=1)
    put(aws, [(event_id(), record(at, unknown, inp=50, out=5))], at)
    usage_stream.consume(services)
    with db.session_scope() as s:
        meter = s.scalar(select(Meter).where(Meter.kind == "profile", Meter.key == "zz11yy22xx33"))
        assert meter is not None and meter.subject_id is None
    # A later adoption (a Profile row for it) points the meter, history included, at its subject.
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        dave = directory.ensure(s, clock, ADMIN, SubjectRef(name="dave"))
        s.add(profiles.Profile(arn=unknown, profile_id="zz11yy22xx33", name="dave-haiku", model_source=HAIKU,
                               model_id=HAIKU, tags={"user": "dave"}, subject_id=dave.id, created_by="t",
                               created_at=clock(), backfilled_at=clock()))
    put(aws, [(event_id(), record(at, unknown, inp=1, out=1))], at)
    usage_stream.consume(services)
    assert totals(db, "dave").input_tokens == 51


# ---- the handover between polling and the stream -----------------------------------------


def test_calls_before_the_handover_hour_are_left_to_polling(db: Database, clock: FixedClock,
                                                           aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    first = usage_stream.consume(services)  # 10:30: fixes the handover at 11:00
    assert first.handover == ELEVEN
    put(aws, [(event_id(), record(T0, aip, inp=999))], T0)  # logged at 10:30: polling's hour
    _set(clock, ELEVEN + timedelta(minutes=2))
    put(aws, [(event_id(), record(clock(), aip, inp=7))], clock())

    result = usage_stream.consume(services)

    assert (result.before_handover, result.counted) == (1, 1)
    assert [r[2:4] for r in usage_rows(db)] == [(ELEVEN, 7)]


def test_pollers_stop_at_the_handover_hour(db: Database, clock: FixedClock, aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    pid = aip.rsplit("/", 1)[1]
    cw = aws["cloudwatch"]
    services = services_for(db, clock, aws)
    usage_stream.consume(services)  # handover 11:00
    _set(clock, ELEVEN + timedelta(minutes=20))
    for at, value in ((T0, 500), (ELEVEN + timedelta(minutes=5), 70)):
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": n, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at, "Value": v}
            for n, v in (("InputTokenCount", value), ("Invocations", 1))])
    put(aws, [(event_id(), record(ELEVEN + timedelta(minutes=5), aip, inp=70, out=0))],
        ELEVEN + timedelta(minutes=5))

    usage_sync.run(services, discover=False, then_enforce=False)
    usage_sync.run(services, discover=False, then_enforce=False)  # again: nothing is added twice

    # 10:00 from CloudWatch (absolute), 11:00 from the stream (increments) — each counted once.
    assert [(r[2], r[3], r[7]) for r in usage_rows(db)] == [(ELEVEN - H, 500, 1), (ELEVEN, 70, 1)]
    _set(clock, ELEVEN + 2 * H + timedelta(minutes=5))  # 13:05: polling has nothing left to read
    services.metrics.calls.clear()
    usage_sync.run(services, discover=False, then_enforce=False)
    # No polling at all; one GetMetricData: the cross-check of the 11:00 hour, settled by now.
    assert dict(services.metrics.calls) == {"ListMetrics": 1, "GetMetricData": 1}


# ---- exactly once ---------------------------------------------------------------------


def _seed_calls(aws: dict[str, Any], aip: str, n: int) -> None:
    at = ELEVEN + timedelta(minutes=3)
    for i in range(n):
        put(aws, [(event_id(), record(at, aip, inp=10 + i, out=1)),
                  (event_id(), record(at, HAIKU, inp=1, out=0))],
            at, key=f"k{i}")


def test_a_crash_before_the_commit_counts_nothing_and_the_next_run_counts_everything_once(
        db: Database, clock: FixedClock, aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    _seed_calls(aws, aip, 6)

    def crash(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("power cut")

    monkeypatch.setattr(stream_usage.ledger, "add", crash)
    with pytest.raises(RuntimeError):
        StreamConsumer(services).consume()
    assert usage_rows(db) == []
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StreamEvent)) == 0
        assert all(cp.sequence is None for cp in s.scalars(select(StreamCheckpoint)))
    monkeypatch.undo()

    result = StreamConsumer(services).consume()  # a restarted process
    assert result.counted == 12
    alice = totals(db, "alice")
    assert (alice.input_tokens, alice.output_tokens, alice.requests) == (sum(range(10, 16)) + 6, 6, 12)
    assert alice.cost_micro_usd > 0


def test_a_crash_after_the_commit_and_a_restart_count_nothing_twice(db: Database, clock: FixedClock,
                                                                   aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    _seed_calls(aws, aip, 6)
    StreamConsumer(services).consume()
    before = usage_rows(db)

    again = StreamConsumer(services).consume()  # a new process: starts from the checkpoints
    _seed_calls(aws, aip, 1)
    last = StreamConsumer(services).consume()

    assert (again.records, again.counted) == (0, 0)
    assert usage_rows(db)[0][7] + usage_rows(db)[1][7] == sum(r[7] for r in before) + 2
    assert last.counted == 2
    assert totals(db, "alice").requests == 6 + 6 + 2  # AIP and IAM-user calls, each once


def test_a_replica_holding_a_stale_page_writes_nothing(db: Database, clock: FixedClock,
                                                       aws: dict[str, Any]) -> None:
    """Replica A read a page, stalled; B took over and committed; A's page is then refused."""
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    _seed_calls(aws, aip, 4)
    shard = aws["kinesis"].list_shards(StreamName=STREAM)["Shards"]
    a = StreamConsumer(services)
    pages = {}
    for sh in shard:
        it = a.kinesis.iterator(sh["ShardId"], None)
        pages[sh["ShardId"]] = a.kinesis.read(it)
    StreamConsumer(services).consume()  # replica B
    before = usage_rows(db)

    for shard_id, page in pages.items():
        if not page.records:
            continue
        with db.session_scope() as s:
            stale = stream_usage.apply_batch(s, clock, STREAM, shard_id, None, page.records,
                                             metadata_keys=["userId"], prices=PRICES, handover_at=ELEVEN)
        assert not stale.applied
    assert usage_rows(db) == before
    # And A's own loop notices the moved checkpoint and carries on from it, counting nothing twice.
    assert a.consume().counted == 0
    assert usage_rows(db) == before


def test_a_redelivered_batch_is_counted_once(db: Database, clock: FixedClock, aws: dict[str, Any]) -> None:
    """CloudWatch Logs retries a delivery for up to 24 h: the same log events in a new Kinesis
    record (new sequence number, here another partition key so maybe another shard)."""
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    at = ELEVEN + timedelta(minutes=1)
    events = [(event_id(), record(at, aip, inp=100)), (event_id(), record(at, aip, inp=200))]
    put(aws, events, at, key="first")
    usage_stream.consume(services)
    put(aws, events, at, key="retry-on-another-shard-maybe")
    put(aws, [events[0], events[0]], at, key="twice-in-one-record")

    result = usage_stream.consume(services)

    assert (result.counted, result.duplicates) == (0, 4)
    assert totals(db, "alice").input_tokens == 300


def test_seen_event_ids_are_pruned_after_the_retention_window(db: Database, clock: FixedClock,
                                                             aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    put(aws, [(event_id(), record(clock(), aip))], clock())
    consumer = StreamConsumer(services)
    consumer.consume()
    assert consumer.retention == timedelta(hours=24 + 24 + 1)  # moto's stream keeps 24 h
    clock.advance(hours=48)
    consumer.consume()
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StreamEvent)) == 1
    clock.advance(hours=2)
    consumer._pruned_at = None
    consumer.consume()
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StreamEvent)) == 0


# ---- bad input -------------------------------------------------------------------------


def test_bad_records_are_passed_over_and_the_shard_goes_on(db: Database, clock: FixedClock,
                                                          aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    at = clock()
    kinesis = aws["kinesis"]
    kinesis.put_record(StreamName=STREAM, PartitionKey="k", Data=b"not gzip at all")
    kinesis.put_record(StreamName=STREAM, PartitionKey="k",
                       Data=encode_subscription(GROUP, [], message_type=CONTROL_MESSAGE))
    put(aws, [(event_id(), "plain text, not JSON"), (event_id(), json.dumps({"schemaType": "Other"})),
              (event_id(), record(at, aip, inp=-5)),  # a negative count is corrupt, not usage
              (event_id(), record(at, aip, inp=42))], at)

    result = usage_stream.consume(services)

    assert (result.malformed_records, result.not_invocation, result.counted) == (1, 3, 1)
    assert totals(db, "alice").input_tokens == 42
    assert StreamConsumer(services).consume().records == 0  # all behind the checkpoint now


def test_a_stream_that_cannot_be_read_keeps_the_handover_and_is_audited(
        db: Database, clock: FixedClock, aws: dict[str, Any]) -> None:
    setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    aws["kinesis"].delete_stream(StreamName=STREAM)

    until = usage_stream.consume_for_sync(services)

    assert until == ELEVEN  # polling still stops there: the stream owns those hours
    with db.session_scope() as s:
        row = s.scalar(select(AuditEvent).where(AuditEvent.action == "usage_stream.read"))
        assert row is not None and row.outcome == "error" and "ResourceNotFound" in row.details


# ---- the cross-check -------------------------------------------------------------------


def test_the_cross_check_reports_an_aip_the_stream_missed(db: Database, clock: FixedClock,
                                                          aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    pid = aip.rsplit("/", 1)[1]
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    at = ELEVEN + timedelta(minutes=5)
    put(aws, [(event_id(), record(at, aip, inp=10_000, out=100))], at)
    usage_stream.consume(services)
    cw = aws["cloudwatch"]
    for name, value in (("InputTokenCount", 10_000), ("OutputTokenCount", 100), ("Invocations", 1)):
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at,
             "Value": value}])
    # An AIP the subscription never delivered (say its calls went to another log group).
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
        {"MetricName": "InputTokenCount", "Dimensions": [{"Name": "ModelId", "Value": "lost0000lost"}],
         "Timestamp": at, "Value": 80_000}])

    _set(clock, ELEVEN + H + timedelta(minutes=5))
    assert usage_stream.cross_check(services).status == "not-due"  # 12:05: 11:00 not settled yet
    _set(clock, ELEVEN + H + timedelta(minutes=16))
    result = usage_stream.cross_check(services)

    assert result is not None and (result.status, result.hour, result.profiles) == ("checked", ELEVEN, 2)
    assert [(d.profile_id, d.field, d.ledger, d.cloudwatch) for d in result.divergences] == [
        ("lost0000lost", "input_tokens", 0, 80_000)]
    assert usage_stream.cross_check(services).status == "not-due"  # each hour once
    with db.session_scope() as s:
        row = s.scalar(select(AuditEvent).where(AuditEvent.action == "usage.divergence"))
        assert row is not None and "lost0000lost" in row.details


# ---- breach → deny from pushed usage ---------------------------------------------------


def test_a_limit_breached_by_pushed_usage_is_enforced_in_the_same_sync(db: Database, clock: FixedClock,
                                                                      aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    aws["iam"].create_user(UserName="alice")
    services = services_for(db, clock, aws)
    with db.session_scope() as s:
        limits.set_limit(s, clock, ADMIN, SubjectRef(name="alice"), parse_amount("10k"), Window.DAY,
                         Metric.TOKENS, (80, 90), "revoke", False)
    start_stream(db, clock)
    at = ELEVEN + timedelta(minutes=5)
    # 4k fresh input + 7k cache read: over 10k only because cache tokens count.
    put(aws, [(event_id(), record(at, aip, inp=4_000, out=0, cache_read=7_000))], at)

    usage_sync.run(services, discover=False)

    with db.session_scope() as s:
        revoked = s.scalar(select(Revocation).where(Revocation.state == "active"))
        assert revoked is not None and revoked.reason == "limit"
    policies = aws["iam"].list_user_policies(UserName="alice")["PolicyNames"]
    assert any(p.startswith("bedrock-bot-deny") for p in policies)


def test_checkpoints_and_handover_live_in_the_database(db: Database, clock: FixedClock,
                                                       aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    _seed_calls(aws, aip, 3)
    usage_stream.consume(services)
    with db.session_scope() as s:
        cps = s.scalars(select(StreamCheckpoint)).all()
        assert {cp.stream for cp in cps} == {STREAM} and all(cp.sequence for cp in cps)
        assert s.get(SyncCursor, stream_usage.HANDOVER).position == ELEVEN  # type: ignore[union-attr]


def test_run_job_usage_stream_reads_once_and_refuses_without_a_stream(db: Database, clock: FixedClock,
                                                                      aws: dict[str, Any]) -> None:
    from jobs.registry import JOBS

    aip = setup_directory(db, clock)
    services = services_for(db, clock, aws)
    start_stream(db, clock)
    put(aws, [(event_id(), record(clock(), aip, inp=5))], clock())
    out = JOBS["usage_stream"](services)
    assert out.ok and out.value is not None and out.value.counted == 1
    plain = Services(load_settings(None, DATABASE_URL=db.url), db, clock, overrides=dict(aws))
    refused = JOBS["usage_stream"](plain)
    assert not refused.ok and "BOT_USAGE_STREAM is not set" in refused.message


def test_switching_the_stream_off_and_on_again_never_counts_an_hour_twice(
        db: Database, clock: FixedClock, aws: dict[str, Any]) -> None:
    aip = setup_directory(db, clock)
    pid = aip.rsplit("/", 1)[1]
    on = services_for(db, clock, aws)
    start_stream(db, clock)  # handover 11:00, now 11:10
    put(aws, [(event_id(), record(clock(), aip, inp=70, out=0))], clock())
    usage_stream.consume(on)
    # Switched off: polling writes 11:00 whole from CloudWatch (the same call), and 12:00.
    off = Services(load_settings(None, DATABASE_URL=db.url, BOT_PROFILES_BACKEND="local"), db, clock,
                   overrides={**aws, "account_id": ACCOUNT})
    _set(clock, ELEVEN + H + timedelta(minutes=30))
    for at, value in ((ELEVEN + timedelta(minutes=10), 70), (ELEVEN + H + timedelta(minutes=5), 30)):
        aws["cloudwatch"].put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": n, "Dimensions": [{"Name": "ModelId", "Value": pid}], "Timestamp": at,
             "Value": v} for n, v in (("InputTokenCount", value), ("Invocations", 1))])
    usage_sync.run(off, discover=False, then_enforce=False)
    with db.session_scope() as s:
        assert stream_usage.handover(s) is None
    # On again at 12:30: a new handover (13:00); the 12:00 call in the stream is polling's.
    put(aws, [(event_id(), record(ELEVEN + H + timedelta(minutes=5), aip, inp=30, out=0))], clock())
    result = usage_stream.consume(on)
    assert result.handover == ELEVEN + 2 * H and result.before_handover == 1
    assert [(r[2], r[3], r[7]) for r in usage_rows(db)] == [(ELEVEN, 70, 1), (ELEVEN + H, 30, 1)]
