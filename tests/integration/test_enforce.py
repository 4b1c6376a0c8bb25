"""Enforcement against a real database (SQLite and PostgreSQL) and moto's IAM: warnings once per
(limit, window, threshold), revocation at 100%, lifting at rollover (calendar windows in a non-UTC
zone, rolling windows), manual revocations that outlive a lifted limit revocation, notify-only
limits, exceptions, raised/removed limits, dry run, and team revocations scoped to the AIPs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from sqlalchemy import func, select

from bot.aws.access import DENY_ACTIONS, IamAccess
from bot.clock import FixedClock
from bot.db import Database
from bot.flows import access as access_flow
from bot.flows import enforce as enforce_flow
from bot.models import AlertMark, AuditEvent, Limit, LimitException, Profile, Revocation
from bot.quantities import Metric, Window, parse_amount
from bot.runtime import Services
from bot.services import access, audit, directory, ledger, limits
from bot.services.directory import Actor, SubjectRef
from bot.services.enforce import EnforceResult
from bot.services.ledger import LedgerRow
from tests.fakes.services import make_services

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)  # the `clock` fixture's time (a Wednesday)
H0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # an hour bucket inside T0's day
ADMIN = Actor.slack("UADMIN01")
ENFORCER = "system:enforce"
M = 1_000_000


def arn_of(user: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{user}"


def aip_arn(profile_id: str) -> str:
    return f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/{profile_id}"


@pytest.fixture
def iam() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("iam", region_name=REGION)


@dataclass
class World:
    db: Database
    clock: FixedClock
    iam: Any
    access: IamAccess
    tz: ZoneInfo = UTC_ZONE
    week_start: int = 0

    @property
    def services(self) -> Services:
        week = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
        return make_services(self.db, self.clock, self.iam, dry_run=self.access.dry_run,
                             BOT_TIMEZONE=str(self.tz), BOT_WEEK_START=week[self.week_start])

    def run(self) -> EnforceResult:
        return enforce_flow.run(self.services, announce=False)

    def user(self, name: str, slack_id: str, meter_key: str | None = None) -> int | None:
        """An IAM user linked to a user subject; returns the id of its usage meter (if asked)."""
        self.iam.create_user(UserName=name)
        with self.db.session_scope() as s:
            directory.bootstrap_admins(s, self.clock, ["UADMIN01"])
            subject, _ = directory.link_principal(
                s, self.clock, ADMIN, SubjectRef(name=name, slack_user_id=slack_id), arn_of(name))
            if meter_key is None:
                return None
            return directory.ensure_meter(s, self.clock, "profile", meter_key, subject.id).id

    def limit(self, subject: str, spec: str, window: Window, warn: tuple[int, ...] = (80, 90),
              action: str = "revoke", metric: Metric = Metric.TOKENS) -> int:
        with self.db.session_scope() as s:
            view, _ = limits.set_limit(s, self.clock, ADMIN, SubjectRef(name=subject), parse_amount(spec),
                                       window, metric, warn, action, False)
            return view.id

    def usage(self, meter_id: int, hour: datetime, tokens: int) -> None:
        """Set (not add) the tokens of one hour bucket: the ledger upsert replaces."""
        with self.db.session_scope() as s:
            ledger.upsert(s, [LedgerRow(meter_id, hour, input_tokens=tokens, requests=1)], self.clock())

    def policy(self, user: str, subject: str) -> dict[str, Any] | None:
        try:
            doc = self.iam.get_user_policy(UserName=user, PolicyName=f"bedrock-bot-deny-{subject}")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NoSuchEntity"
            return None
        raw = doc["PolicyDocument"]
        return raw if isinstance(raw, dict) else json.loads(raw)

    def policies(self, user: str) -> list[str]:
        return list(self.iam.list_user_policies(UserName=user)["PolicyNames"])

    def revocations(self) -> list[Revocation]:
        with self.db.session_scope() as s:
            return list(s.scalars(select(Revocation).order_by(Revocation.id)))

    def audit_events(self, action: str) -> list[AuditEvent]:
        with self.db.session_scope() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                  .order_by(AuditEvent.id)))

    def assert_audit_ok(self) -> None:
        with self.db.session_scope() as s:
            result = audit.verify(s)
        assert result.ok, result.reason
        assert result.rows > 0


def make_world(db: Database, clock: FixedClock, iam: Any, dry_run: bool = False) -> World:
    return World(db, clock, iam, IamAccess(iam, dry_run=dry_run))


def thresholds(result: EnforceResult) -> list[int]:
    return [w.threshold for w in result.warnings]


def assert_user_deny(doc: dict[str, Any] | None) -> None:
    assert doc is not None, "the deny policy is missing"
    [stmt] = doc["Statement"]
    assert stmt["Effect"] == "Deny"
    assert sorted(stmt["Action"]) == sorted(DENY_ACTIONS)
    assert stmt["Resource"] == "*"


# ---------------------------------------------------------------- warnings, breach, idempotence


def test_warnings_fire_once_per_threshold_then_breach_revokes_once(db: Database, clock: FixedClock,
                                                                    iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.DAY)

    w.usage(meter, H0, 850_000)
    r = w.run()
    assert r.checked == 1
    assert thresholds(r) == [80]
    warning = r.warnings[0]
    assert warning.status.limit_id == limit_id
    assert warning.status.used == 850_000
    assert warning.subject.name == "alice"
    assert warning.users == ("UALICE01",)
    assert r.breaches == [] and r.restored == [] and r.suspended == []

    assert thresholds(w.run()) == []  # the 80% warning fired already in this window

    w.usage(meter, H0, 950_000)
    r = w.run()
    assert thresholds(r) == [90]
    assert r.breaches == []
    assert w.policies("alice") == []

    w.usage(meter, H0, 1_010_000)
    r = w.run()
    assert thresholds(r) == []
    assert len(r.breaches) == 1
    breach = r.breaches[0]
    assert breach.status.used == 1_010_000 and breach.status.amount == M
    rev = breach.revocation
    assert (rev.reason, rev.state, rev.limit_id, rev.revoked_by) == ("limit", "active", limit_id, ENFORCER)
    assert rev.subject.name == "alice"
    assert rev.principals == (arn_of("alice"),)
    assert rev.affected_users == ("UALICE01",)
    assert rev.dry_run is False
    assert rev.window_end == datetime(2026, 11, 26, tzinfo=UTC)
    assert_user_deny(w.policy("alice", "alice"))
    [row] = w.revocations()
    assert (row.reason, row.state, row.limit_id) == ("limit", "active", limit_id)

    r = w.run()
    assert r.breaches == [] and r.warnings == [] and r.restored == []
    assert len(w.revocations()) == 1
    assert_user_deny(w.policy("alice", "alice"))
    with db.session_scope() as s:
        marks = sorted(s.scalars(select(AlertMark.threshold).where(AlertMark.limit_id == limit_id)))
    assert marks == [80, 90, 100]
    [revoke_event] = w.audit_events("access.revoke")
    assert revoke_event.actor == ENFORCER and revoke_event.target == "user:alice"
    assert json.loads(revoke_event.details)["principals"] == [arn_of("alice")]
    w.assert_audit_ok()


def test_jump_straight_over_the_limit_marks_every_warning_and_only_announces_the_revocation(
        db: Database, clock: FixedClock, iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 3 * M)
    r = w.run()
    assert thresholds(r) == []  # one message, the revocation, not three
    assert len(r.breaches) == 1
    assert thresholds(w.run()) == [] and w.run().breaches == []  # 80 and 90 were marked
    assert_user_deny(w.policy("alice", "alice"))
    w.assert_audit_ok()


# ---------------------------------------------------------------- calendar rollover (Berlin week)


def _berlin_week_world(db: Database, iam: Any, week_start: int) -> tuple[World, int]:
    start = datetime(2026, 11, 29, 23, 30, tzinfo=BERLIN).astimezone(UTC)  # a Sunday night
    assert start == datetime(2026, 11, 29, 22, 30, tzinfo=UTC)
    w = make_world(db, FixedClock(start), iam)
    w.tz, w.week_start = BERLIN, week_start
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.WEEK)
    w.usage(meter, datetime(2026, 11, 29, 22, 0, tzinfo=UTC), 2 * M)
    return w, limit_id


def test_week_rollover_in_berlin_lifts_the_limit_revocation_at_local_monday_midnight(
        db: Database, iam: Any) -> None:
    w, limit_id = _berlin_week_world(db, iam, week_start=0)
    r = w.run()
    assert len(r.breaches) == 1
    rev = r.breaches[0].revocation
    assert rev.window_end == datetime(2026, 11, 30, 0, 0, tzinfo=BERLIN).astimezone(UTC)
    assert rev.window_end == datetime(2026, 11, 29, 23, 0, tzinfo=UTC)
    assert r.breaches[0].status.window_start == datetime(2026, 11, 22, 23, 0, tzinfo=UTC)
    assert_user_deny(w.policy("alice", "alice"))

    w.clock.advance(minutes=29)  # Sunday 23:59 Berlin: still the same week
    r = w.run()
    assert r.restored == [] and r.breaches == []
    assert_user_deny(w.policy("alice", "alice"))

    w.clock.advance(minutes=6)  # Monday 00:05 Berlin = 23:05 UTC
    assert w.clock().astimezone(BERLIN) == datetime(2026, 11, 30, 0, 5, tzinfo=BERLIN)
    r = w.run()
    assert [v.id for v in r.restored] == [rev.id]
    lifted = r.restored[0]
    assert (lifted.state, lifted.restored_by, lifted.reason) == ("restored", ENFORCER, "limit")
    assert r.breaches == []
    assert w.policy("alice", "alice") is None
    assert w.policies("alice") == []
    [row] = w.revocations()
    assert (row.state, row.restored_by, row.limit_id) == ("restored", ENFORCER, limit_id)
    assert row.restored_at == w.clock()
    [restore_event] = w.audit_events("access.restore")
    assert restore_event.actor == ENFORCER and restore_event.target == "user:alice"
    details = json.loads(restore_event.details)
    assert details["revocation"] == rev.id and details["principals"] == [arn_of("alice")]

    assert w.run().restored == []  # nothing left to lift
    w.assert_audit_ok()


def test_week_starting_sunday_has_its_boundary_at_sunday_midnight_not_monday(db: Database,
                                                                             iam: Any) -> None:
    w, _ = _berlin_week_world(db, iam, week_start=6)
    r = w.run()
    assert len(r.breaches) == 1
    rev = r.breaches[0].revocation
    # The Sunday-started week that holds Sunday 2026-11-29 runs to Sunday 2026-12-06 00:00 Berlin.
    assert r.breaches[0].status.window_start == datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    assert rev.window_end == datetime(2026, 12, 5, 23, 0, tzinfo=UTC)

    w.clock.advance(minutes=35)  # Monday 00:05 Berlin: no boundary for a Sunday week
    r = w.run()
    assert r.restored == [] and r.breaches == []
    assert_user_deny(w.policy("alice", "alice"))
    assert [x.state for x in w.revocations()] == ["active"]

    w.clock.at = datetime(2026, 12, 6, 0, 5, tzinfo=BERLIN).astimezone(UTC)  # the next Sunday
    r = w.run()
    assert [v.id for v in r.restored] == [rev.id]
    assert w.policy("alice", "alice") is None
    w.assert_audit_ok()


# ---------------------------------------------------------------- manual + limit revocations


def test_manual_revocation_survives_rollover_and_keeps_the_policy_until_lifted(db: Database,
                                                                               clock: FixedClock,
                                                                               iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY)
    manual = access_flow.revoke_manual(w.services, ADMIN, SubjectRef(name="alice"), "misuse")
    assert manual.reason == "manual" and manual.revoked_by == "slack:UADMIN01"
    assert_user_deny(w.policy("alice", "alice"))

    w.usage(meter, H0, 2 * M)
    r = w.run()
    assert len(r.breaches) == 1
    limit_rev = r.breaches[0].revocation
    with db.session_scope() as s:
        subject_id = directory.get(s, SubjectRef(name="alice")).id
        assert sorted(x.reason for x in access.active(s, subject_id)) == ["limit", "manual"]

    clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=UTC)  # next day: the limit's window rolled over
    r = w.run()
    assert [v.id for v in r.restored] == [limit_rev.id]
    assert r.restored[0].principals == ()  # the deny stayed: nothing was taken off
    assert_user_deny(w.policy("alice", "alice"))
    assert w.access.has_deny(arn_of("alice"), "alice")
    with db.session_scope() as s:
        [still] = access.active(s, subject_id)
        assert (still.id, still.reason) == (manual.id, "manual")
    restore_event = w.audit_events("access.restore")[-1]
    assert json.loads(restore_event.details)["still_revoked_by"] == [manual.id]

    clock.advance(days=3)  # enforce never lifts a manual revocation
    r = w.run()
    assert r.restored == []
    assert_user_deny(w.policy("alice", "alice"))

    views = access_flow.restore_manual(w.services, ADMIN, SubjectRef(name="alice"), "sorted out")
    assert [v.id for v in views] == [manual.id]
    assert views[0].principals == (arn_of("alice"),)
    assert w.policy("alice", "alice") is None
    assert w.policies("alice") == []
    assert [x.state for x in w.revocations()] == ["restored", "restored"]
    w.assert_audit_ok()


def test_lifting_the_manual_revocation_first_keeps_the_limit_deny(db: Database, clock: FixedClock,
                                                                   iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 2 * M)
    manual = access_flow.revoke_manual(w.services, ADMIN, SubjectRef(name="alice"), "")
    r = w.run()
    assert len(r.breaches) == 1
    view = access_flow.lift(w.services, ADMIN, manual.id, "manual lifted")
    assert view is not None
    assert view.state == "restored" and view.principals == ()
    assert_user_deny(w.policy("alice", "alice"))  # the limit revocation still holds it

    clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=UTC)
    r = w.run()
    assert [v.reason for v in r.restored] == ["limit"]
    assert w.policy("alice", "alice") is None
    w.assert_audit_ok()


# ---------------------------------------------------------------- rolling window


def test_rolling_24h_lifts_when_usage_slides_out_and_warnings_rearm(db: Database, clock: FixedClock,
                                                                   iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.H24)
    w.usage(meter, datetime(2026, 11, 25, 10, 0, tzinfo=UTC), 1_010_000)
    r = w.run()
    assert thresholds(r) == []  # the breach is announced alone
    assert len(r.breaches) == 1
    assert_user_deny(w.policy("alice", "alice"))

    clock.advance(hours=1)  # still inside the 24 hours
    r = w.run()
    assert r.restored == [] and r.breaches == [] and r.warnings == []

    clock.advance(hours=24)  # 25 h after the usage, none since
    r = w.run()
    assert [v.reason for v in r.restored] == ["limit"]
    assert r.restored[0].restored_by == ENFORCER
    assert r.breaches == [] and r.warnings == []
    assert w.policy("alice", "alice") is None
    with db.session_scope() as s:
        left = list(s.scalars(select(AlertMark.threshold).where(AlertMark.limit_id == limit_id)))
    assert left == []  # every mark re-armed: usage is at 0%

    w.usage(meter, datetime(2026, 11, 26, 11, 0, tzinfo=UTC), 850_000)
    r = w.run()
    assert thresholds(r) == [80]  # fires again on the next crossing
    assert r.breaches == []
    assert thresholds(w.run()) == []
    w.assert_audit_ok()


def test_rolling_warnings_rearm_only_the_thresholds_usage_fell_below(db: Database, clock: FixedClock,
                                                                     iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.H24)
    w.usage(meter, datetime(2026, 11, 25, 8, 0, tzinfo=UTC), 100_000)
    w.usage(meter, datetime(2026, 11, 25, 10, 0, tzinfo=UTC), 850_000)
    assert thresholds(w.run()) == [90]  # both marked, the highest announced

    clock.at = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)  # the 08:00 hour slid out: 85%
    r = w.run()
    assert r.warnings == [] and r.breaches == []

    w.usage(meter, datetime(2026, 11, 26, 9, 0, tzinfo=UTC), 100_000)  # back to 95%
    r = w.run()
    assert thresholds(r) == [90]  # 90 was re-armed, 80 never was
    w.assert_audit_ok()


# ---------------------------------------------------------------- notify, exceptions


def test_notify_limit_warns_at_100_percent_and_never_revokes(db: Database, clock: FixedClock,
                                                             iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY, action="notify")
    w.usage(meter, H0, M)
    r = w.run()
    assert thresholds(r) == [100]  # 80 and 90 are marked, only the highest is announced
    assert r.warnings[-1].status.used == M
    assert r.breaches == [] and r.suspended == []
    assert w.revocations() == []
    assert w.policies("alice") == []

    w.usage(meter, H0, 5 * M)
    r = w.run()
    assert r.warnings == [] and r.breaches == []  # the 100% warning fired once in this window
    assert w.revocations() == []
    assert w.policies("alice") == []
    w.assert_audit_ok()


def test_active_exception_suspends_revocation_until_it_expires(db: Database, clock: FixedClock,
                                                               iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.DAY)
    with db.session_scope() as s:
        s.add(LimitException(limit_id=limit_id, granted_by="slack:UADMIN01", created_at=clock(),
                             expires_at=clock() + timedelta(hours=2)))
    w.usage(meter, H0, 2 * M)

    r = w.run()
    assert [x.limit_id for x in r.suspended] == [limit_id]
    assert r.breaches == []
    assert w.revocations() == []
    assert w.policies("alice") == []

    clock.advance(hours=1, minutes=59)
    r = w.run()
    assert [x.limit_id for x in r.suspended] == [limit_id]
    assert r.breaches == []
    assert w.policies("alice") == []

    clock.advance(minutes=1)  # now == expires_at: the exception is over
    r = w.run()
    assert r.suspended == []
    assert len(r.breaches) == 1
    assert r.breaches[0].revocation.limit_id == limit_id
    assert_user_deny(w.policy("alice", "alice"))
    assert [x.state for x in w.revocations()] == ["active"]
    w.assert_audit_ok()


# ---------------------------------------------------------------- the limit itself changes


def test_raising_the_limit_above_usage_lifts_the_revocation(db: Database, clock: FixedClock,
                                                            iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 1_500_000)
    assert len(w.run().breaches) == 1
    assert_user_deny(w.policy("alice", "alice"))

    assert w.limit("alice", "1.2M", Window.DAY) == limit_id  # still over: stays revoked
    r = w.run()
    assert r.restored == [] and r.breaches == []
    assert_user_deny(w.policy("alice", "alice"))

    assert w.limit("alice", "2M", Window.DAY) == limit_id
    clock.advance(minutes=1)
    r = w.run()
    assert [v.limit_id for v in r.restored] == [limit_id]
    assert r.breaches == []
    assert w.policy("alice", "alice") is None
    assert [x.state for x in w.revocations()] == ["restored"]
    w.assert_audit_ok()


def test_removing_the_limit_lifts_the_revocation(db: Database, clock: FixedClock, iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 1_500_000)
    assert len(w.run().breaches) == 1
    assert_user_deny(w.policy("alice", "alice"))

    with db.session_scope() as s:
        removed = limits.remove_limits(s, clock, ADMIN, SubjectRef(name="alice"), None, None)
    assert [v.id for v in removed] == [limit_id]
    r = w.run()
    assert r.checked == 0
    assert len(r.restored) == 1 and r.restored[0].reason == "limit"
    assert w.policy("alice", "alice") is None
    [row] = w.revocations()
    assert row.state == "restored" and row.restored_by == ENFORCER
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Limit)) == 0
    assert w.run().restored == []
    w.assert_audit_ok()


# ---------------------------------------------------------------- dry run


def test_dry_run_records_the_breach_but_writes_no_policy(db: Database, clock: FixedClock, iam: Any) -> None:
    w = make_world(db, clock, iam, dry_run=True)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 2 * M)
    r = w.run()
    assert len(r.breaches) == 1
    rev = r.breaches[0].revocation
    assert rev.dry_run is True
    assert rev.principals == (arn_of("alice"),)
    assert w.policies("alice") == []
    assert [x.state for x in w.revocations()] == ["active"]
    [event] = w.audit_events("access.revoke")
    assert json.loads(event.details)["dry_run"] is True

    clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=UTC)
    r = w.run()
    assert len(r.restored) == 1 and r.restored[0].dry_run is True
    assert w.policies("alice") == []
    [restore] = w.audit_events("access.restore")
    assert json.loads(restore.details)["dry_run"] is True
    w.assert_audit_ok()


def test_dry_run_does_not_reassert_every_run(db: Database, clock: FixedClock, iam: Any) -> None:
    """Nothing was written in dry run, so there is nothing to put back: no "Deny policy put
    back" and no access.reassert row on the following runs (docs once said the opposite)."""
    w = make_world(db, clock, iam, dry_run=True)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 2 * M)
    assert len(w.run().breaches) == 1
    for _ in range(3):
        clock.advance(minutes=1)
        r = w.run()
        assert r.reasserted == [] and r.breaches == []
    assert w.audit_events("access.reassert") == [] and w.policies("alice") == []


