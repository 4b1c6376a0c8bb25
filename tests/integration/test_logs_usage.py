"""Usage from Bedrock model-invocation logs into the ledger, on SQLite and PostgreSQL.

moto cannot run Logs Insights, so `FakeLogs` below is a CloudWatch Logs client that evaluates
the bot's own query (filter / fields / stats / sort, exactly the shape `build_query` makes)
over invocation-log records in the format AWS documents (schemaType ModelInvocationLog,
identity.arn, modelId, input.inputTokenCount, output.outputTokenCount, requestMetadata), and
checks every request against the real CloudWatch Logs service model. The real `LogsInsights`
adapter runs on top of it, so these tests go from log records to `/bedrock usage` and limits.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from botocore.validate import validate_parameters
from moto import mock_aws
from sqlalchemy import select

from bot.aws.logs import LogsInsights, build_query
from bot.aws.metrics import CloudWatchMetrics
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput, Denied
from bot.flows.usage_sync import sync_logs, sync_usage
from bot.models import AuditEvent, Limit, Meter, Subject, SyncCursor, Usage
from bot.pricing import PriceTable
from bot.services import directory
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow, floor_hour, upsert
from bot.services.limit_usage import limit_status
from bot.services.logs_usage import CURSOR, LogsSyncResult, map_metadata
from bot.services.usage import report
from tests.aips import provision_aip

ACCOUNT = "123456789012"
REGION = "us-east-1"
GROUP = "/aws/bedrock/modelinvocations"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"  # 0.25 µ$ per input token, 1.25 per output token
HAIKU_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{HAIKU}"
T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # the `clock` fixture's time
TEN, NINE = T0.replace(minute=0), T0.replace(minute=0) - timedelta(hours=1)
H = timedelta(hours=1)
ADMIN = Actor.slack("UADMIN01")
SYSTEM = Actor.system("test")
PRICES = PriceTable.load()
KEYS = ("userId", "tenantId")

ALICE_USER = f"arn:aws:iam::{ACCOUNT}:user/alice"
DEV_ROLE = f"arn:aws:iam::{ACCOUNT}:role/service/bedrock-dev"  # linked with its path


def session_arn(role: str, name: str) -> str:
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{name}"


# ---- a CloudWatch Logs client that runs the bot's Logs Insights query ------------------------


def invocation(at: datetime, arn: str, model: str, inp: int, out: int,
               metadata: dict[str, str] | None = None, cache_read: int | None = None) -> dict[str, Any]:
    """One model-invocation log record as Bedrock writes it to CloudWatch Logs."""
    record: dict[str, Any] = {
        "schemaType": "ModelInvocationLog",
        "schemaVersion": "1.0",
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "accountId": ACCOUNT,
        "identity": {"arn": arn},
        "region": REGION,
        "requestId": str(uuid.uuid4()),
        "operation": "Converse",
        "modelId": model,
        "input": {"inputContentType": "application/json",
                  "inputBodyJson": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
                  "inputTokenCount": inp},
        "output": {"outputContentType": "application/json",
                   "outputBodyJson": {"output": {"message": {"role": "assistant",
                                                             "content": [{"text": "hello"}]}},
                                      "stopReason": "end_turn", "metrics": {"latencyMs": 412},
                                      "usage": {"inputTokens": inp, "outputTokens": out,
                                                "totalTokens": inp + out}},
                   "outputTokenCount": out},
    }
    if cache_read is not None:
        record["input"]["cacheReadInputTokenCount"] = cache_read
    if metadata is not None:
        record["requestMetadata"] = metadata
    return record


def _path(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def run_insights(query: str, events: list[tuple[datetime, dict[str, Any]]]) -> list[dict[str, str]]:
    """Evaluate the shape of query build_query makes, as Logs Insights would."""
    lines = query.split("\n")
    flt = re.fullmatch(r"filter (\S+) = '([^']*)'", lines[0])
    fields = re.fullmatch(r"\| fields (.+)", lines[1])
    stats = re.fullmatch(r"\| stats (.+) by (.+)", lines[2])
    assert flt and fields and stats and lines[3] == "| sort hour asc" and len(lines) == 4, query
    projections = [item.split(" as ") for item in fields[1].split(", ")]
    aggregates = [re.fullmatch(r"(sum|count)\((.+)\) as (\w+)", item) for item in stats[1].split(", ")]
    group_by = stats[2].split(", ")
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for at, record in events:
        if _path(record, flt[1]) != flt[2]:
            continue
        row = {alias: (at.strftime("%Y-%m-%d %H:00:00.000") if expr == "bin(1h)" else _path(record, expr))
               for expr, alias in projections}
        acc = groups.setdefault(tuple(row[g] for g in group_by), {})
        for agg in aggregates:
            assert agg is not None
            fn, arg, alias = agg.groups()
            if fn == "count":
                acc[alias] = acc.get(alias, 0) + 1
            elif _path(record, arg) is not None:
                acc[alias] = acc.get(alias, 0) + _path(record, arg)
    out = []
    for key, acc in groups.items():
        row = {g: str(v) for g, v in zip(group_by, key, strict=True) if v is not None}
        out.append({**row, **{k: str(v) for k, v in acc.items()}})
    return sorted(out, key=lambda r: r["hour"])


class FakeLogs:
    """StartQuery / GetQueryResults / StopQuery over in-memory invocation-log events."""

    def __init__(self) -> None:
        self.events: list[tuple[datetime, dict[str, Any]]] = []
        self.queries: list[dict[str, Any]] = []
        self.stopped: list[str] = []
        self.stalled = False  # queries never finish (as under load)
        self.model = boto3.client("logs", region_name=REGION).meta.service_model

    def put(self, at: datetime, record: dict[str, Any]) -> None:
        self.events.append((at, record))

    def _check(self, operation: str, params: dict[str, Any]) -> None:
        shape = self.model.operation_model(operation).input_shape
        assert shape is not None
        validate_parameters(params, shape)

    def start_query(self, **params: Any) -> dict[str, Any]:
        self._check("StartQuery", params)
        self.queries.append(params)
        return {"queryId": f"q{len(self.queries)}"}

    def get_query_results(self, **params: Any) -> dict[str, Any]:
        self._check("GetQueryResults", params)
        if self.stalled:
            return {"status": "Running", "results": []}
        q = self.queries[int(params["queryId"][1:]) - 1]
        scanned = [(at, r) for at, r in self.events
                   if q["startTime"] <= at.timestamp() <= q["endTime"]]
        rows = run_insights(q["queryString"], scanned)[:q["limit"]]
        return {"status": "Complete",
                "results": [[{"field": k, "value": v} for k, v in row.items()] for row in rows],
                "statistics": {"recordsMatched": float(len(scanned)), "recordsScanned": float(len(scanned)),
                               "bytesScanned": float(sum(len(json.dumps(r)) for _, r in scanned))}}

    def stop_query(self, **params: Any) -> dict[str, Any]:
        self._check("StopQuery", params)
        self.stopped.append(params["queryId"])
        return {"success": True}

    def window(self, i: int = -1) -> tuple[datetime, datetime]:
        q = self.queries[i]
        return (datetime.fromtimestamp(q["startTime"], UTC), datetime.fromtimestamp(q["endTime"], UTC))


# ---- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def logs() -> FakeLogs:
    return FakeLogs()


def sync(db: Database, clock: FixedClock, logs: FakeLogs, keys: tuple[str, ...] = KEYS,
         insights: LogsInsights | None = None, **kwargs: Any) -> LogsSyncResult:
    insights = insights or LogsInsights(logs, sleep=lambda _: None)
    return sync_logs(db, clock, insights, GROUP, keys, PRICES, **kwargs)


def setup(db: Database, clock: FixedClock) -> None:
    """UADMIN01 is an owner; alice (UALICE01) is linked to her IAM user; team-eng = alice + bob
    owns the bedrock-dev role; carol is a user on her own."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        directory.link_principal(s, clock, ADMIN, SubjectRef(name="alice", slack_user_id="UALICE01"),
                                 ALICE_USER)
        directory.change_members(s, clock, ADMIN, "team-eng", "add",
                                 [SubjectRef(name="bob", slack_user_id="UBOB0001"),
                                  SubjectRef(slack_user_id="UALICE01")])
        directory.link_principal(s, clock, ADMIN, SubjectRef(name="team-eng"), DEV_ROLE)
        directory.ensure_user(s, clock, ADMIN, SubjectRef(name="carol", slack_user_id="UCAROL01"))


