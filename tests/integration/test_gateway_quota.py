"""The gateway quota API (issue 18) through `Gateway.handle`, on SQLite and PostgreSQL:
auth, validation, reservations under concurrency, settlement into the ledger, idempotency,
expiry, and revocations/restores/limit changes reaching the next check."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import boto3
import psycopg
import pytest
from moto import mock_aws
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import event, func, select
from sqlalchemy.exc import DataError

from bot.clock import FixedClock
from bot.db import Database
from bot.flows import access
from bot.gateway_json import CheckRequest, Who
from bot.models import AuditEvent, GatewayCounter, GatewayReservation, Limit, Meter, Profile, Usage
from bot.quantities import Amount, Metric, Window
from bot.runtime import Services
from bot.services import directory, limits
from bot.services.directory import Actor, SubjectRef
from bot.services.quota import QuotaBook
from bot.services.usage import report
from handlers.gateway import Gateway
from handlers.http import WsgiApp
from tests.fakes.services import make_services
from tests.harness import make_settings
from tests.rollup_check import assert_rollup_matches

TOKEN = "gw-test-token-0123456789"
OTHER = "gw-other-token-9876543210"
ADMIN = Actor.system("test")
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
ALICE_ARN = "arn:aws:iam::123456789012:user/alice"
DEV_ROLE = "arn:aws:iam::123456789012:role/team/bedrock-dev"


class Tick:
    """An injected monotonic clock for the reservation sweep."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Api:
    gw: Gateway
    db: Database
    clock: FixedClock
    tick: Tick

    def post(self, path: str, doc: Any, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        status, _, out = self.gw.handle("POST", path, headers, body)
        return status, (json.loads(out) if out.startswith(b"{") else {"raw": out.decode()})

    def check(self, who: str = "alice", tokens: int | None = None, **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"subject": who, **extra}
        if tokens is not None:
            doc["estimated_tokens"] = tokens
        status, out = self.post("/v1/quota/check", doc)
        assert status == 200, out
        return out

    def usage(self, request_id: str, who: str = "alice", inp: int = 0, out: int = 0,
              reservation: str | None = None, model: str = HAIKU) -> tuple[int, dict[str, Any]]:
        return self.post("/v1/usage", {"subject": who, "request_id": request_id, "model": model,
                                       "input_tokens": inp, "output_tokens": out,
                                       "reservation": reservation})


def _services(db: Database, clock: FixedClock, **env: str) -> Services:
    settings = make_settings(db.url, "http://127.0.0.1:9/", **env)
    return Services(settings, db, clock, overrides={"account_id": "123456789012"})


@pytest.fixture
def api(db: Database, clock: FixedClock) -> Iterator[Api]:
    services = _services(db, clock, BOT_GATEWAY_TOKENS=f"{TOKEN},{OTHER}")
    tick = Tick()
    book = QuotaBook(db, clock, services.prices, ZoneInfo("UTC"), 0, hold=timedelta(minutes=10),
                     monotonic=tick)
    with db.session_scope() as s:
        directory.link_principal(s, clock, ADMIN, SubjectRef(name="alice", slack_user_id="UALICE01"),
                                 ALICE_ARN)
        directory.change_members(s, clock, ADMIN, "team-eng", "add",
                                 [SubjectRef(slack_user_id="UALICE01"), SubjectRef(name="bob")])
        directory.link_principal(s, clock, ADMIN, SubjectRef(name="team-eng"), DEV_ROLE)
        directory.ensure_user(s, clock, ADMIN, SubjectRef(name="carol"))
    yield Api(Gateway(services, book), db, clock, tick)


@pytest.fixture
def iam(api: Api) -> Iterator[Services]:
    """Services over moto's IAM with alice's user and the team role, as `link` left them: the
    revoke and restore flows (bot/flows/access.py) write the denies the gateway must follow."""
    with mock_aws():
        client = boto3.client("iam", region_name="us-east-1")
        client.create_user(UserName="alice")
        client.create_role(RoleName="bedrock-dev", Path="/team/", AssumeRolePolicyDocument="{}")
        yield make_services(api.db, api.clock, iam=client)


def set_limit(db: Database, clock: FixedClock, who: str, amount: int, window: str = "day",
              metric: Metric = Metric.TOKENS, action: str = "revoke") -> None:
    with db.session_scope() as s:
        limits.set_limit(s, clock, ADMIN, SubjectRef(name=who), Amount(amount, metric == Metric.COST),
                         Window(window), metric, (80, 90), action, False)


def ledger_total(db: Database) -> int:
    with db.session_scope() as s:
        return int(s.scalar(select(func.coalesce(func.sum(Usage.input_tokens + Usage.output_tokens), 0))))


def held(db: Database) -> int:
    with db.session_scope() as s:
        return len(s.scalars(select(GatewayReservation.id).where(GatewayReservation.state == "held")).all())


# ---- switched off, auth ---------------------------------------------------------------------


def test_unset_tokens_answer_404(db: Database, clock: FixedClock) -> None:
    gw = Gateway(_services(db, clock))
    assert not gw.enabled
    for path in ("/v1/quota/check", "/v1/usage"):
        assert gw.handle("POST", path, {"authorization": f"Bearer {TOKEN}"}, b"{}")[0] == 404


def test_missing_or_wrong_bearer_is_401_and_audited_as_one_count_per_reason_and_minute(api: Api) -> None:
    body = {"subject": "alice"}
    assert api.post("/v1/quota/check", body, token=None)[0] == 401
    for _ in range(5):
        assert api.post("/v1/quota/check", body, token="not-the-token-at-all")[0] == 401
    assert api.post("/v1/usage", body, token=TOKEN[:-1])[0] == 401
    status, _, _ = api.gw.handle("POST", "/v1/usage", {"authorization": f"Basic {TOKEN}"}, b"{}")
    assert status == 401
    assert api.post("/v1/quota/check", body, token=OTHER)[0] == 200  # either token works
    with api.db.session_scope() as s:  # nothing audited yet: the minute is not over
        assert s.scalar(select(func.count()).where(AuditEvent.action == "gateway.unauthorized")) == 0
    api.clock.advance(minutes=1)
    assert api.gw.refused.flush() == 2
    with api.db.session_scope() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == "gateway.unauthorized")
                         .order_by(AuditEvent.id)).all()
    counts = {json.loads(r.details)["reason"]: json.loads(r.details)["count"] for r in rows}
    assert counts == {"missing": 2, "wrong": 6} and {r.outcome for r in rows} == {"denied"}
    registry = CollectorRegistry()  # as handlers/http.py registers it for /metrics
    registry.register(api.gw)
    metrics = generate_latest(registry).decode()
    assert 'bedrock_bot_gateway_unauthorized_total{reason="wrong"} 6.0' in metrics
    assert TOKEN not in metrics and all(TOKEN not in r.details for r in rows)