# ---------------------------------------------------------------- team revocation


def test_team_breach_denies_all_inference_to_every_member(db: Database, clock: FixedClock, iam: Any) -> None:
    w = make_world(db, clock, iam)
    w.user("alice", "UALICE01")
    w.user("bob", "UBOB0001")
    team_aip, alice_aip = aip_arn("teameng00001"), aip_arn("alice0000001")
    with db.session_scope() as s:
        team, _ = directory.change_members(
            s, clock, ADMIN, "team-eng", "add",
            [SubjectRef(name="alice", slack_user_id="UALICE01"),
             SubjectRef(name="bob", slack_user_id="UBOB0001")])
        alice = directory.get(s, SubjectRef(name="alice"))
        meters = {}
        aips = ((team.id, team_aip, "teameng00001"), (alice.id, alice_aip, "alice0000001"))
        for subject_id, arn, pid in aips:
            s.add(Profile(arn=arn, profile_id=pid, name=f"p-{pid}",
                          model_source=f"arn:aws:bedrock:{REGION}::foundation-model/anthropic.claude-3-haiku",
                          model_id="anthropic.claude-3-haiku", tags={}, subject_id=subject_id,
                          created_by=ADMIN.label, created_at=clock()))
            meters[pid] = directory.ensure_meter(s, clock, "profile", pid, subject_id).id
    limit_id = w.limit("team-eng", "1M", Window.DAY)

    w.usage(meters["teameng00001"], H0, 600_000)
    r = w.run()
    assert r.breaches == [] and r.warnings == []  # 60%: the team's own AIP alone is under

    w.usage(meters["alice0000001"], H0, 500_000)  # a member's AIP counts for the team too
    r = w.run()
    assert thresholds(r) == []  # the breach is announced alone
    assert len(r.breaches) == 1
    rev = r.breaches[0].revocation
    assert r.breaches[0].status.used == 1_100_000
    assert rev.limit_id == limit_id and rev.subject.name == "team-eng"
    assert rev.affected_users == ("UALICE01", "UBOB0001")
    assert sorted(rev.principals) == [arn_of("alice"), arn_of("bob")]
    for user in ("alice", "bob"):
        doc = w.policy(user, "team-eng")
        assert doc is not None, user
        [stmt] = doc["Statement"]
        assert stmt["Effect"] == "Deny"
        # All inference, not only the team's AIPs: a member could otherwise call the
        # foundation model directly and the team limit would not limit the team (issue 14).
        assert stmt["Resource"] == "*"
        assert w.policies(user) == ["bedrock-bot-deny-team-eng"]  # the team's deny, not the user's
    with db.session_scope() as s:
        team = directory.get(s, SubjectRef(name="team-eng"))
        assert access.deny_resources(s, team) is None
        assert access.subject_aips(s, team) == sorted([team_aip, alice_aip])

    clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=UTC)
    r = w.run()
    assert [v.id for v in r.restored] == [rev.id]
    assert w.policies("alice") == [] and w.policies("bob") == []
    w.assert_audit_ok()


