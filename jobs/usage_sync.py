"""usage_sync: CloudWatch → ledger, every BOT_SYNC_SECONDS (then enforce runs).

With BOT_USAGE_STREAM set the stream is read first; the pollers then only count the hours
before the stream's handover hour, and a slow cross-check compares CloudWatch with what the
stream counted (docs/usage-stream.md).
"""

from __future__ import annotations

import logging
from datetime import datetime

from bot.execute import Outcome, execute
from bot.runtime import Services
from bot.services.directory import Actor
from bot.services.logs_usage import LogsSyncResult, sync_logs
from bot.services.usage import SyncResult, sync_usage
from jobs import enforce, usage_stream

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
    until = usage_stream.consume_for_sync(s) if s.settings.aws.usage_stream else usage_stream.forget(s)
    out = execute(s.db, s.clock, Actor.system(NAME), NAME, "usage", lambda session: sync_usage(
        session, s.clock, s.metrics, s.profiles, s.prices, discover=discover, until=until))
    if out.ok and out.value is not None:
        r = out.value
        log.info("usage_sync: %d active, %d backfilled, %d ledger rows, calls %s",
                 r.active, r.backfilled, r.rows, r.calls)
    else:
        log.warning("usage_sync failed: %s", out.message)
    if s.settings.aws.invocation_log_group:
        sync_invocation_logs(s, until)
    if s.settings.aws.usage_stream:
        usage_stream.cross_check(s)
    return out


def sync_invocation_logs(s: Services, until: datetime | None = None) -> Outcome[LogsSyncResult]:
    """Callers without an AIP, from model-invocation logs (its own cursor and transaction)."""
    aws = s.settings.aws
    out = execute(s.db, s.clock, Actor.system(NAME), f"{NAME}.logs", aws.invocation_log_group or "",
                  lambda session: sync_logs(session, s.clock, s.logs_insights,
                                            aws.invocation_log_group or "", aws.metadata_keys, s.prices,
                                            until=until))
    if out.ok and out.value is not None:
        r = out.value
        log.info("invocation logs: %s, %d ledger rows, %d unattributed requests", r.status,
                 r.ledger_rows, r.unattributed_requests)
    else:
        log.warning("invocation-log sync failed: %s", out.message)
    return out
