"""usage_sync: the usage stream (when set), CloudWatch and invocation logs → ledger, every
BOT_SYNC_SECONDS; then enforce."""

from __future__ import annotations

from bot.flows import usage_sync
from bot.flows.runner import Outcome
from bot.runtime import Services
from bot.services.usage import SyncResult
from jobs import enforce

NAME = "usage_sync"


def run(services: Services, discover: bool = True, then_enforce: bool = True) -> Outcome[SyncResult]:
    """One sync; then enforce, so a breach is acted on in the same minute it is seen."""
    try:
        return usage_sync.run(services, discover)
    finally:
        # Whatever happened to the sync, the usage already in the ledger is enforced.
        if then_enforce:
            enforce.run(services)
