"""bill_reconcile: Cost Explorer's billed Bedrock cost for the last closed UTC days vs the bot's
estimate, daily; divergences over BOT_BILL_DIVERGENCE_PCT go to the alert channel."""

from __future__ import annotations

import logging

from bot.bill_reconcile import BillReport, reconcile_bills
from bot.errors import AwsError
from bot.render.billing import divergence_alert, inactive_tags_note
from bot.runtime import Services
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
NAME = "bill_reconcile"
CADENCE_HOURS = 24  # Cost Explorer refreshes a few times a day; a day settles over ~24-48 h


def estimated_note(report: BillReport) -> str | None:
    """Cost Explorer still refines these days: a divergence on them may shrink tomorrow."""
    days = sorted({d.bill.first_day for d in report.divergences} & set(report.estimated_days))
    if not days:
        return None
    return ("AWS still marks " + ", ".join(d.isoformat() for d in days)
            + " as Estimated: the bill may change; the bot reads it again tomorrow.")


def run(services: Services) -> BillReport | None:
    s = services
    threshold = s.settings.bot.bill_divergence_pct
    try:
        report = reconcile_bills(s.db, s.clock, s.cost_explorer, threshold_pct=threshold,
                                 principal_tag_key=s.settings.bot.bill_principal_tag_key)
    except AwsError as exc:
        log.warning("bill reconciliation failed: %s", exc)
        return None
    log.info("bill reconcile: %d rows for %s, %d divergent, %d Cost Explorer calls", report.stored,
             ", ".join(d.isoformat() for d in report.days), len(report.divergences), report.calls)
    text = "\n\n".join(t for t in (divergence_alert(report.divergences, threshold),
                                   estimated_note(report), inactive_tags_note(report.inactive_tags))
                         if t)
    channel = s.settings.bot.alert_channel
    if text and channel:
        safe(s.notifier.post, channel, text, None)
    elif text:
        log.warning("bill divergences and no BOT_ALERT_CHANNEL: %s", text)
    return report