# (meter kind, meter key, owner, hour) -> (input, output, cache read, requests, micro-USD)
Ledger = dict[tuple[str, str, str | None, datetime], tuple[int, int, int, int, int]]


def ledger(db: Database) -> Ledger:
    with db.session_scope() as s:
        q = (select(Meter.kind, Meter.key, Subject.name, Usage.hour, Usage.input_tokens,
                    Usage.output_tokens, Usage.cache_read_tokens, Usage.requests, Usage.cost_micro_usd)
             .join(Meter, Meter.id == Usage.meter_id).outerjoin(Subject, Subject.id == Meter.subject_id))
        return {(kind, key, name, hour): tuple(v)  # type: ignore[misc]
                for kind, key, name, hour, *v in s.execute(q)}


def usage_tokens(db: Database, clock: FixedClock, name: str, actor: Actor = ADMIN) -> int:
    with db.session_scope() as s:
        return report(s, clock, ZoneInfo("UTC"), 0, actor, SubjectRef(name=name), "today").totals.tokens


def cursor(db: Database) -> datetime | None:
    with db.session_scope() as s:
        found = s.get(SyncCursor, CURSOR)
        return found.position if found else None


# ---- attribution -------------------------------------------------------------------------------


def test_a_linked_principal_calling_a_foundation_model_meters_to_its_subject(
        db: Database, clock: FixedClock, logs: FakeLogs) -> None:
    setup(db, clock)
    logs.put(T0 - timedelta(minutes=80), invocation(T0, ALICE_USER, HAIKU, 1000, 200))  # 09:10
    logs.put(T0 - timedelta(minutes=40), invocation(T0, ALICE_USER, HAIKU_ARN, 500, 100))  # 09:50
    logs.put(T0 - timedelta(minutes=25), invocation(T0, ALICE_USER, HAIKU, 4000, 800, cache_read=64))

    result = sync(db, clock, logs)

    assert ledger(db) == {
        # bare model id and foundation-model ARN, same hour and meter: summed before the upsert
        ("principal", ALICE_USER, "alice", NINE): (1500, 300, 0, 2, 750),
        ("principal", ALICE_USER, "alice", TEN): (4000, 800, 64, 1, 2000 + 16),  # + cache read
    }
    assert (result.status, result.rows, result.ledger_rows, result.attributed_requests) == (
        "complete", 3, 2, 3)
    assert (result.start, result.end, result.cursor) == (NINE, T0, TEN)
    assert result.calls == {"StartQuery": 1, "GetQueryResults": 1} and result.bytes_scanned > 0
    assert usage_tokens(db, clock, "alice") == 1500 + 300 + 4000 + 800 + 64  # cache read is a token too
    # only whole hours are asked for: from the top of the previous hour to now
    assert logs.window() == (NINE, T0) and logs.queries[0]["startTime"] % 3600 == 0
    assert logs.queries[0]["queryString"] == build_query(KEYS)
    assert cursor(db) == TEN


