"""Enforce: evaluate every limit in one transaction, then act on IAM with none open.

1. evaluate (database only): warnings marked once per threshold and window, breaches and
   lifts decided;
2. lift finished revocations, put back incomplete denies (`reassert`), revoke the breaches —
   each through the access flow (its own short transactions around the IAM calls);
3. tell the alert channel and the people affected, after everything has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from bot.flows import access as access_flow
from bot.flows import tell
from bot.flows.runner import step
from bot.runtime import Services
from bot.services import enforce as rules
from bot.services.enforce import ACTOR, Breach, BreachPlan, EnforceResult, Evaluation

log = logging.getLogger(__name__)


def run(s: Services, announce: bool = True, only: Collection[int] | None = None) -> EnforceResult:
    """Every limit; or, with `only`, just those limits' warnings and breaches (no lifts and no
    reassert: the full run after each sync does those) — what the usage stream runs when pushed
    usage reaches limited subjects (bot/flows/usage_stream_loop.py)."""
    ev: Evaluation = step(s.db, s.clock, ACTOR, "enforce", "limits",
                          lambda session: rules.evaluate(session, s.clock, s.tz, s.week_start, only))
    result = EnforceResult(ev.checked, ev.warnings, ev.graces, suspended=ev.suspended)
    for lift in ev.lifts:
        view = access_flow.lift(s, ACTOR, lift.revocation_id, lift.why)
        if view is not None:
            result.restored.append(view)
    if only is None:
        result.reasserted = access_flow.reassert(s)
    for plan in ev.breaches:
        breach = _revoke(s, plan)
        if breach is not None:
            result.breaches.append(breach)
    if announce:
        tell.enforcement(s.notifier, s.settings.bot.alert_channel, s.tz, result)
    log.info("enforce: %d limits, %d warnings, %d revoked, %d restored", result.checked,
             len(result.warnings), len(result.breaches), len(result.restored))
    return result


def _revoke(s: Services, plan: BreachPlan) -> Breach | None:
    status = plan.status
    view = access_flow.revoke_automatic(
        s, ACTOR, plan.subject_id, "limit", plan.note, status.limit_id,
        (status.window_start, status.window_end),
        still_wanted=lambda session: rules.still_breached(session, s.clock, status.limit_id, status.amount))
    return Breach(status, view) if view is not None else None