def test_get_is_405(api: Api) -> None:
    status, headers, _ = api.gw.handle("GET", "/v1/quota/check", {"authorization": f"Bearer {TOKEN}"}, b"")
    assert status == 405 and headers["allow"] == "POST"


# ---- bad input: 400, one line, nothing counted ----------------------------------------------


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/v1/quota/check", b"{not json", "not JSON"),
    ("/v1/quota/check", b"[1, 2]", "JSON object"),
    ("/v1/quota/check", {"subject": "nobody"}, "unknown subject"),
    ("/v1/quota/check", {"subject": "alice", "slack_user_id": "UALICE01"}, "exactly one"),
    ("/v1/quota/check", {"subject": "alice", "estimated_tokens": -5}, "negative"),
    ("/v1/quota/check", {"subject": "alice", "estimated_tokens": 10**12}, "not believable"),
    ("/v1/quota/check", {"subject": "alice", "estimated_tokens": 1.5}, "whole number"),
    ("/v1/quota/check", {"subject": "alice", "estimated_tokens": True}, "whole number"),
    ("/v1/quota/check", b'{"subject": "alice", "estimated_tokens": NaN}', "not JSON"),
    ("/v1/quota/check", {"subject": "alice", "tokens": 5}, "unknown field"),
    ("/v1/usage", {"subject": "alice", "input_tokens": 5}, "request_id is required"),
    ("/v1/usage", {"subject": "alice", "request_id": "r1", "output_tokens": -1}, "negative"),
    ("/v1/usage", {"subject": "alice", "request_id": "r1", "input_tokens": "100"}, "whole number"),
    ("/v1/usage", {"subject": "alice", "request_id": "has space"}, "request_id"),
    ("/v1/usage", {"subject": "ghost", "request_id": "r1", "input_tokens": 5}, "unknown subject"),
    ("/v1/usage", {"subject": "alice", "request_id": "r1", "reservation": "x"}, "reservation"),
])
def test_bad_input_is_400_with_one_line_and_counts_nothing(api: Api, path: str, body: Any,
                                                           reason: str) -> None:
    set_limit(api.db, api.clock, "alice", 1_000_000)
    status, out = api.post(path, body)
    assert status == 400 and reason in out["error"] and "\n" not in out["error"], out
    assert ledger_total(api.db) == 0 and held(api.db) == 0