def test_calls_through_an_aip_are_skipped_so_they_count_once(db: Database, clock: FixedClock,
                                                             logs: FakeLogs) -> None:
    setup(db, clock)
    with mock_aws():
        cw = boto3.client("cloudwatch", region_name=REGION)
        aip = provision_aip(db, clock, LocalProfiles(db, REGION, ACCOUNT, clock), REGION, ADMIN,
                            SubjectRef(name="alice"), HAIKU)
        # One call through alice's AIP: CloudWatch meters it under the AIP id …
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": aip.profile_id}],
             "Timestamp": T0 - timedelta(minutes=20), "Value": value}
            for name, value in (("InputTokenCount", 700), ("OutputTokenCount", 70), ("Invocations", 1))])
        sync_usage(db, clock, CloudWatchMetrics(cw), None, PRICES, discover=False)
    # … and the invocation log has it too, with the AIP ARN as modelId; plus one direct call.
    logs.put(T0 - timedelta(minutes=20), invocation(T0, ALICE_USER, aip.arn, 700, 70))
    logs.put(T0 - timedelta(minutes=15), invocation(T0, ALICE_USER, HAIKU, 300, 30))
    # An AIP the bot does not know (yet) is skipped too: adopting it would backfill it.
    logs.put(T0 - timedelta(minutes=10), invocation(
        T0, ALICE_USER, f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/zzzz9999zzzz",
        5, 5))

    result = sync(db, clock, logs)

    assert result.skipped_aip_requests == 2 and result.attributed_requests == 1
    assert ledger(db) == {
        ("profile", aip.profile_id, "alice", TEN): (700, 70, 0, 1, 263),
        ("principal", ALICE_USER, "alice", TEN): (300, 30, 0, 1, 113),
    }
    assert usage_tokens(db, clock, "alice") == 770 + 330  # the AIP call once, the direct call once
    with db.session_scope() as s:  # and a limit on alice sees both kinds
        alice = directory.get(s, SubjectRef(name="alice"))
        limit = Limit(subject_id=alice.id, metric="requests", amount=4, window="7d", warn=[80, 90],
                      action="notify", alarm=False, created_by="slack:UADMIN01", created_at=clock(),
                      updated_at=clock())
        s.add(limit)
        s.flush()
        assert limit_status(s, limit, alice, clock(), ZoneInfo("UTC"), 0).used == 2