def test_admin_restore_while_over_is_not_undone_by_the_next_enforce(db: Database, clock: FixedClock,
                                                                     iam: Any) -> None:
    w = make_world(db, clock, iam)
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    limit_id = w.limit("alice", "1M", Window.DAY)
    w.usage(meter, H0, 2 * M)
    assert len(w.run().breaches) == 1
    [view] = access_flow.restore_manual(w.services, ADMIN, SubjectRef(name="alice"), "approved")
    assert view.restored_by == "slack:UADMIN01"
    assert w.policies("alice") == []

    clock.advance(hours=1)
    r = w.run()
    assert r.breaches == []
    assert [x.limit_id for x in r.suspended] == [limit_id]
    assert w.policies("alice") == []
    assert [x.state for x in w.revocations()] == ["restored"]

    clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=UTC)
    w.usage(meter, datetime(2026, 11, 26, 0, 0, tzinfo=UTC), 2 * M)  # over again, in a new window
    r = w.run()
    assert r.suspended == []
    assert len(r.breaches) == 1
    assert_user_deny(w.policy("alice", "alice"))
    w.assert_audit_ok()


def test_member_removed_from_a_revoked_team_loses_the_team_deny_on_lift(db: Database, clock: FixedClock,
                                                                        iam: Any) -> None:
    w = make_world(db, clock, iam)
    w.user("alice", "UALICE01")
    w.user("bob", "UBOB0001")
    with db.session_scope() as s:
        team, _ = directory.change_members(
            s, clock, ADMIN, "team-eng", "add",
            [SubjectRef(slack_user_id="UALICE01"), SubjectRef(slack_user_id="UBOB0001")])
        meter = directory.ensure_meter(s, clock, "profile", "teameng00001", team.id).id
    w.limit("team-eng", "1M", Window.DAY)
    w.usage(meter, H0, 2 * M)
    assert len(w.run().breaches) == 1
    assert w.policies("bob") == ["bedrock-bot-deny-team-eng"]
    with db.session_scope() as s:
        directory.change_members(s, clock, ADMIN, "team-eng", "remove",
                                 [SubjectRef(slack_user_id="UBOB0001")])

    clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=UTC)
    r = w.run()
    assert len(r.restored) == 1
    assert w.policies("alice") == []
    assert w.policies("bob") == []
    w.assert_audit_ok()


def test_half_hour_zone_rollover_does_not_count_the_straddling_hour_twice(db: Database,
                                                                          iam: Any) -> None:
    """A bucket counts in the window its start hour falls in: the 18:00 UTC bucket (23:30-00:30 in
    Kolkata) belongs to the day it starts in, so the next local day starts from zero."""
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+05:30: local midnight is hh:30 UTC
    w = make_world(db, FixedClock(datetime(2026, 11, 25, 23, 40, tzinfo=kolkata).astimezone(UTC)), iam)
    w.tz = kolkata
    meter = w.user("alice", "UALICE01", "aipid0000001")
    assert meter is not None
    w.limit("alice", "1M", Window.DAY)
    w.usage(meter, datetime(2026, 11, 25, 18, 0, tzinfo=UTC), 2 * M)  # 23:30-00:30 local
    assert len(w.run().breaches) == 1

    w.clock.at = datetime(2026, 11, 26, 0, 5, tzinfo=kolkata).astimezone(UTC)
    r = w.run()
    assert len(r.restored) == 1
    assert w.policies("alice") == []
    w.assert_audit_ok()