def test_another_subjects_reservation_is_refused_and_nothing_counted(api: Api) -> None:
    set_limit(api.db, api.clock, "bob", 1_000_000)
    rid = api.check("bob", 1000)["reservation"]
    status, out = api.usage("r-steal", who="carol", inp=10, reservation=rid)
    assert status == 400 and "another subject" in out["error"]
    assert ledger_total(api.db) == 0 and held(api.db) == 1
    assert api.usage("r-steal", who="bob", inp=10, reservation=rid)[0] == 202  # the id was not burnt


# ---- checks, reservations, settlement -------------------------------------------------------


def test_check_reports_limits_and_settled_usage_reaches_the_ledger_and_reports(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 1_000_000)
    set_limit(api.db, api.clock, "team-eng", 5_000_000, window="month", action="notify")
    out = api.check("alice", 100_000, model=HAIKU)
    assert out["allowed"] and out["subject"] == "alice" and len(out["reservation"]) == 32
    day = next(x for x in out["limits"] if x["window"] == "day")
    assert day == {"owner": "alice", "window": "day", "metric": "tokens", "unit": "tokens", "used": 0,
                   "reserved": 100_000, "limit": 1_000_000, "remaining": 900_000, "action": "revoke",
                   "suspended_until": None, "resets_at": "2026-11-26T00:00:00+00:00"}
    month = next(x for x in out["limits"] if x["window"] == "month")
    assert month["owner"] == "team-eng" and month["action"] == "notify" and month["reserved"] == 0

    status, done = api.usage("req-1", inp=30_000, out=2_000, reservation=out["reservation"])
    assert status == 202 and done == {"accepted": True, "request_id": "req-1", "duplicate": False,
                                      "counted_by": "gateway", "reservation": "released"}
    after = api.check("alice")
    day = next(x for x in after["limits"] if x["window"] == "day")
    assert (day["used"], day["reserved"], day["remaining"]) == (32_000, 0, 968_000)
    with api.db.session_scope() as s:  # the ledger, hence usage reports and enforce, see it at once
        meter = s.scalars(select(Meter).where(Meter.kind == "gateway")).one()
        assert meter.key == "alice"
        rep = report(s, api.clock, ZoneInfo("UTC"), 0, ADMIN, SubjectRef(name="team-eng"), "today")
        assert (rep.totals.tokens, rep.totals.requests, rep.totals.cost_micro_usd) == (32_000, 1, 10_000)
        assert {lim.window: lim.used for lim in rep.limits} == {"month": 32_000}


def test_usage_is_idempotent_on_request_id(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 1_000_000)
    assert api.usage("same", inp=1000, out=100)[1]["duplicate"] is False
    for _ in range(3):
        status, out = api.usage("same", inp=1000, out=100)
        assert status == 202 and out["duplicate"] is True
    assert ledger_total(api.db) == 1100
    with api.db.session_scope() as s:
        assert_rollup_matches(s)  # the one-statement settle adds to the day rollup too, once
        c = s.get(GatewayCounter, directory.get(s, SubjectRef(name="alice")).id)
        assert c is not None and (c.settled_input, c.settled_output, c.settled_requests) == (1000, 100, 1)


