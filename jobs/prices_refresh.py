"""prices_refresh: AWS Price List → `model_prices`, daily (the shipped table stays the fallback)."""

from __future__ import annotations

import logging

from bot.errors import AwsError
from bot.pricing_refresh import RefreshReport, refresh, report_lines
from bot.runtime import Services

log = logging.getLogger(__name__)
NAME = "prices_refresh"
CADENCE_HOURS = 24  # AWS publishes price changes at most a few times a month


def run(services: Services) -> RefreshReport | None:
    s = services
    try:
        report = refresh(s.db, s.clock, s.price_list, s.settings.aws.region, s.prices)
    except AwsError as exc:
        log.warning("prices refresh failed, keeping the prices in use: %s", exc)
        return None
    for line in report_lines(report):
        log.info("prices refresh: %s", line)
    s.reload_prices()
    return report