def test_a_limit_on_alice_counts_aip_and_principal_usage(db: Database, clock: FixedClock,
                                                         logs: FakeLogs) -> None:
    setup(db, clock)
    aip = provision_aip(db, clock, LocalProfiles(db, REGION, ACCOUNT, clock), REGION, ADMIN,
                        SubjectRef(name="alice"), HAIKU)
    with db.session_scope() as s:
        aip_meter = s.scalar(select(Meter.id).where(Meter.kind == "profile", Meter.key == aip.profile_id))
        assert aip_meter is not None
        upsert(s, [LedgerRow(aip_meter, NINE, 600, 100, 0, 0, 2, 0)], clock())  # the CloudWatch sync's row
        alice = directory.get(s, SubjectRef(name="alice"))
        s.add(Limit(subject_id=alice.id, metric="tokens", amount=2000, window="day", warn=[80, 90],
                    action="revoke", alarm=False, created_by="slack:UADMIN01", created_at=clock(),
                    updated_at=clock()))
    logs.put(NINE + timedelta(minutes=5), invocation(T0, aip.arn, HAIKU, 600, 100))  # same call: skipped
    logs.put(TEN + timedelta(minutes=5), invocation(T0, ALICE_USER, HAIKU, 900, 100))  # direct
    sync(db, clock, logs)

    with db.session_scope() as s:
        alice = directory.get(s, SubjectRef(name="alice"))
        limit = s.scalars(select(Limit).where(Limit.subject_id == alice.id)).one()
        status = limit_status(s, limit, alice, clock(), ZoneInfo("UTC"), 0)
        assert (status.used, status.percent) == (700 + 1000, 85.0)


