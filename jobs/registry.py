"""Job name → one run. `bedrock-bot run-job <name>` and the scheduler use the same table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.runtime import Services
from jobs import (
    audit_checkpoint,
    bill_reconcile,
    daily_digest,
    enforce,
    expire_requests,
    flush_outbox,
    prices_refresh,
    reconcile,
    usage_stream,
    usage_sync,
)

JOBS: dict[str, Callable[[Services], Any]] = {
    usage_sync.NAME: usage_sync.run,
    enforce.NAME: enforce.run,
    expire_requests.NAME: expire_requests.run,
    reconcile.NAME: reconcile.run,
    flush_outbox.NAME: flush_outbox.run,
    daily_digest.NAME: daily_digest.run,
    prices_refresh.NAME: prices_refresh.run,
    bill_reconcile.NAME: bill_reconcile.run,
    audit_checkpoint.NAME: audit_checkpoint.run,
    usage_stream.NAME: usage_stream.run,  # one pass over BOT_USAGE_STREAM (usage_sync reads it too)
}