def test_forty_concurrent_checks_of_100k_against_1m_allow_exactly_ten(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 1_000_000)
    api.check("alice")  # the view is warm; the race is on the counters alone
    barrier = threading.Barrier(40)

    def one(_: int) -> bool:
        barrier.wait()
        return bool(api.check("alice", 100_000)["allowed"])

    with ThreadPoolExecutor(40) as pool:
        allowed = sum(pool.map(one, range(40)))
    assert allowed == 10
    assert held(api.db) == 10
    denied = api.check("alice", 1)
    assert not denied["allowed"] and "would be exceeded" in denied["reason"]
    assert "1M" in denied["reason"] and "in flight" in denied["reason"]


def test_a_team_limit_is_shared_by_its_members_under_concurrency(api: Api) -> None:
    set_limit(api.db, api.clock, "team-eng", 500_000)
    barrier = threading.Barrier(20)

    def one(i: int) -> bool:
        barrier.wait()
        return bool(api.check("alice" if i % 2 else "bob", 100_000)["allowed"])

    with ThreadPoolExecutor(20) as pool:
        assert sum(pool.map(one, range(20))) == 5
    assert api.check("carol", 100_000)["allowed"]  # not a member


def test_members_checking_and_settling_at_once_never_deadlock_or_pass_the_team_cap(api: Api) -> None:
    """Checks lock a member's and the team's counters in id order, and so do usage reports:
    30 threads of check + settle pairs over both members finish without a database error."""
    set_limit(api.db, api.clock, "team-eng", 2_000_000)
    set_limit(api.db, api.clock, "alice", 1_500_000)
    set_limit(api.db, api.clock, "bob", 1_500_000)
    barrier = threading.Barrier(30)

    def pairs(i: int) -> int:
        who, allowed = ("alice" if i % 2 else "bob"), 0
        barrier.wait()
        for n in range(4):
            out = api.check(who, 100_000)
            if out["allowed"]:
                allowed += 1
                status, _ = api.usage(f"dl-{i}-{n}", who=who, inp=90_000, out=10_000,
                                      reservation=out["reservation"])
                assert status == 202
        return allowed

    with ThreadPoolExecutor(30) as pool:
        allowed = sum(pool.map(pairs, range(30)))
    assert allowed == 20  # the team's 2M in 100k calls, exactly
    assert ledger_total(api.db) == 2_000_000 and held(api.db) == 0


def test_settling_gives_the_unused_estimate_back(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 300_000)
    rids = [api.check("alice", 100_000)["reservation"] for _ in range(3)]
    assert not api.check("alice", 100_000)["allowed"]
    api.usage("r0", inp=10_000, out=1_000, reservation=rids[0])
    assert api.check("alice", 80_000)["allowed"]  # 11k used + 200k held + 80k <= 300k
    assert not api.check("alice", 10_000)["allowed"]


def test_unsettled_reservations_expire(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 200_000)
    assert api.check("alice", 200_000)["allowed"]
    assert not api.check("alice", 1)["allowed"]
    api.clock.advance(minutes=11)
    assert api.check("alice", 150_000)["allowed"]  # the full check swept the expired one first
    with api.db.session_scope() as s:
        states = sorted(s.scalars(select(GatewayReservation.state)).all())
    assert states == ["expired", "held"]
    # a late report of the expired call still counts, once, and releases nothing twice
    status, out = api.post("/v1/usage", {"subject": "alice", "request_id": "late", "input_tokens": 5})
    assert status == 202 and out["counted_by"] == "gateway"


def test_requests_and_cost_limits_reserve_too(api: Api) -> None:
    set_limit(api.db, api.clock, "bob", 3, metric=Metric.REQUESTS)
    assert [api.check("bob", 10)["allowed"] for _ in range(4)] == [True, True, True, False]
    set_limit(api.db, api.clock, "carol", 1_000_000, metric=Metric.COST)  # $1
    # 100k tokens of Haiku priced as output: 100k x 1.25 µ$ = $0.125 each
    allowed = [api.check("carol", 100_000, model=HAIKU)["allowed"] for _ in range(9)]
    assert allowed == [True] * 8 + [False]