def test_a_mapped_metadata_value_wins_over_the_principal(db: Database, clock: FixedClock,
                                                         logs: FakeLogs) -> None:
    setup(db, clock)
    with db.session_scope() as s:
        map_metadata(s, clock, ADMIN, "userId", "u-bob", SubjectRef(name="bob"), KEYS)
        map_metadata(s, clock, ADMIN, "tenantId", "acme", SubjectRef(name="carol"), KEYS)
    role = session_arn("bedrock-dev", "app-server")
    at = T0 - timedelta(minutes=5)
    logs.put(at, invocation(T0, role, HAIKU, 100, 10, {"userId": "u-bob", "tenantId": "acme"}))
    logs.put(at, invocation(T0, role, HAIKU, 200, 20, {"tenantId": "acme"}))
    logs.put(at, invocation(T0, role, HAIKU, 400, 40, {"userId": "u-unmapped"}))
    logs.put(at, invocation(T0, ALICE_USER, HAIKU, 800, 80, {"userId": "u-bob"}))

    sync(db, clock, logs)

    assert ledger(db) == {
        # userId comes first in BOT_METADATA_KEYS, so it decides when both are mapped
        ("metadata", "userId=u-bob", "bob", TEN): (900, 90, 0, 2, 338),  # 225 + 112.5, rounded
        ("metadata", "tenantId=acme", "carol", TEN): (200, 20, 0, 1, 75),
        # an unmapped value falls back to the caller's principal
        ("principal", DEV_ROLE, "team-eng", TEN): (400, 40, 0, 1, 150),
    }
    assert usage_tokens(db, clock, "bob") == 990
    assert usage_tokens(db, clock, "team-eng") == 990 + 440  # bob is a member


def test_assumed_role_sessions(db: Database, clock: FixedClock, logs: FakeLogs) -> None:
    setup(db, clock)
    with db.session_scope() as s:  # dave's own role: sessions on it are dave's whatever their name
        directory.link_principal(s, clock, ADMIN, SubjectRef(name="dave"),
                                 f"arn:aws:iam::{ACCOUNT}:role/dave-dev")
    at = T0 - timedelta(minutes=5)
    for name, inp in (("alice", 1), ("Alice@example.com", 2), ("carol", 4), ("i-0abc123", 8)):
        logs.put(at, invocation(T0, session_arn("bedrock-dev", name), HAIKU, inp, 0))
    logs.put(at, invocation(T0, session_arn("dave-dev", "alice"), HAIKU, 16, 0))
    logs.put(at, invocation(T0, session_arn("other-role", "alice"), HAIKU, 32, 0))
    logs.put(at, invocation(T0, "arn:aws:sts::999999999999:assumed-role/bedrock-dev/alice", HAIKU, 64, 0))

    result = sync(db, clock, logs)

    got = {(kind, key, owner): v[0] for (kind, key, owner, _), v in ledger(db).items()}
    assert got == {
        # a team's role: a session named after a member is that member's
        ("principal", session_arn("bedrock-dev", "alice"), "alice"): 1,
        ("principal", session_arn("bedrock-dev", "Alice@example.com"), "alice"): 2,
        # carol is not in team-eng, i-0abc123 is nobody: the role's own meter (path ignored)
        ("principal", DEV_ROLE, "team-eng"): 4 + 8,
        ("principal", f"arn:aws:iam::{ACCOUNT}:role/dave-dev", "dave"): 16,
    }
    assert result.unattributed_requests == 2  # an unlinked role; the same role name elsewhere
    assert usage_tokens(db, clock, "alice") == 3 and usage_tokens(db, clock, "team-eng") == 15


