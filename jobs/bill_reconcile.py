"""bill_reconcile: Cost Explorer's billed Bedrock cost for the last closed UTC days vs the bot's
estimate, daily; divergences over BOT_BILL_DIVERGENCE_PCT go to the alert channel."""

from __future__ import annotations

import logging

from bot.flows import bill_reconcile
from bot.flows.bill_reconcile import NAME, BillReport
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services

log = logging.getLogger(__name__)
__all__ = ["NAME", "run"]
CADENCE_HOURS = 24  # Cost Explorer refreshes a few times a day; a day settles over ~24-48 h


def run(services: Services) -> Outcome[BillReport]:
    out = attempt(lambda: bill_reconcile.run(services))
    if not out.ok:
        log.warning("bill reconciliation failed: %s", out.message)
    return out
