"""The daily bill reconciliation: Cost Explorer's billed Bedrock cost per subject and closed UTC
day beside the bot's estimate; a divergence over BOT_BILL_DIVERGENCE_PCT gets a likely cause.

How a bill is attributed, and what the bot's estimate is compared with (same scope both sides):

- ``tag:user`` / ``tag:team``: the AIP cost-allocation tags (`user=<name>`, `team=<name>`) →
  the subject's AIP meters. Cost Explorer sees a tag only once it is *activated* (from then on).
- ``principal-tag:<key>`` (optional, BOT_BILL_PRINCIPAL_TAG_KEY): an activated IAM-principal tag
  whose values are subject names → the subject's principal meters (invocation logs).
- ``account``: every Bedrock cost of the day → every meter.

Cost Explorer keeps refining a day for a while after it ends (AWS marks it Estimated), so the
last LOOKBACK_DAYS closed days are re-read every run and overwritten.

    call    Cost Explorer, no transaction open (`runner.call`: a refusal is audited)
    record  one short transaction: store every bill, compare, audit (`bill.reconcile`)
    tell    divergences to the alert channel, after the commit (bot/render/billing.py)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.cost_explorer import CostExplorer, DailyCosts
from bot.clock import Clock
from bot.db import Database
from bot.flows.runner import call, step
from bot.models import Subject
from bot.render.billing import divergence_alert, estimated_note, inactive_tags_note
from bot.runtime import Services
from bot.services import audit, billing
from bot.services.billing import DAY, BillComparison, Estimate, diverges
from bot.services.directory import Actor
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
NAME = "bill_reconcile"
ACTOR = Actor.system(NAME)
LOOKBACK_DAYS = 3
ALL_METERS = ("profile", "principal", "metadata")


@dataclass(frozen=True)
class Divergence:
    subject: str | None  # None: the whole account
    kind: str | None
    bill: BillComparison
    causes: list[str]


@dataclass(frozen=True)
class BillReport:
    days: list[date]
    stored: int
    divergences: list[Divergence] = field(default_factory=list)
    estimated_days: list[date] = field(default_factory=list)
    inactive_tags: list[str] = field(default_factory=list)  # keys no Bedrock cost carries
    calls: int = 0


def likely_causes(b: BillComparison, est: Estimate, tag_key: str | None, tag_active: bool) -> list[str]:
    """The likely reasons, most specific first (a heuristic: it says where to look)."""
    causes = []
    if est.unpriced_tokens:
        causes.append(f"unpriced model: {est.unpriced_tokens:,} tokens had no price in the bot's table")
    if tag_key is not None and not tag_active:
        causes.append(f"missing tag activation: no Bedrock cost carries the `{tag_key}` tag; activate "
                      "it as a cost-allocation tag (Billing console; it counts from activation on)")
        return causes
    if est.tokens and est.cache_tokens * 5 >= est.tokens:
        causes.append(f"cache tokens: {est.cache_tokens:,} of {est.tokens:,} tokens were cache reads/"
                      "writes, billed at their own rates (check the cache prices)")
    if b.billed_micro_usd > b.estimate_micro_usd:
        causes.append("untracked principal or AIP: Bedrock use billed here that the bot does not meter "
                      "(a principal not linked, an AIP not adopted, or calls without an AIP)")
    else:
        causes.append("the bot's prices are above the bill (a price cut, credits or discounts): "
                      "`bedrock-bot prices refresh`")
    return causes


def reconcile_bills(db: Database, clock: Clock, ce: CostExplorer, *, threshold_pct: float,
                    principal_tag_key: str | None = None, lookback: int = LOOKBACK_DAYS,
                    actor: Actor = ACTOR) -> BillReport:
    """Read (no transaction open while Cost Explorer answers), then store and compare."""
    now = clock()
    days = billing.closed_days(now, lookback)
    plan: list[tuple[str, str, tuple[str, ...], str | None]] = [
        ("user", "tag:user", ("profile",), "user"), ("team", "tag:team", ("profile",), "team")]
    if principal_tag_key:
        plan.append((principal_tag_key, f"principal-tag:{principal_tag_key}", ("principal",), None))
    costs = call(db, clock, actor, "bill.reconcile", "cost-explorer", lambda: {
        key: ce.daily_bedrock_costs(days[0], days[-1] + DAY, key) for key, *_ in plan})

    def record(session: Session) -> BillReport:
        divergences: list[Divergence] = []
        stored = 0
        subjects = {(kind, name): sid for sid, kind, name in
                    session.execute(select(Subject.id, Subject.kind, Subject.name)).tuples()}
        for key, basis, kinds, kind in plan:
            n, found = _subjects(session, clock, costs[key], days, subjects, basis, kinds, kind,
                                 threshold_pct)
            stored += n
            divergences += found
        n, found = _account(session, clock, costs["user"], days, threshold_pct)
        stored += n
        divergences += found
        estimated = sorted(set().union(*(c.estimated_days for c in costs.values())))
        inactive = [key for key, *_ in plan if not costs[key].tagged_values()]
        audit.record(session, clock, actor.label, "bill.reconcile", "cost-explorer",
                     {"days": [d.isoformat() for d in days], "stored": stored,
                      "divergent": [d.subject or "account" for d in divergences][:50],
                      "inactive_tags": inactive, "calls": ce.calls})
        return BillReport(days, stored, divergences, estimated, inactive, ce.calls)

    return step(db, clock, actor, "bill.reconcile", "cost-explorer", record)


def run(s: Services) -> BillReport:
    """The daily job: reconcile, then tell the alert channel what diverges (after the commit)."""
    threshold = s.settings.bot.bill_divergence_pct
    report = reconcile_bills(s.db, s.clock, s.cost_explorer, threshold_pct=threshold,
                             principal_tag_key=s.settings.bot.bill_principal_tag_key)
    log.info("bill reconcile: %d rows for %s, %d divergent, %d Cost Explorer calls", report.stored,
             ", ".join(d.isoformat() for d in report.days), len(report.divergences), report.calls)
    text = "\n\n".join(t for t in (
        divergence_alert(report.divergences, threshold),
        estimated_note(report.divergences, report.estimated_days),
        inactive_tags_note(report.inactive_tags)) if t)
    channel = s.settings.bot.alert_channel
    if text and channel:
        safe(s.notifier.post, channel, text, None)
    elif text:
        log.warning("bill divergences and no BOT_ALERT_CHANNEL: %s", text)
    return report


def _subjects(session: Session, clock: Clock, dc: DailyCosts, days: list[date],
              subjects: dict[tuple[str, str], int], basis: str, kinds: tuple[str, ...],
              kind: str | None, threshold_pct: float) -> tuple[int, list[Divergence]]:
    by_name = {name: (k, sid) for (k, name), sid in subjects.items() if kind is None or k == kind}
    active = bool(dc.tagged_values())
    rows: list[billing.DayRow] = []
    found = []
    for day in days:
        estimates = billing.estimates_by_subject(session, kinds, day)
        billed = {value: v for (d, value), v in dc.by_value.items() if d == day and value}
        for name, (k, sid) in sorted(by_name.items()):
            est = estimates.get(sid, Estimate())
            amount = billed.get(name, 0)
            if not amount and not est.micro_usd and not est.unpriced_tokens:
                continue
            rows.append(billing.DayRow(sid, day, basis, amount, est.micro_usd, est.unpriced_tokens))
            b = BillComparison(day, day, 1, basis, amount, est.micro_usd, est.unpriced_tokens)
            if diverges(b, threshold_pct):
                found.append(Divergence(name, k, b, likely_causes(b, est, dc.key, active)))
    return billing.store_days(session, clock, rows), found


def _account(session: Session, clock: Clock, dc: DailyCosts, days: list[date],
             threshold_pct: float) -> tuple[int, list[Divergence]]:
    found = []
    for day in days:
        est = billing.estimate(session, None, ALL_METERS, day)
        b = BillComparison(day, day, 1, "account", dc.total(day), est.micro_usd, est.unpriced_tokens)
        billing.store_day(session, clock, None, day, "account", b.billed_micro_usd, est.micro_usd,
                          est.unpriced_tokens)
        if diverges(b, threshold_pct):
            found.append(Divergence(None, None, b, likely_causes(b, est, None, True)))
    return len(days), found