def test_unattributed_rows_are_dropped_and_counted(db: Database, clock: FixedClock,
                                                   logs: FakeLogs) -> None:
    setup(db, clock)
    at = T0 - timedelta(minutes=5)
    stranger = f"arn:aws:iam::{ACCOUNT}:user/mallory"
    logs.put(at, invocation(T0, stranger, HAIKU, 5000, 500))
    logs.put(at, invocation(T0, stranger, HAIKU, 1000, 100, {"userId": "u-nobody"}))
    logs.put(at, invocation(T0, f"arn:aws:iam::{ACCOUNT}:root", HAIKU, 10, 1))
    logs.put(at, invocation(T0, f"arn:aws:sts::{ACCOUNT}:federated-user/bob", HAIKU, 20, 2))
    logs.put(at, invocation(T0, ALICE_USER, HAIKU, 7, 3))
    logs.put(at, {"schemaType": "SomethingElse", "identity": {"arn": ALICE_USER}, "modelId": HAIKU,
                  "input": {"inputTokenCount": 99999}})

    result = sync(db, clock, logs)

    assert (result.unattributed_requests, result.unattributed_tokens, result.attributed_requests) == (
        4, 6600 + 11 + 22, 1)
    assert result.unattributed_arns == (stranger, f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
                                        f"arn:aws:iam::{ACCOUNT}:root")
    assert ledger(db) == {("principal", ALICE_USER, "alice", TEN): (7, 3, 0, 1, 6)}


# ---- idempotence, the cursor and the window ------------------------------------------------------


def test_rerunning_a_window_is_idempotent_and_hours_are_overwritten(db: Database, clock: FixedClock,
                                                                   logs: FakeLogs) -> None:
    setup(db, clock)
    logs.put(NINE + timedelta(minutes=10), invocation(T0, ALICE_USER, HAIKU, 1000, 200))
    logs.put(TEN + timedelta(minutes=5), invocation(T0, ALICE_USER, HAIKU, 4000, 800))
    sync(db, clock, logs)
    first = ledger(db)
    sync(db, clock, logs)
    assert ledger(db) == first

    logs.put(TEN + timedelta(minutes=31), invocation(T0, ALICE_USER, HAIKU, 600, 100))
    clock.advance(minutes=2)
    sync(db, clock, logs)
    assert ledger(db)[("principal", ALICE_USER, "alice", TEN)] == (4600, 900, 0, 2, 2275)
    assert ledger(db)[("principal", ALICE_USER, "alice", NINE)] == (1000, 200, 0, 1, 500)


def test_a_new_mapping_moves_a_reread_hour_instead_of_counting_it_twice(
        db: Database, clock: FixedClock, logs: FakeLogs) -> None:
    setup(db, clock)
    logs.put(TEN + timedelta(minutes=5), invocation(T0, ALICE_USER, HAIKU, 100, 0, {"userId": "u-c"}))
    sync(db, clock, logs)
    assert usage_tokens(db, clock, "alice") == 100
    with db.session_scope() as s:
        map_metadata(s, clock, ADMIN, "userId", "u-c", SubjectRef(name="carol"))
    sync(db, clock, logs)
    assert ledger(db) == {("metadata", "userId=u-c", "carol", TEN): (100, 0, 0, 1, 25)}
    assert usage_tokens(db, clock, "alice") == 0 and usage_tokens(db, clock, "carol") == 100


def test_a_timed_out_query_leaves_the_cursor_and_the_next_sync_reads_the_gap(
        db: Database, clock: FixedClock, logs: FakeLogs) -> None:
    setup(db, clock)
    logs.put(TEN + timedelta(minutes=5), invocation(T0, ALICE_USER, HAIKU, 100, 0))
    sync(db, clock, logs)
    assert cursor(db) == TEN

    clock.advance(hours=3)  # 13:30
    logs.put(TEN + timedelta(hours=1, minutes=15), invocation(T0, ALICE_USER, HAIKU, 1000, 0))  # 11:15
    logs.stalled = True
    before = ledger(db)
    timed_out = sync(db, clock, logs, insights=LogsInsights(logs, sleep=lambda _: None, max_wait=3))

    assert timed_out.status == "pending" and not timed_out.completed
    assert timed_out.cursor == TEN and cursor(db) == TEN
    assert logs.stopped == ["q2"] and ledger(db) == before

    logs.stalled = False
    clock.advance(minutes=1)
    done = sync(db, clock, logs)
    assert (done.start, done.cursor) == (TEN, TEN + 3 * H)  # the whole gap, from the cursor
    assert ledger(db)[("principal", ALICE_USER, "alice", TEN + H)] == (1000, 0, 0, 1, 250)
    assert ledger(db)[("principal", ALICE_USER, "alice", TEN)] == (100, 0, 0, 1, 25)  # once


