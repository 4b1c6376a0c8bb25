"""The bill reconciliation on both databases: Cost Explorer (botocore Stubber: moto's results are
not the API's grouping) → billed cost per subject and closed UTC day → compared with the ledger;
`/bedrock usage` for a closed day and the digest show it; divergences carry a likely cause."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import pytest
from botocore.stub import Stubber
from sqlalchemy import select

from bot.aws.cost_explorer import CostExplorer, request
from bot.clock import FixedClock
from bot.db import Database
from bot.flows.bill_reconcile import BillReport, reconcile_bills
from bot.models import BilledCost, Subject
from bot.render.billing import bill_line, divergence_alert
from bot.render.digest import digest_blocks
from bot.render.usage import usage_blocks
from bot.services import directory, ledger
from bot.services.digest import build_digest
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import LedgerRow
from bot.services.usage import report

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"
ADMIN = Actor.slack("UADMIN01")
UTC_TZ = ZoneInfo("UTC")
D22, D24 = date(2026, 11, 22), date(2026, 11, 25 - 1)
NOV24 = datetime(2026, 11, 24, 15, tzinfo=UTC)


def vector(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


def ce_client(user: dict[str, Any] | None = None, team: dict[str, Any] | None = None) -> Any:
    client = boto3.client("ce", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_response("get_cost_and_usage", user or vector("ce-getcostandusage-bedrock-by-user.json"),
                      request(D22, date(2026, 11, 25), "user"))
    stub.add_response("get_cost_and_usage", team or vector("ce-getcostandusage-bedrock-by-team.json"),
                      request(D22, date(2026, 11, 25), "team"))
    stub.activate()
    return client


def seed(db: Database, clock: FixedClock, unpriced_alice: int = 0) -> None:
    """Nov 24: alice's AIP $1.00, bob's AIP $2.00, team-eng's AIP $0.50 (the bot's estimates)."""
    with db.session_scope() as s:
        directory.bootstrap_admins(s, clock, ["UADMIN01"])
        rows = []
        for name, cost, kind in (("alice", 1_000_000, "user"), ("bob", 2_000_000, "user"),
                                 ("team-eng", 500_000, "team")):
            ref = SubjectRef(name=name, slack_user_id=f"U{name.upper()[:6]}01" if kind == "user" else None)
            subj = (directory.ensure_user(s, clock, ADMIN, ref) if kind == "user"
                    else directory.ensure_team(s, clock, ADMIN, name))
            m = directory.ensure_meter(s, clock, "profile", f"{name}-aip", subj.id)
            flagged = unpriced_alice if name == "alice" else 0
            rows.append(LedgerRow(m.id, NOV24, 10_000, 2_000, 0, 0, 5, cost, flagged, 1 if flagged else 0))
        ledger.upsert(s, rows, clock())


def run(db: Database, clock: FixedClock, client: Any, threshold: float = 10.0) -> BillReport:
    return reconcile_bills(db, clock, CostExplorer(client), threshold_pct=threshold)


def billed(db: Database) -> dict[tuple[str | None, str, str], tuple[int, int]]:
    with db.session_scope() as s:
        q = select(Subject.name, BilledCost).outerjoin(Subject, Subject.id == BilledCost.subject_id)
        return {(name, b.day, b.basis): (b.billed_micro_usd, b.estimate_micro_usd)
                for name, b in s.execute(q).tuples()}


def test_bills_are_stored_per_subject_and_day_beside_the_estimate(db: Database, clock: FixedClock) -> None:
    seed(db, clock)
    result = run(db, clock, ce_client())
    assert result.days == [date(2026, 11, 22), date(2026, 11, 23), D24]
    assert result.estimated_days == [D24] and result.inactive_tags == [] and result.calls == 2
    assert billed(db) == {
        ("alice", "2026-11-23", "tag:user"): (400_000, 0),  # billed with no AIP usage the bot saw
        ("alice", "2026-11-24", "tag:user"): (1_020_000, 1_000_000),
        ("bob", "2026-11-24", "tag:user"): (3_000_000, 2_000_000),  # his Claude (Marketplace) bill
        ("team-eng", "2026-11-24", "tag:team"): (500_000, 500_000),
        (None, "2026-11-22", "account"): (0, 0),
        (None, "2026-11-23", "account"): (400_000, 0),
        (None, "2026-11-24", "account"): (4_320_000, 3_500_000),
    }
    again = run(db, clock, ce_client())  # re-reading the same days overwrites, never adds
    assert again.stored == result.stored and len(billed(db)) == 7


def test_divergences_over_the_threshold_name_a_likely_cause(db: Database, clock: FixedClock) -> None:
    seed(db, clock)
    result = run(db, clock, ce_client())
    found = {(d.subject, d.bill.first_day): d for d in result.divergences}
    nov23 = date(2026, 11, 23)
    assert set(found) == {("alice", nov23), ("bob", D24), (None, nov23), (None, D24)}
    assert "untracked principal or AIP" in found[("bob", D24)].causes[0]
    assert ("alice", D24) not in found  # +2%: within 10%
    text = divergence_alert(result.divergences, 10.0)
    assert text is not None and "off by more than 10%" in text
    assert "AWS billed $3.00 (estimate $2.00, +50%) for 2026-11-24 UTC" in text
    # at 60%: bob's +50% and the account's +23% pass; a bill with no estimate at all never does
    loose = run(db, clock, ce_client(), threshold=60).divergences
    assert {(d.subject, d.bill.first_day) for d in loose} == {("alice", date(2026, 11, 23)),
                                                            (None, date(2026, 11, 23))}


def test_unpriced_usage_is_the_first_cause(db: Database, clock: FixedClock) -> None:
    seed(db, clock, unpriced_alice=9_000)
    user = vector("ce-getcostandusage-bedrock-by-user.json")
    user["ResultsByTime"][2]["Groups"][1]["Metrics"]["UnblendedCost"]["Amount"] = "3.5"
    result = run(db, clock, ce_client(user=user))
    alice = next(d for d in result.divergences if d.subject == "alice" and d.bill.first_day == D24)
    assert alice.causes[0].startswith("unpriced model: 9,000 tokens")


def test_no_tagged_cost_at_all_means_the_tags_are_not_activated(db: Database, clock: FixedClock) -> None:
    seed(db, clock)
    untagged: dict[str, Any] = vector("ce-getcostandusage-bedrock-by-user.json")
    for day in untagged["ResultsByTime"]:
        day["Groups"] = [{"Keys": ["Amazon Bedrock", "user$"],
                          "Metrics": {"UnblendedCost": {"Amount": "3.5", "Unit": "USD"}}}]
    team: dict[str, Any] = vector("ce-getcostandusage-bedrock-by-team.json")
    for day in team["ResultsByTime"]:
        day["Groups"] = []
    result = run(db, clock, ce_client(untagged, team))
    assert result.inactive_tags == ["user", "team"]
    alice = next(d for d in result.divergences if d.subject == "alice")
    assert alice.bill.billed_micro_usd == 0 and "missing tag activation" in alice.causes[0]


def test_usage_for_a_closed_day_and_the_digest_show_the_bill(db: Database, clock: FixedClock) -> None:
    seed(db, clock)
    run(db, clock, ce_client())
    with db.session_scope() as s:
        r = report(s, clock, UTC_TZ, 0, ADMIN, SubjectRef(name="bob"), "yesterday")
        today = report(s, clock, UTC_TZ, 0, ADMIN, SubjectRef(name="bob"), "today")
        data = build_digest(s, clock(), UTC_TZ, 0)
    assert r.bill is not None and bill_line(r.bill) == (
        "AWS billed $3.00 (estimate $2.00, +50%) for 2026-11-24 UTC")
    assert "AWS billed $3.00 (estimate $2.00, +50%)" in str(usage_blocks(r, UTC_TZ))
    assert today.bill is None  # today has not closed
    assert data.bill is not None and data.bill.account.first_day == D24
    assert [name for name, _ in data.bill.divergent] == ["bob"]
    _, blocks = digest_blocks(data, UTC_TZ)
    assert "AWS billed $4.32 (estimate $3.50, +23%) for 2026-11-24 UTC" in str(blocks)


def test_a_local_day_straddling_two_utc_days_shows_no_bill(db: Database, clock: FixedClock) -> None:
    seed(db, clock)
    run(db, clock, ce_client())
    with db.session_scope() as s:
        r = report(s, clock, ZoneInfo("America/New_York"), 0, ADMIN, SubjectRef(name="bob"), "yesterday")
    assert r.bill is None  # Nov 24 in New York is not a whole UTC day: no misleading figure


def test_the_job_posts_divergences_to_the_alert_channel(db: Database, clock: FixedClock,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.config import load_settings
    from bot.runtime import build_services
    from jobs import bill_reconcile, registry

    seed(db, clock)
    posted: list[tuple[str, str]] = []

    class Recorder:
        def post(self, channel: str, text: str, blocks: Any = None) -> str:
            posted.append((channel, text))
            return "1.0"

    settings = load_settings(None, DATABASE_URL=str(db.engine.url.render_as_string(hide_password=False)),
                             BOT_ALERT_CHANNEL="CALERTS", BOT_BILL_DIVERGENCE_PCT="40")
    services = build_services(settings, clock, Recorder(), ce=ce_client())  # type: ignore[arg-type]
    services.db = db
    assert registry.JOBS["bill_reconcile"] is bill_reconcile.run
    result = bill_reconcile.run(services)
    assert result.ok and result.value.divergences
    assert [c for c, _ in posted] == ["CALERTS"]
    assert "off by more than 40%" in posted[0][1] and "bob" in posted[0][1]
    assert "AWS still marks 2026-11-24 as Estimated" in posted[0][1]
