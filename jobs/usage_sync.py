"""usage_sync: CloudWatch → ledger, every BOT_SYNC_SECONDS (then enforce runs)."""

from __future__ import annotations

import logging

from bot.execute import Outcome, execute
from bot.runtime import Services
from bot.services.directory import Actor
from bot.services.logs_usage import LogsSyncResult, sync_logs
from bot.services.usage import SyncResult, sync_usage
from jobs import enforce

log = logging.getLogger(__name__)
NAME = "usage_sync"


def run(services: Services, discover: bool = True, then_enforce: bool = True) -> Outcome[SyncResult]:
    """One sync; then enforce, so a breach is acted on in the same minute it is seen."""
    s = services
    try:
        return _sync(s, discover)
    finally:
        # Whatever happened to the sync, the usage already in the ledger is enforced.
        if then_enforce:
            enforce.run(services)


def _sync(s: Services, discover: bool) -> Outcome[SyncResult]:
    out = execute(s.db, s.clock, Actor.system(NAME), NAME, "usage", lambda session: sync_usage(
        session, s.clock, s.metrics, s.profiles, s.prices, discover=discover))
    if out.ok and out.value is not None:
        r = out.value
        log.info("usage_sync: %d active, %d backfilled, %d ledger rows, calls %s",
                 r.active, r.backfilled, r.rows, r.calls)
    else:
        log.warning("usage_sync failed: %s", out.message)
    if s.settings.aws.invocation_log_group:
        sync_invocation_logs(s)
    return out


def sync_invocation_logs(s: Services) -> Outcome[LogsSyncResult]:
    """Callers without an AIP, from model-invocation logs (its own cursor and transaction)."""
    aws = s.settings.aws
    out = execute(s.db, s.clock, Actor.system(NAME), f"{NAME}.logs", aws.invocation_log_group or "",
                  lambda session: sync_logs(session, s.clock, s.logs_insights,
                                            aws.invocation_log_group or "", aws.metadata_keys, s.prices,
                                            gateway_principals=s.settings.bot.gateway_principals))
    if out.ok and out.value is not None:
        r = out.value
        log.info("invocation logs: %s, %d ledger rows, %d unattributed requests", r.status,
                 r.ledger_rows, r.unattributed_requests)
    else:
        log.warning("invocation-log sync failed: %s", out.message)
    return out