def test_a_long_gap_is_read_a_day_at_a_time_and_never_before_last_month(
        db: Database, clock: FixedClock, logs: FakeLogs) -> None:
    setup(db, clock)
    with db.session_scope() as s:
        s.add(SyncCursor(name=CURSOR, position=datetime(2026, 8, 1, tzinfo=UTC), updated_at=clock()))
    logs.put(datetime(2026, 9, 30, 12, 5, tzinfo=UTC), invocation(T0, ALICE_USER, HAIKU, 1, 0))
    logs.put(datetime(2026, 9, 29, 3, 5, tzinfo=UTC), invocation(T0, ALICE_USER, HAIKU, 1, 0))  # too old

    first = sync(db, clock, logs)
    start = datetime(2026, 9, 30, tzinfo=UTC)  # the previous month, a day early (as usage sync)
    assert (first.start, first.end, first.cursor) == (start, start + 24 * H, start + 24 * H)
    assert logs.window() == (start, start + 24 * H)
    assert set(ledger(db)) == {("principal", ALICE_USER, "alice", datetime(2026, 9, 30, 12, tzinfo=UTC))}

    clock.advance(minutes=1)
    second = sync(db, clock, logs)
    assert (second.start, second.cursor) == (start + 24 * H, start + 48 * H)


def test_a_truncated_result_leaves_its_last_hour_for_the_next_sync(db: Database, clock: FixedClock,
                                                                  logs: FakeLogs) -> None:
    setup(db, clock)
    with db.session_scope() as s:
        s.add(SyncCursor(name=CURSOR, position=TEN - 3 * H, updated_at=clock()))
    for hour in (TEN - 3 * H, TEN - 2 * H, TEN - H):
        for user in ("alice", "mallory"):
            logs.put(hour + timedelta(minutes=1), invocation(T0, f"arn:aws:iam::{ACCOUNT}:user/{user}",
                                                             HAIKU, 10, 0))
    small = LogsInsights(logs, sleep=lambda _: None, max_rows=3)

    first = sync(db, clock, logs, insights=small)
    assert first.truncated and first.cursor == TEN - 2 * H
    assert {k[3] for k in ledger(db)} == {TEN - 3 * H}

    second = sync(db, clock, logs, insights=small)
    assert second.truncated and second.cursor == TEN - H
    third = sync(db, clock, logs, insights=small)
    assert not third.truncated and third.cursor == TEN
    assert {k[3]: v[0] for k, v in ledger(db).items()} == {TEN - 3 * H: 10, TEN - 2 * H: 10, TEN - H: 10}


def test_min_interval_skips_a_run_without_querying(db: Database, clock: FixedClock,
                                                  logs: FakeLogs) -> None:
    setup(db, clock)
    sync(db, clock, logs)
    clock.advance(minutes=2)
    skipped = sync(db, clock, logs, min_interval=timedelta(minutes=5))
    assert skipped.status == "skipped" and len(logs.queries) == 1
    clock.advance(minutes=3)
    assert sync(db, clock, logs, min_interval=timedelta(minutes=5)).status == "complete"


def test_bad_metadata_keys_are_a_configuration_error(db: Database, clock: FixedClock,
                                                     logs: FakeLogs) -> None:
    with pytest.raises(ValueError, match="BOT_METADATA_KEYS"):
        sync(db, clock, logs, keys=("user-id",))
    assert logs.queries == []


