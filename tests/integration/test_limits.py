"""Limits on a real database (SQLite and PostgreSQL): set, replace, list, remove; who may; what a
subject nobody created, a $ amount on a token metric or an unknown action get; and a changed amount
re-arming the alert marks that enforce uses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import func, select

from bot.aws.access import IamAccess
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import BadInput, Denied, NotFound
from bot.models import AlertMark, AuditEvent, Limit, Subject
from bot.quantities import Metric, Window, parse_amount
from bot.services import audit, directory, ledger, limits
from bot.services.directory import Actor, SubjectRef
from bot.services.enforce import evaluate
from bot.services.ledger import LedgerRow
from bot.services.limits import LimitView

OWNER = Actor.slack("UADMIN01")
ADMIN = Actor.slack("UADMIN02")
APPROVER = Actor.slack("UAPPR001")
NOBODY = Actor.slack("UNOBODY1")
ALICE = SubjectRef(name="alice")
H0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # inside the `clock` fixture's day


@pytest.fixture
def world(db: Database, clock: FixedClock) -> Database:
    """Owner, admin and approver; users alice and bob, team-eng with alice."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        directory.set_admin(s, clock, OWNER, "UADMIN02", "admin")
        directory.set_admin(s, clock, OWNER, "UAPPR001", "approver")
        directory.ensure_user(s, clock, OWNER, SubjectRef(name="alice", slack_user_id="UALICE01"))
        directory.ensure_user(s, clock, OWNER, SubjectRef(name="bob", slack_user_id="UBOB0001"))
        directory.change_members(s, clock, OWNER, "team-eng", "add", [SubjectRef(slack_user_id="UALICE01")])
    return db


def set_limit(db: Database, clock: FixedClock, ref: SubjectRef, spec: str, window: Window,
              metric: Metric = Metric.TOKENS, warn: tuple[int, ...] = (80, 90), action: str = "revoke",
              alarm: bool = True, actor: Actor = ADMIN) -> tuple[LimitView, LimitView | None]:
    with db.session_scope() as s:
        return limits.set_limit(s, clock, actor, ref, parse_amount(spec), window, metric, warn, action,
                                alarm)


def listed(db: Database, ref: SubjectRef | None = None) -> list[LimitView]:
    with db.session_scope() as s:
        return limits.list_limits(s, ref)


def count(db: Database, model: type[Any]) -> int:
    with db.session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def events(db: Database, action: str) -> list[AuditEvent]:
    with db.session_scope() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def audit_ok(db: Database) -> None:
    with db.session_scope() as s:
        result = audit.verify(s)
    assert result.ok, result.reason


def test_set_creates_a_limit_and_audits_it(world: Database, clock: FixedClock) -> None:
    new, before = set_limit(world, clock, SubjectRef(name="team-eng"), "5M", Window.WEEK)
    assert before is None
    assert (new.subject, new.metric, new.amount, new.window) == ("team-eng", "tokens", 5_000_000, "week")
    assert (new.warn, new.action, new.alarm) == ((80, 90), "revoke", True)
    assert new.amount_text == "5M"
    assert listed(world) == [new]
    with world.session_scope() as s:
        row = s.get(Limit, new.id)
        assert row is not None
        assert row.created_by == "slack:UADMIN02" and row.created_at == clock()
    [event] = events(world, "limit.set")
    assert (event.actor, event.target, event.outcome) == ("slack:UADMIN02", "team:team-eng", "ok")
    details = json.loads(event.details)
    assert (details["amount"], details["window"], details["metric"], details["before"]) == (
        5_000_000, "week", "tokens", None)
    audit_ok(world)


def test_set_by_mention_and_cost_limit(world: Database, clock: FixedClock) -> None:
    new, _ = set_limit(world, clock, SubjectRef(slack_user_id="UALICE01"), "$200", Window.MONTH,
                       metric=Metric.COST, warn=(50,), action="notify", alarm=False)
    assert (new.subject, new.metric, new.amount, new.window) == ("alice", "cost_usd", 200_000_000, "month")
    assert (new.warn, new.action, new.alarm) == ((50,), "notify", False)
    assert new.amount_text.startswith("$200")
    audit_ok(world)


