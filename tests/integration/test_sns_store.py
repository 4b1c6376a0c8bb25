"""SNS messages that need no AWS call: statements per message, group commit, dedupe, audit chain.

Statement counts come from the engine's cursor events and round trips from libpq's protocol
trace, so they are exact (not timings). A 'posted' message used to take 7 statements in one
transaction on PostgreSQL (claim, re-read the row, lock, UPDATE, audit head, audit INSERT) and 10
round trips with the pool ping, BEGIN and COMMIT; then 6 (the claim INSERT carrying the final
outcome, the chain's lock and head in one pipeline, its INSERT); now 4: BEGIN, the claim, the lock
and the head go in one pipeline, then the audit INSERT and COMMIT.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.exc import IntegrityError

from bot.aws.sns import SnsEnvelope
from bot.clock import FixedClock
from bot.db import Database
from bot.flows import events as flow_events
from bot.flows.group_commit import GroupCommit
from bot.models import AuditEvent, SnsMessage
from bot.services import audit, events
from bot.services.audit import NO_KEY
from handlers.sns import SnsEndpoint
from tests.fakes.services import make_services
from tests.fakes.sns_signing import make_notification, write_cert

TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alarms"
FOREIGN_ALARM = json.dumps({
    "AlarmName": "payments-api-5xx", "AWSAccountId": "123456789012", "NewStateValue": "ALARM",
    "NewStateReason": "Threshold Crossed", "StateChangeTime": "2026-11-25T10:29:41.123+0000",
    "Region": "US East (N. Virginia)", "OldStateValue": "OK",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:payments-api-5xx",
    "Trigger": {"MetricName": "5XXError", "Namespace": "AWS/ApiGateway", "Statistic": "SUM",
                "Dimensions": [{"name": "ApiName", "value": "payments"}], "Period": 60,
                "EvaluationPeriods": 1, "Threshold": 5.0, "ComparisonOperator": "GreaterThanThreshold"},
})
AT = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
MAX_ROUND_TRIPS_POSTED = 2


@pytest.fixture
def endpoint(db: Database, clock: FixedClock, tmp_path: Path) -> SnsEndpoint:
    write_cert(tmp_path)
    services = make_services(db, clock, BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=str(tmp_path))
    return SnsEndpoint(services, services.sns_verifier())


@contextmanager
def counting(db: Database) -> Iterator[dict[str, list[str]]]:
    seen: dict[str, list[str]] = {"statements": [], "commits": []}

    def on_execute(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE is sent as a statement
            seen["statements"].append(" ".join(statement.split())[:60])

    def on_commit(_c: Any) -> None:
        seen["commits"].append("COMMIT")

    event.listen(db.engine, "before_cursor_execute", on_execute)
    event.listen(db.engine, "commit", on_commit)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
        event.remove(db.engine, "commit", on_commit)


def _body(message: str, clock: FixedClock, message_id: str | None = None) -> bytes:
    return json.dumps(make_notification(message, TOPIC, message_id=message_id, timestamp=clock(),
                                        version="2")).encode()


@contextmanager
def round_trips(db: Database, tmp_path: Path, engine: Engine | None = None) -> Iterator[list[int]]:
    """PostgreSQL only: libpq's protocol trace of the connections `engine` (default the main one)
    checks out meanwhile; yields a one-slot list that holds, at the end, the number of
    ReadyForQuery messages (one per round trip: pool ping, BEGIN, each statement or pipeline, COMMIT)."""
    engine = engine or db.engine
    trace = (tmp_path / f"libpq-{id(engine)}.trace").open("w+")
    count = [0]

    def on_checkout(dbapi: Any, _rec: Any, _proxy: Any) -> None:
        dbapi.pgconn.trace(trace.fileno())

    def on_checkin(dbapi: Any, _rec: Any) -> None:
        dbapi.pgconn.untrace()

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_checkin)
    try:
        yield count
    finally:
        event.remove(engine, "checkout", on_checkout)
        event.remove(engine, "checkin", on_checkin)
        trace.flush()
        trace.seek(0)
        count[0] = sum(1 for line in trace if "\tReadyForQuery\t" in line)
        trace.close()


def test_a_posted_message_is_one_transaction_and_a_duplicate_writes_nothing(
        endpoint: SnsEndpoint, db: Database, clock: FixedClock) -> None:
    endpoint(_body("warm-up: the certificate is cached", clock))
    body = _body(FOREIGN_ALARM, clock)
    with counting(db) as seen:
        assert endpoint(body) == (200, "posted")
    if db.dialect == "postgresql":  # below the engine, on the driver's connection: see the round trips
        assert seen == {"statements": [], "commits": []}, seen
    else:
        assert len(seen["commits"]) == 1, seen
        assert [" ".join(s.split()[:4]) for s in seen["statements"]] == [
            "INSERT INTO sns_messages (message_id,", "SELECT audit_events.id, audit_events.hash FROM",
            "INSERT INTO audit_events (id,"], seen["statements"]
    with counting(db) as seen:
        assert endpoint(body) == (200, "duplicate")
    assert len(seen["commits"]) == (db.dialect == "sqlite"), seen
    assert not any("audit_events" in s for s in seen["statements"]), seen
    with db.session_scope() as s:
        row = s.get(SnsMessage, json.loads(body)["MessageId"])
        assert row is not None and row.outcome == "posted" and row.processed_at == clock()
        assert row.received_at == clock() and row.topic_arn == TOPIC and row.type == "Notification"
        assert row.body == FOREIGN_ALARM
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert last is not None and last.action == "sns.posted"
        assert json.loads(last.details)["name"] == "payments-api-5xx"
        assert audit.verify(s).ok


def test_a_posted_message_takes_two_round_trips_on_postgresql(
        endpoint: SnsEndpoint, db: Database, clock: FixedClock, tmp_path: Path) -> None:
    if db.dialect != "postgresql":
        pytest.skip("round trips are counted in libpq's protocol trace")
    endpoint(_body("warm-up: the certificate is cached", clock))
    body = _body(FOREIGN_ALARM, clock)
    with round_trips(db, tmp_path) as main, round_trips(db, tmp_path, db.quick) as posted:
        assert endpoint(body) == (200, "posted")
    # BEGIN + claim + chain lock + head, then audit INSERT + COMMIT (two pipelines, no pool ping);
    # was 10, then 6, then 4
    assert main[0] == 0 and 0 < posted[0] <= MAX_ROUND_TRIPS_POSTED, (main, posted)
    with round_trips(db, tmp_path, db.quick) as duplicate:
        assert endpoint(body) == (200, "duplicate")
    assert 0 < duplicate[0] <= MAX_ROUND_TRIPS_POSTED, duplicate  # COMMIT alone in the second


def _env(message_id: str, message: str = "not json") -> SnsEnvelope:
    return SnsEnvelope("Notification", message_id, TOPIC, message, AT, None, None, None, "2",
                       "https://sns.us-east-1.amazonaws.com/x.pem", {})


PIPELINED = pytest.param(True, id="pipelined")


def _store(db: Database, clock: FixedClock, envs: list[SnsEnvelope], pipelined: bool) -> list[str]:
    """`events.store` in a session, or `events.store_pipelined` (PostgreSQL only): the outcomes."""
    items = [(e, r) for e, r in ((e, events.classify(e)) for e in envs) if r is not None]
    assert len(items) == len(envs)
    if not pipelined:
        with db.session_scope() as s:
            return [r.outcome for r in events.store(s, clock, items)]
    if not db.can_pipeline():
        pytest.skip("pipelined transactions are PostgreSQL's (psycopg 3)")
    with db.pipelined() as tx:
        return [r.outcome for r in events.store_pipelined(tx, clock, db.audit_keyring, items)]


@pytest.mark.parametrize("pipelined", [False, PIPELINED])
def test_store_claims_each_message_once_within_and_across_batches(db: Database, clock: FixedClock,
                                                                  pipelined: bool) -> None:
    a, b, c = _env("m-a"), _env("m-b", FOREIGN_ALARM), _env("m-c")
    first = _store(db, clock, [a, b, a, c, _env("m-c")], pipelined)  # m-c twice, equal outcomes
    assert first == ["unrecognised", "posted", "duplicate", "unrecognised", "duplicate"]
    second = _store(db, clock, [c, _env("m-d")], pipelined)
    assert second == ["duplicate", "unrecognised"]
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(SnsMessage)) == 4
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["sns.unrecognised", "sns.posted", "sns.unrecognised", "sns.unrecognised"]
        assert audit.verify(s).ok


def test_a_pipelined_store_that_fails_or_rolls_back_leaves_nothing(db: Database, clock: FixedClock) -> None:
    """Rolled back after the claim (the chain lock held), or failed in the claim itself (a NOT
    NULL MessageId, raised as SQLAlchemy's IntegrityError): no row, no audit event, and the
    connection goes back to the pool fit for the next transaction."""
    if not db.can_pipeline():
        pytest.skip("pipelined transactions are PostgreSQL's (psycopg 3)")
    e = _env("m-x")
    result = events.classify(e)
    assert result is not None
    with pytest.raises(RuntimeError), db.pipelined() as tx:
        stored = events.store_pipelined(tx, clock, NO_KEY, [(e, result)])
        assert [r.outcome for r in stored] == ["unrecognised"]
        raise RuntimeError("after the claim, before the commit")
    bad = _env(cast(str, None))
    with pytest.raises(IntegrityError), db.pipelined() as tx:
        events.store_pipelined(tx, clock, NO_KEY, [(e, result), (bad, result)])
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(SnsMessage)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0
    assert _store(db, clock, [e, _env("m-y")], pipelined=True) == ["unrecognised", "unrecognised"]
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 2
        assert audit.verify(s).ok


def test_a_group_committed_batch_takes_two_round_trips_on_postgresql(
        db: Database, clock: FixedClock, tmp_path: Path) -> None:
    """BEGIN + claim + chain lock + head in one pipeline, the audit INSERT + COMMIT in another, on
    the quick engine (no pool ping); the main engine sends nothing. The chain, keyed here, goes
    on from rows that sessions wrote, and sessions go on from it."""
    if not db.can_pipeline():
        pytest.skip("round trips are counted in libpq's protocol trace")
    keyed = Database(db.url, audit_keyring=audit.Keyring(b"k" * 32))
    try:
        services = make_services(keyed, clock)
        _store(keyed, clock, [_env("m-0")], pipelined=False)
        envs = [_env("m-1"), _env("m-2", FOREIGN_ALARM), _env("m-1"), _env("m-0"), _env("m-3")]
        items = [(e, r) for e in envs if (r := events.classify(e)) is not None]
        with counting(keyed) as seen, round_trips(keyed, tmp_path, keyed.quick) as trips:
            out = flow_events.store_together(services, items)
        assert [r.outcome for r in out] == ["unrecognised", "posted", "duplicate", "duplicate",
                                            "unrecognised"]
        assert trips[0] == 2 and seen == {"statements": [], "commits": []}, (trips, seen)
        _store(keyed, clock, [_env("m-4")], pipelined=False)
        with keyed.session_scope() as s:
            assert sorted(s.scalars(select(SnsMessage.message_id))) == [f"m-{i}" for i in range(5)]
            rows = s.execute(select(AuditEvent.action, AuditEvent.alg).order_by(AuditEvent.id)).all()
            assert [a for a, _ in rows] == ["sns.unrecognised", "sns.unrecognised", "sns.posted",
                                            "sns.unrecognised", "sns.unrecognised"]
            assert all(alg.startswith("hmac-sha256:") for _, alg in rows)
            assert audit.verify(s, keyed.audit_keyring).ok
            assert not audit.verify(s).ok  # keyed rows: unverifiable without the key
    finally:
        keyed.dispose()


def test_a_store_that_rolls_back_leaves_nothing(db: Database, clock: FixedClock) -> None:
    e = _env("m-x")
    result = events.classify(e)
    assert result is not None
    with pytest.raises(RuntimeError), db.session_scope() as s:
        events.store(s, clock, [(e, result)])
        raise RuntimeError("after the claim, before the commit")
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(SnsMessage)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0
    with db.session_scope() as s:  # so the redelivery is stored
        assert [r.outcome for r in events.store(s, clock, [(e, result)])] == ["unrecognised"]


def test_classify_leaves_the_bots_own_alarms_to_decide() -> None:
    own = json.loads(FOREIGN_ALARM) | {"AlarmName": "bedrock-bot-limit-7"}
    assert events.classify(_env("m-1", json.dumps(own))) is None
    posted = events.classify(_env("m-2", FOREIGN_ALARM))
    assert posted is not None and posted.outcome == "posted"
    unrecognised = events.classify(_env("m-3", "Deployment finished"))
    assert unrecognised is not None and unrecognised.outcome == "unrecognised"
    confirmation = SnsEnvelope("SubscriptionConfirmation", "m-4", TOPIC, "x", AT, None,
                               "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription", "t",
                               "2", "https://sns.us-east-1.amazonaws.com/x.pem", {})
    assert events.classify(confirmation) is None


def test_concurrent_deliveries_are_stored_once_each_and_the_chain_verifies(
        endpoint: SnsEndpoint, db: Database, clock: FixedClock) -> None:
    bodies = [_body(FOREIGN_ALARM if i % 2 else f"text {i}", clock, message_id=f"m-{i:03d}")
              for i in range(40)]
    deliveries = bodies + bodies[:10]  # ten delivered twice, concurrently with the first
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(chunk: list[bytes]) -> None:
        start.wait(10)
        for b in chunk:
            a = endpoint(b)
            with lock:
                answers.append(a)

    threads = [threading.Thread(target=worker, args=(deliveries[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    outcomes = sorted(o for _, o in answers)
    assert all(code == 200 for code, _ in answers)
    assert outcomes.count("duplicate") == 10
    assert outcomes.count("posted") == 20 and outcomes.count("unrecognised") == 20
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(SnsMessage)) == 40
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action.in_(["sns.posted", "sns.unrecognised"]))) == 40
        assert audit.verify(s).ok


def test_a_batch_with_a_bad_message_and_a_duplicate_is_retried_alone_and_loses_nothing(
        db: Database, clock: FixedClock) -> None:
    """A batch that fails (here: a MessageId the table refuses, NOT NULL) rolls back as a whole
    (on PostgreSQL after the pipelined claim, lock and head); each message is then stored alone:
    the good ones once, the duplicate as a duplicate, the bad one fails only its own caller."""
    services = make_services(db, clock)
    held, entered = threading.Event(), threading.Event()

    def gated(fn: Any) -> Any:  # holds the first call (the first leader) until the queue is full
        def run(arg: Any) -> Any:
            if not entered.is_set():
                entered.set()
                assert held.wait(10)
            return fn(arg)
        return run

    group = GroupCommit(gated(lambda items: flow_events.store_together(services, items)),
                        gated(lambda item: flow_events.store_alone(services, item)))
    bad = _env(cast(str, None))
    envs = [_env("m-0"), _env("m-1"), bad, _env("m-1"), _env("m-2", FOREIGN_ALARM)]
    out: dict[int, str] = {}

    def deliver(i: int) -> None:
        result = events.classify(envs[i])
        assert result is not None
        try:
            out[i] = group.submit((envs[i], result)).outcome
        except Exception as exc:
            out[i] = type(exc).__name__

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(envs))]
    threads[0].start()
    assert entered.wait(10)
    for t in threads[1:]:
        t.start()
    while len(group._queue) < len(envs) - 1:
        threading.Event().wait(0.001)
    held.set()
    for t in threads:
        t.join(20)
        assert not t.is_alive()
    assert group.batches == 2 and group.items == len(envs)  # m-0 alone, then the other four together
    assert out == {0: "unrecognised", 1: "unrecognised", 2: "IntegrityError", 3: "duplicate", 4: "posted"}
    with db.session_scope() as s:
        assert sorted(s.scalars(select(SnsMessage.message_id))) == ["m-0", "m-1", "m-2"]
        rows = s.execute(select(AuditEvent.action, AuditEvent.outcome).order_by(AuditEvent.id)).all()
        stored = [a for a, o in rows if o == "ok"]
        assert sorted(stored) == ["sns.posted", "sns.unrecognised", "sns.unrecognised"]
        assert [(a, o) for a, o in rows if o != "ok"] == [("sns.receive", "error")]  # the bad one, audited
        assert audit.verify(s).ok