def test_no_estimate_no_reservation_but_a_reached_limit_denies(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 1000)
    out = api.check("alice")
    assert out["allowed"] and out["reservation"] is None
    api.usage("r1", inp=1000)
    out = api.check("alice")
    assert not out["allowed"] and "is reached" in out["reason"]


def test_usage_through_a_known_aip_is_left_to_its_cloudwatch_meter(api: Api) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123def456"
    with api.db.session_scope() as s:
        s.add(Profile(arn=arn, profile_id="abc123def456", name="alice-haiku", model_source=HAIKU,
                      model_id=HAIKU, tags={}, subject_id=directory.get(s, SubjectRef(name="alice")).id,
                      created_by="test", created_at=api.clock()))
    status, out = api.usage("via-aip", inp=500, model=arn)
    assert status == 202 and out["counted_by"] == "profile"
    assert ledger_total(api.db) == 0


def test_usage_of_a_model_without_a_price_is_counted_in_tokens_and_flagged_unpriced(api: Api) -> None:
    """As on the other meters (issue 17): never a silent $0."""
    assert api.usage("priced", inp=1_000, out=100)[0] == 202
    assert api.usage("unpriced", inp=700, out=30, model="acme.unknown-model-v9")[0] == 202
    with api.db.session_scope() as s:
        row = s.execute(select(func.sum(Usage.input_tokens), func.sum(Usage.unpriced_tokens),
                               func.sum(Usage.unpriced_requests), func.sum(Usage.requests))
                        .join(Meter, Meter.id == Usage.meter_id).where(Meter.kind == "gateway")).one()
    assert tuple(row) == (1_700, 730, 1, 2)


def test_subjects_by_principal_arn_session_and_slack_id(api: Api) -> None:
    by = {"principal_arn": ALICE_ARN}
    status, out = api.post("/v1/quota/check", by)
    assert status == 200 and out["subject"] == "alice"
    session = "arn:aws:sts::123456789012:assumed-role/bedrock-dev/bob@example.com"
    assert api.post("/v1/quota/check", {"principal_arn": session})[1]["subject"] == "bob"
    other = "arn:aws:sts::123456789012:assumed-role/bedrock-dev/ci-runner"
    assert api.post("/v1/quota/check", {"principal_arn": other})[1]["subject"] == "team-eng"
    assert api.post("/v1/quota/check", {"slack_user_id": "UALICE01"})[1]["subject"] == "alice"
    assert api.post("/v1/quota/check", {"principal_arn": "arn:aws:iam::123456789012:user/zed"})[0] == 400


# ---- governance changes reach the next check ------------------------------------------------


def test_revoke_restore_and_limit_changes_take_effect_on_the_next_check(api: Api, iam: Services) -> None:
    set_limit(api.db, api.clock, "alice", 1_000_000)
    assert api.check("alice", 10)["allowed"]
    access.revoke_manual(iam, ADMIN, SubjectRef(name="team-eng"), "incident")
    out = api.check("alice", 10)  # no wait, no poll interval: the very next check
    assert not out["allowed"] and "team-eng is revoked (manual: incident)" in out["reason"]
    assert out["reservation"] is None
    access.restore_manual(iam, ADMIN, SubjectRef(name="team-eng"), "ok")
    assert api.check("alice", 10)["allowed"]
    set_limit(api.db, api.clock, "alice", 5)
    assert not api.check("alice", 10)["allowed"]
    with api.db.session_scope() as s:
        limits.remove_limits(s, api.clock, ADMIN, SubjectRef(name="alice"), None, None)
    out = api.check("alice", 10)
    assert out["allowed"] and out["reason"] == "no enforced limit" and out["limits"] == []