def test_same_subject_metric_window_replaces_in_place(world: Database, clock: FixedClock) -> None:
    first, _ = set_limit(world, clock, ALICE, "1M", Window.DAY)
    clock.advance(minutes=5)
    second, before = set_limit(world, clock, ALICE, "2.5M", Window.DAY, warn=(70,), action="notify")
    assert before == first
    assert second.id == first.id
    assert (second.amount, second.warn, second.action) == (2_500_000, (70,), "notify")
    assert listed(world, ALICE) == [second]
    assert count(world, Limit) == 1
    with world.session_scope() as s:
        row = s.get(Limit, first.id)
        assert row is not None and row.updated_at == clock() and row.created_at < clock()
    assert json.loads(events(world, "limit.set")[-1].details)["before"] == 1_000_000

    # Another window or another metric is another limit.
    week, none_before = set_limit(world, clock, ALICE, "5M", Window.WEEK)
    reqs, _ = set_limit(world, clock, ALICE, "100", Window.DAY, metric=Metric.REQUESTS)
    assert none_before is None
    assert len({second.id, week.id, reqs.id}) == 3
    assert count(world, Limit) == 3
    audit_ok(world)


def test_list_orders_by_subject_then_window_then_metric(world: Database, clock: FixedClock) -> None:
    set_limit(world, clock, SubjectRef(name="team-eng"), "5M", Window.WEEK)
    set_limit(world, clock, ALICE, "5M", Window.WEEK)
    set_limit(world, clock, ALICE, "1M", Window.DAY, metric=Metric.TOKENS)
    set_limit(world, clock, ALICE, "100", Window.DAY, metric=Metric.REQUESTS)
    set_limit(world, clock, SubjectRef(name="bob"), "2M", Window.H24)

    everyone = [(v.subject, v.window, v.metric) for v in listed(world)]
    assert everyone == [("alice", "day", "requests"), ("alice", "day", "tokens"), ("alice", "week", "tokens"),
                        ("bob", "24h", "tokens"), ("team-eng", "week", "tokens")]
    assert [(v.window, v.metric) for v in listed(world, ALICE)] == [
        ("day", "requests"), ("day", "tokens"), ("week", "tokens")]
    assert [v.subject for v in listed(world, SubjectRef(slack_user_id="UBOB0001"))] == ["bob"]
    assert listed(world, SubjectRef(name="team-eng"))[0].amount == 5_000_000
    with pytest.raises(NotFound):
        listed(world, SubjectRef(name="carol"))
    audit_ok(world)


def test_remove_by_window_by_metric_and_all(world: Database, clock: FixedClock) -> None:
    day, _ = set_limit(world, clock, ALICE, "1M", Window.DAY)
    day_req, _ = set_limit(world, clock, ALICE, "100", Window.DAY, metric=Metric.REQUESTS)
    week, _ = set_limit(world, clock, ALICE, "5M", Window.WEEK)
    bob, _ = set_limit(world, clock, SubjectRef(name="bob"), "5M", Window.WEEK)

    with world.session_scope() as s:
        removed = limits.remove_limits(s, clock, ADMIN, ALICE, Window.WEEK, None)
    assert removed == [week]
    with world.session_scope() as s:
        removed = limits.remove_limits(s, clock, ADMIN, ALICE, Window.DAY, Metric.REQUESTS)
    assert removed == [day_req]
    assert listed(world, ALICE) == [day]

    with world.session_scope() as s, pytest.raises(NotFound, match="no matching limit"):
        limits.remove_limits(s, clock, ADMIN, ALICE, Window.MONTH, None)

    with world.session_scope() as s:
        removed = limits.remove_limits(s, clock, ADMIN, ALICE, None, None)
    assert removed == [day]
    assert listed(world, ALICE) == []
    assert listed(world) == [bob]  # someone else's limit is untouched
    with world.session_scope() as s, pytest.raises(NotFound):
        limits.remove_limits(s, clock, ADMIN, ALICE, None, None)

    removals = [json.loads(e.details)["removed"] for e in events(world, "limit.remove")]
    assert removals == [["tokens/week"], ["requests/day"], ["tokens/day"]]
    assert {e.target for e in events(world, "limit.remove")} == {"user:alice"}
    audit_ok(world)


