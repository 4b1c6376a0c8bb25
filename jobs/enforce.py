"""enforce: warnings, revocations and lifts for every limit (after each usage sync)."""

from __future__ import annotations

import logging

from bot import announce
from bot.execute import Outcome, execute
from bot.runtime import Services
from bot.services.enforce import ACTOR, EnforceResult, enforce

log = logging.getLogger(__name__)
NAME = "enforce"


def run(services: Services) -> Outcome[EnforceResult]:
    s = services
    out = execute(s.db, s.clock, ACTOR, NAME, "limits",
                  lambda session: enforce(session, s.clock, s.access, s.tz, s.week_start))
    if out.ok and out.value is not None:
        r = out.value
        announce.enforcement(s.notifier, s.settings.bot.alert_channel, s.tz, r)
        log.info("enforce: %d limits, %d warnings, %d revoked, %d restored", r.checked,
                 len(r.warnings), len(r.breaches), len(r.restored))
    else:
        log.warning("enforce failed: %s", out.message)
    return out
