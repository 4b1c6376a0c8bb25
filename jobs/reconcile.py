"""reconcile: database vs AWS (deny policies, AIPs), hourly; drift fixed and reported."""

from __future__ import annotations

import logging

from bot.execute import Outcome, execute
from bot.render.reconcile import reconcile_message
from bot.runtime import Services
from bot.services.reconcile import ACTOR, ReconcileReport, reconcile
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
NAME = "reconcile"


def run(services: Services) -> Outcome[ReconcileReport]:
    s = services
    out = execute(s.db, s.clock, ACTOR, NAME, "aws",
                  lambda session: reconcile(session, s.clock, s.access, s.profiles))
    if not out.ok or out.value is None:
        log.warning("reconcile failed: %s", out.message)
        return out
    report = out.value
    log.info("reconcile: %d revoked subjects, %d principals, %d AIPs listed, %d drifts (%d failed)",
             report.revoked_subjects, report.principals_checked, report.profiles_listed,
             len(report.drifts), len(report.failures))
    message = reconcile_message(report)  # after the commit: the drifts are in the audit log
    channel = s.settings.bot.alert_channel
    if message is not None:
        if channel:
            safe(s.notifier.post, channel, message[0], message[1])
        else:
            log.warning("reconcile found %d drifts and no BOT_ALERT_CHANNEL is set", len(report.drifts))
    return out