def test_a_change_made_through_another_replica_reaches_this_ones_next_check(api: Api, iam: Services) -> None:
    """Two books on one database, as two replicas: each keeps its own views in memory."""
    book = api.gw.book
    other = QuotaBook(api.db, api.clock, book.prices, ZoneInfo("UTC"), 0)
    set_limit(api.db, api.clock, "alice", 1_000_000)
    for b in (book, other):  # both have alice's view cached, reserving
        assert b.check(CheckRequest(Who(subject="alice"), HAIKU, 10)).reservation is not None
    loads = book.stats.loads
    access.revoke_manual(iam, ADMIN, SubjectRef(name="alice"), "incident")  # "from Slack"
    assert not book.check(CheckRequest(Who(subject="alice"), HAIKU, 10)).allowed
    assert not other.check(CheckRequest(Who(subject="alice"), HAIKU, 0)).allowed
    assert book.stats.loads == loads + 1  # reloaded because the database said so, once
    access.restore_manual(iam, ADMIN, SubjectRef(name="alice"), "ok")
    assert other.check(CheckRequest(Who(subject="alice"), HAIKU, 10)).allowed
    set_limit(api.db, api.clock, "alice", 5)
    assert not other.check(CheckRequest(Who(subject="alice"), HAIKU, 10)).allowed
    assert not book.check(CheckRequest(Who(subject="alice"), HAIKU, 10)).allowed


def test_a_principal_moved_to_another_subject_is_resolved_anew_on_the_next_check(api: Api) -> None:
    assert api.post("/v1/quota/check", {"principal_arn": ALICE_ARN})[1]["subject"] == "alice"
    with api.db.session_scope() as s:
        alice = directory.get(s, SubjectRef(name="alice"))
        assert directory.unlink_principal(s, api.clock, ADMIN, alice, ALICE_ARN, None)
        directory.link_principal(s, api.clock, ADMIN, SubjectRef(name="carol"), ALICE_ARN)
    assert api.post("/v1/quota/check", {"principal_arn": ALICE_ARN})[1]["subject"] == "carol"


def test_audit_rows_that_change_no_answer_keep_the_views(api: Api) -> None:
    set_limit(api.db, api.clock, "alice", 1_000_000)
    api.check("alice", 10)
    loads = api.gw.book.stats.loads
    for _ in range(3):  # refused tokens: one gateway.unauthorized row, written at once here
        api.post("/v1/quota/check", {"subject": "alice"}, token="wrong-token-0123456789")
    assert api.gw.refused.flush(force=True) == 1
    assert api.check("alice", 10)["allowed"]
    assert api.gw.book.stats.loads == loads
    set_limit(api.db, api.clock, "alice", 2_000_000)  # an audited change that matters: reload
    assert api.check("alice", 10)["limits"][0]["limit"] == 2_000_000
    assert api.gw.book.stats.loads == loads + 1