@pytest.mark.parametrize("actor", [NOBODY, APPROVER], ids=["nobody", "approver"])
def test_non_admins_cannot_set_or_remove(world: Database, clock: FixedClock, actor: Actor) -> None:
    existing, _ = set_limit(world, clock, ALICE, "1M", Window.DAY)
    audit_rows = count(world, AuditEvent)

    with pytest.raises(Denied, match="admin"):
        set_limit(world, clock, ALICE, "9M", Window.DAY, actor=actor)
    with pytest.raises(Denied):
        set_limit(world, clock, SubjectRef(name="bob"), "9M", Window.DAY, actor=actor)
    with world.session_scope() as s, pytest.raises(Denied):
        limits.remove_limits(s, clock, actor, ALICE, None, None)

    assert listed(world) == [existing]  # nothing changed
    assert count(world, AuditEvent) == audit_rows
    # Anyone may read them.
    assert listed(world, ALICE) == [existing]
    audit_ok(world)


def test_limit_on_a_subject_nobody_created_is_refused_with_a_hint(world: Database, clock: FixedClock) -> None:
    subjects = count(world, Subject)
    unknown = (SubjectRef(name="carol"), SubjectRef(name="team-ghost"), SubjectRef(slack_user_id="UCAROL01"))
    for ref in unknown:
        with pytest.raises(NotFound) as info:
            set_limit(world, clock, ref, "1M", Window.DAY)
        message = str(info.value)
        assert "provision" in message and "link" in message and "team" in message
        assert "\n" not in message
    with world.session_scope() as s, pytest.raises(NotFound, match="provision"):
        limits.remove_limits(s, clock, ADMIN, SubjectRef(name="carol"), None, None)
    assert count(world, Subject) == subjects  # naming it did not create it
    assert count(world, Limit) == 0
    audit_ok(world)


def test_amount_and_metric_must_agree_and_action_must_be_known(world: Database, clock: FixedClock) -> None:
    with pytest.raises(BadInput, match=r"\$"):
        set_limit(world, clock, ALICE, "$200", Window.MONTH, metric=Metric.TOKENS)
    with pytest.raises(BadInput):
        set_limit(world, clock, ALICE, "$5", Window.DAY, metric=Metric.REQUESTS)
    with pytest.raises(BadInput, match=r"\$"):
        set_limit(world, clock, ALICE, "200", Window.MONTH, metric=Metric.COST)
    with pytest.raises(BadInput, match="revoke or notify"):
        set_limit(world, clock, ALICE, "1M", Window.DAY, action="shout")
    assert count(world, Limit) == 0
    assert events(world, "limit.set") == []
    audit_ok(world)


@pytest.fixture
def iam_access() -> Iterator[IamAccess]:
    with mock_aws():
        yield IamAccess(boto3.client("iam", region_name="us-east-1"))


def test_changing_the_amount_rearms_the_alert_marks(world: Database, clock: FixedClock,
                                                    iam_access: IamAccess) -> None:
    tz = ZoneInfo("UTC")

    def warnings() -> list[int]:
        with world.session_scope() as s:
            return [w.threshold for w in evaluate(s, clock, tz, 0).warnings]

    def marks(limit_id: int) -> list[int]:
        with world.session_scope() as s:
            return sorted(s.scalars(select(AlertMark.threshold).where(AlertMark.limit_id == limit_id)))

    view, _ = set_limit(world, clock, ALICE, "1M", Window.DAY)
    with world.session_scope() as s:
        alice = directory.get(s, ALICE)
        meter = directory.ensure_meter(s, clock, "profile", "aipid0000001", alice.id).id
        ledger.upsert(s, [LedgerRow(meter, H0, input_tokens=600_000, output_tokens=250_000)], clock())

    assert warnings() == [80]  # 85%
    assert warnings() == []
    assert marks(view.id) == [80]

    set_limit(world, clock, ALICE, "1M", Window.DAY, warn=(80, 90), action="revoke")  # same amount
    assert marks(view.id) == [80]
    assert warnings() == []

    set_limit(world, clock, ALICE, "900k", Window.DAY)  # 94%: re-armed, both fire
    assert marks(view.id) == []
    assert warnings() == [90]  # both crossed; only the highest is announced
    assert warnings() == []

    set_limit(world, clock, ALICE, "1M", Window.DAY)  # back to 85%: re-armed again
    assert marks(view.id) == []
    assert warnings() == [80]
    assert marks(view.id) == [80]
    audit_ok(world)
