"""reconcile: database vs AWS (deny policies, AIPs), hourly; drift fixed and reported."""

from __future__ import annotations

import logging

from bot.flows import reconcile
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services
from bot.services.reconcile import ReconcileReport

log = logging.getLogger(__name__)
NAME = "reconcile"


def run(services: Services) -> Outcome[ReconcileReport]:
    out = attempt(lambda: reconcile.run(services))
    if not out.ok:
        log.warning("reconcile failed: %s", out.message)
    return out