def test_a_check_from_memory_is_one_statement(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hot path's promise: a cached view costs one SQL statement per check (freshness and
    counters, or freshness, counters and the reservation), on either database. On PostgreSQL
    it goes straight to psycopg on one pooled connection, past SQLAlchemy's execution layer
    (`Database.quick_statement`), and so does the usage report that settles it."""
    set_limit(api.db, api.clock, "alice", 1_000_000)
    set_limit(api.db, api.clock, "team-eng", 5_000_000)
    api.check("alice", 10)
    api.check("carol", 10)
    api.usage("warm", inp=1)  # alice's gateway meter exists from here on
    seen: list[str] = []  # through SQLAlchemy
    sent: list[str] = []  # straight to psycopg
    checkouts: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split()[0].upper())

    if api.db.on_psycopg():
        direct = psycopg.Connection.execute

        def execute(self: psycopg.Connection[Any], query: Any, *args: Any, **kw: Any) -> Any:
            sent.append(str(query).split()[0].upper())
            return direct(self, query, *args, **kw)

        monkeypatch.setattr(psycopg.Connection, "execute", execute)
    engines = [api.db.quick] if api.db.quick is api.db.engine else [api.db.quick, api.db.engine]
    checkout = lambda *_: checkouts.append(1)  # noqa: E731
    for e in engines:
        event.listen(e, "before_cursor_execute", count)
        event.listen(e.pool, "checkout", checkout)

    def calls(run: Any) -> tuple[list[str], list[str], int]:
        seen[:], sent[:], checkouts[:] = [], [], []
        out = run()
        assert out
        return list(seen), list(sent), len(checkouts)

    try:
        reserving = calls(lambda: api.check("alice", 10)["reservation"])
        plain = calls(lambda: not api.check("carol", 10)["reservation"])
        settling = calls(lambda: api.usage("u1", inp=5)[0] == 202)
    finally:
        for e in engines:
            event.remove(e, "before_cursor_execute", count)
            event.remove(e.pool, "checkout", checkout)
    if api.db.on_psycopg():  # autocommit: no BEGIN/COMMIT, no pre-ping, no SQLAlchemy statement
        assert reserving == ([], ["WITH"], 1) and plain == ([], ["SELECT"], 1)
        assert settling == ([], ["WITH"], 1)
    else:  # BEGIN IMMEDIATE, the read, the counters' UPDATE and the reservation's INSERT
        assert reserving[0] == ["BEGIN", "SELECT", "UPDATE", "INSERT"]
        assert plain[0] == ["BEGIN", "SELECT"]


def test_a_denied_check_sweeps_only_when_expiry_could_give_headroom(api: Api) -> None:
    """A subject over its limit with nothing held is denied without a sweep (a transaction of its
    own); with a held reservation on the owner that does not fit, the sweep runs and may help."""
    set_limit(api.db, api.clock, "alice", 1000)
    api.usage("over", inp=2000)
    swept: list[bool] = []
    sweep_now = api.gw.book._sweep_now

    def spy() -> bool:
        swept.append(True)
        return sweep_now()

    api.gw.book._sweep_now = spy  # type: ignore[method-assign]
    assert not api.check("alice", 10)["allowed"]
    assert swept == []
    set_limit(api.db, api.clock, "bob", 200_000)
    assert api.check("bob", 200_000)["allowed"]
    assert not api.check("bob", 1)["allowed"]
    assert swept == [True]  # held, not yet expired: swept, nothing came back
    api.clock.advance(minutes=11)
    assert api.check("bob", 150_000)["allowed"]
    assert swept == [True, True]


def test_an_approved_exception_suspends_the_limit_for_the_gateway(api: Api, iam: Services) -> None:
    set_limit(api.db, api.clock, "alice", 1000)
    api.usage("big", inp=5000)
    assert not api.check("alice", 10)["allowed"]
    with api.db.session_scope() as s:
        alice_id = directory.get(s, SubjectRef(name="alice")).id
        limit_id = s.scalars(select(Limit.id).where(Limit.subject_id == alice_id)).one()
    assert access.revoke_automatic(iam, Actor.system("enforce"), alice_id, "limit", "over", limit_id,
                                   (api.clock(), api.clock() + timedelta(hours=1)),
                                   lambda session: True) is not None
    assert "alice is revoked (limit: over)" in api.check("alice", 10)["reason"]
    access.restore_manual(iam, ADMIN, SubjectRef(name="alice"), "approved")
    out = api.check("alice", 10)
    # the restore's exception runs to the revocation's window end
    assert out["allowed"] and out["limits"][0]["suspended_until"] == "2026-11-25T11:30:00+00:00"


# ---- mounted in the serve router (handlers/http.py) -----------------------------------------


def _through_router(app: WsgiApp, method: str, path: str, body: bytes = b"",
                    token: str | None = TOKEN) -> tuple[int, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
                               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
                               "SERVER_NAME": "localhost", "SERVER_PORT": "3000",
                               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1"}
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    seen: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(headers)

    out = b"".join(app(environ, start))
    return seen["status"], seen["headers"], out


def test_the_router_mounts_the_gateway_and_its_series_are_on_metrics(api: Api) -> None:
    app = WsgiApp(cast(Any, None), cast(Any, None), gateway=api.gw)  # no Slack request is made
    body = json.dumps({"subject": "alice", "estimated_tokens": 10}).encode()
    status, headers, out = _through_router(app, "POST", "/v1/quota/check", body)
    assert status == 200 and headers["content-type"] == "application/json" and json.loads(out)["allowed"]
    assert _through_router(app, "POST", "/v1/usage", body, token="wrong-token-0123456789")[0] == 401
    status, headers, _ = _through_router(app, "GET", "/v1/usage")
    assert status == 405 and headers["allow"] == "POST"
    metrics = _through_router(app, "GET", "/metrics")[2].decode()
    assert 'bedrock_bot_gateway_events_total{event="check allowed"} 1.0' in metrics
    assert 'bedrock_bot_gateway_seconds_count{path="/v1/quota/check"} 1.0' in metrics
    assert 'bedrock_bot_gateway_unauthorized_total{reason="wrong"} 1.0' in metrics
    assert ('bedrock_bot_http_requests_total{method="POST",route="/v1/quota/check",status="200"} 1.0'
            in metrics)


def test_without_tokens_the_router_answers_404_on_the_gateway_paths() -> None:
    app = WsgiApp(cast(Any, None), cast(Any, None))  # serve builds no Gateway without BOT_GATEWAY_TOKENS
    for method in ("POST", "GET"):
        assert _through_router(app, method, "/v1/quota/check", b"{}")[0] == 404
        assert _through_router(app, method, "/v1/usage", b"{}")[0] == 404
    assert "bedrock_bot_gateway" not in _through_router(app, "GET", "/metrics")[2].decode()


def test_usage_reports_that_arrive_together_commit_together_each_counted_once(api: Api) -> None:
    """SQLite commits one writer at a time, each with an fsync: reports that queue while one
    commits go in the next transaction together. 12 reports (two of them repeated request ids)
    from 12 threads: each counted once, the repeats answered as duplicates, on both databases."""
    set_limit(api.db, api.clock, "alice", 10_000_000)
    ids = [f"r{i}" for i in range(10)] + ["r0", "r1"]
    settles = api.gw.book.sql.settles
    assert api.usage("warm", inp=1000, out=100)[0] == 202  # alice's gateway meter exists now
    with ThreadPoolExecutor(len(ids)) as pool:
        if api.db.dialect == "sqlite":  # hold the write lock so the reports queue up behind it
            with api.db.engine.begin():
                first = pool.submit(api.usage, ids[0], inp=1000, out=100)
                _until(lambda: settles.waiting() == 0 and settles.items == 2)
                rest = [pool.submit(api.usage, r, inp=1000, out=100) for r in ids[1:]]
                _until(lambda: settles.waiting() == len(ids) - 1)
            answers = [first.result(), *(f.result() for f in rest)]
            assert (settles.batches, settles.items) == (3, len(ids) + 1)  # the queued 11 in one
        else:
            answers = list(pool.map(lambda r: api.usage(r, inp=1000, out=100), ids))
    assert all(status == 202 for status, _ in answers)
    assert sum(out["duplicate"] for _, out in answers) == 2
    assert ledger_total(api.db) == 11 * 1100
    with api.db.session_scope() as s:
        assert_rollup_matches(s)
        c = s.get(GatewayCounter, directory.get(s, SubjectRef(name="alice")).id)
        assert c is not None and (c.settled_input, c.settled_output, c.settled_requests) == (11_000, 1100, 11)


def _until(ready: Any, tries: int = 2000) -> None:
    """Wait for other threads to reach a state (polled; no clock involved)."""
    for _ in range(tries):
        if ready():
            return
        threading.Event().wait(0.005)
    raise AssertionError("the threads did not get there")


def test_quick_statement_is_autocommit_and_raises_sqlalchemys_errors(db: Database) -> None:
    """The driver path keeps the engine's contract: each statement its own transaction (the
    quick engine's autocommit), psycopg's errors as SQLAlchemy's, and the connection usable next."""
    if not db.on_psycopg():
        pytest.skip("the driver path is PostgreSQL through psycopg 3")
    with pytest.raises(DataError):
        db.quick_statement("SELECT 1 / %(z)s", {"z": 0})
    assert db.quick_statement("SELECT CAST(%(x)s AS int), current_setting('transaction_isolation')",
                              {"x": 5}) == [(5, "read committed")]
    proxy = db.quick.raw_connection()
    try:
        assert cast(Any, proxy.driver_connection).autocommit
    finally:
        proxy.close()
    assert db.quick_statement("SET LOCAL statement_timeout = 1000", {}) == []  # no rows, no error