# ---- /bedrock meter <key>=<value> <subject> --------------------------------------------------------


def test_map_metadata_is_admin_only_validated_audited_and_repoints(db: Database,
                                                                   clock: FixedClock) -> None:
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
    with db.session_scope() as s, pytest.raises(Denied):
        map_metadata(s, clock, Actor.slack("UALICE01"), "userId", "u-1", SubjectRef(name="alice"))
    for key, value, allowed, match in (
            ("user-id", "u-1", None, "requestMetadata key"),
            ("userId", "", None, "printable"),
            ("userId", "a\tb", None, "printable"),
            ("userId", "x" * 257, None, "printable"),
            ("tenantId", "acme", ["userId"], "not one of the metered"),
            ("userId", "u-1", [], "set BOT_METADATA_KEYS")):
        with db.session_scope() as s, pytest.raises(BadInput, match=match):
            map_metadata(s, clock, ADMIN, key, value, SubjectRef(name="alice"), allowed)

    with db.session_scope() as s:
        meter = map_metadata(s, clock, ADMIN, "userId", "u-1", SubjectRef(name="alice"), ["userId"])
        assert (meter.kind, meter.key) == ("metadata", "userId=u-1")
        assert directory.get(s, SubjectRef(name="alice")).id == meter.subject_id  # created
    with db.session_scope() as s:
        again = map_metadata(s, clock, ADMIN, "userId", "u-1", SubjectRef(name="team-eng"))
        assert again.subject_id == directory.get(s, SubjectRef(name="team-eng")).id
    with db.session_scope() as s:  # audit rows are written when the transaction commits
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "meter.map")
                           .order_by(AuditEvent.id)).all()
        assert [(e.target, json.loads(e.details)) for e in events] == [
            ("user:alice", {"key": "userId", "value": "u-1", "before": None}),
            ("team:team-eng", {"key": "userId", "value": "u-1", "before": "alice"}),
        ]
        assert len(s.scalars(select(Meter).where(Meter.kind == "metadata")).all()) == 1


@pytest.fixture(autouse=True)
def _no_real_sleep(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr("time.sleep", lambda _: pytest.fail("a test slept"))
    yield


def test_the_gateways_own_principal_is_skipped_so_gateway_calls_count_once(
        db: Database, clock: FixedClock, logs: FakeLogs) -> None:
    """The gateway reports its calls per subject via /v1/usage; its role's log rows (metadata
    mapped to a subject included) must not be metered again."""
    setup(db, clock)
    with db.session_scope() as s:
        map_metadata(s, clock, ADMIN, "userId", "u-bob", SubjectRef(name="bob"), KEYS)
    gateway_role = "arn:aws:iam::123456789012:role/litellm-proxy"
    at = T0 - timedelta(minutes=5)
    logs.put(at, invocation(T0, session_arn("litellm-proxy", "pod-1"), HAIKU, 100, 10, {"userId": "u-bob"}))
    logs.put(at, invocation(T0, gateway_role, HAIKU, 200, 20, {}))
    logs.put(at, invocation(T0, ALICE_USER, HAIKU, 400, 40, {}))

    result = sync(db, clock, logs, gateway_principals=[gateway_role])

    assert result.skipped_gateway_requests == 2 and result.attributed_requests == 1
    assert ledger(db) == {("principal", ALICE_USER, "alice", TEN): (400, 40, 0, 1, 150)}
    # without the setting the same rows are metered (the double count the setting prevents)
    clock.advance(hours=1)
    logs.put(clock() - timedelta(minutes=5),
             invocation(floor_hour(clock()), session_arn("litellm-proxy", "pod-1"), HAIKU, 100, 10,
                        {"userId": "u-bob"}))
    assert sync(db, clock, logs).attributed_requests >= 1
