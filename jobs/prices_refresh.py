"""prices_refresh: AWS Price List → `model_prices`, daily (the shipped table stays the fallback)."""

from __future__ import annotations

import logging

from bot.flows import prices
from bot.flows.prices import NAME, RefreshReport
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services

log = logging.getLogger(__name__)
__all__ = ["NAME", "run"]
CADENCE_HOURS = 24  # AWS publishes price changes at most a few times a month


def run(services: Services) -> Outcome[RefreshReport]:
    out = attempt(lambda: prices.run(services))
    if not out.ok:
        log.warning("prices refresh failed, keeping the prices in use: %s", out.message)
    return out
