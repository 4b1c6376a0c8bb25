"""Usage sync: CloudWatch metrics and model-invocation logs into the ledger.

Each reader is plan → call → record, so no transaction (no SQLite writer lock, no row lock)
is open while AWS answers:

    CloudWatch   plan_sync (cursor, known profiles, which are due: bot/services/poll_cadence.py)
                 → ListInferenceProfiles + tags of unknown AIPs, ListMetrics, GetMetricData
                 (AWS/Bedrock; AWS/BedrockMantle for linked mantle projects) → adopt tagged
                 AIPs, upsert hours, read marks, advance the cursor (bot/services/usage.py,
                 bot/services/profiles.py)
    logs         plan_logs (cursor, window) → StartQuery + polled GetQueryResults →
                 attribute, overwrite the hours, advance the cursor (bot/services/logs_usage.py)

A failure anywhere writes nothing of that reader and leaves its cursor, so the next sync
reads the same hours again; the failing step is audited (`runner.step` / `runner.call`).

With BOT_USAGE_STREAM set the stream is read first (bot/flows/usage_stream.py); both pollers
then only count the hours before the stream's handover hour (`until`), and an hourly
cross-check compares CloudWatch with what the stream counted (docs/usage-stream.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from bot.aws.logs import LogsInsights
from bot.aws.metrics import CloudWatchMetrics
from bot.aws.profiles import ProfilesBackend
from bot.clock import Clock
from bot.db import Database
from bot.flows import usage_stream
from bot.flows.runner import Outcome, attempt, call, step
from bot.pricing import PriceTable
from bot.runtime import Services
from bot.services import logs_usage, profiles, usage
from bot.services.directory import Actor
from bot.services.logs_usage import MAX_HOURS, LogsSyncResult
from bot.services.poll_cadence import Cadence
from bot.services.profiles import Tagged
from bot.services.usage import Readings, SyncResult

log = logging.getLogger(__name__)
NAME = "usage_sync"
ACTOR = Actor.system(NAME)


def run(s: Services, discover: bool = True) -> Outcome[SyncResult]:
    """The CloudWatch sync, then the invocation logs when a log group is configured (each
    with its own cursor: one failing does not stop the other), the stream first when set."""
    streaming = bool(s.settings.aws.usage_stream)
    until: datetime | None = None
    if streaming:
        until = usage_stream.consume_for_sync(s)
    else:
        usage_stream.forget(s)
    out = attempt(lambda: sync_usage(s.db, s.clock, s.metrics, s.profiles, s.prices,
                                     discover=discover, until=until, cadence=cadence_of(s)))
    if out.ok:
        r = out.value
        log.info("usage_sync: %d active, %d skipped (adaptive), %d backfilled, %d ledger rows "
                 "(%d mantle), calls %s, %d metrics requested", r.active, r.skipped, r.backfilled,
                 r.rows, r.mantle_rows, r.calls, r.metrics_requested)
    else:
        log.warning("usage_sync failed: %s", out.message)
    if s.settings.aws.invocation_log_group:
        run_logs(s, until)
    if streaming:
        usage_stream.cross_check(s)
    return out


def run_logs(s: Services, until: datetime | None = None) -> Outcome[LogsSyncResult]:
    """Callers without an AIP, from model-invocation logs (hours before `until` only)."""
    aws = s.settings.aws
    group = aws.invocation_log_group or ""
    out = attempt(lambda: sync_logs(s.db, s.clock, s.logs_insights, group, aws.metadata_keys, s.prices,
                                    gateway_principals=s.settings.bot.gateway_principals, until=until))
    if out.ok:
        r = out.value
        log.info("invocation logs: %s, %d ledger rows, %d unattributed requests", r.status,
                 r.ledger_rows, r.unattributed_requests)
    else:
        log.warning("invocation-log sync failed: %s", out.message)
    return out


def cadence_of(s: Services) -> Cadence | None:
    """Adaptive polling settings, or None when BOT_SYNC_ADAPTIVE is off (every profile, every sync)."""
    bot = s.settings.bot
    if not bot.sync_adaptive:
        return None
    return Cadence(bot.sync_seconds, bot.sync_idle_seconds, bot.enforce_target_seconds,
                   bot.default_tpm, dict(bot.model_tpm), s.tz, s.week_start, s.prices)


def sync_usage(db: Database, clock: Clock, metrics: CloudWatchMetrics,
               backend: ProfilesBackend | None, prices: PriceTable,
               discover: bool = True, until: datetime | None = None,
               cadence: Cadence | None = None) -> SyncResult:
    """Read the current and previous hour (or since the last sync) into the ledger; a
    profile never synced before, adopted ones included, is backfilled from the start of
    the previous month. With `cadence`, profiles and mantle projects far from every limit are
    read less often, each from its own mark (docs/usage-sync.md)."""
    plan = step(db, clock, ACTOR, NAME, "usage",
                lambda session: usage.plan_sync(session, clock, until, cadence))

    def read() -> tuple[list[Tagged], Readings]:
        found = profiles.find_tagged(backend, plan.known_arns) if (discover and backend) else []
        return found, usage.read_metrics(plan, metrics, [f.info.id for f in found])

    found, readings = call(db, clock, ACTOR, NAME, "usage", read)

    def record(session: Session) -> SyncResult:
        adopted = profiles.adopt(session, clock, found)
        return usage.record_sync(session, clock, plan, readings, prices, adopted=len(adopted))

    return step(db, clock, ACTOR, NAME, "usage", record)


def sync_logs(db: Database, clock: Clock, insights: LogsInsights, log_group: str,
              metadata_keys: Sequence[str], prices: PriceTable, *,
              min_interval: timedelta = timedelta(0), max_hours: int = MAX_HOURS,
              gateway_principals: Sequence[str] = (), until: datetime | None = None) -> LogsSyncResult:
    """Read the unsynced whole hours of the invocation logs into the ledger (before `until`);
    calls made by `gateway_principals` are skipped (the gateway reports them through /v1/usage)."""
    action = f"{NAME}.logs"
    plan = step(db, clock, ACTOR, action, log_group, lambda session: logs_usage.plan_logs(
        session, clock, metadata_keys, min_interval=min_interval, max_hours=max_hours,
        gateway_principals=gateway_principals, until=until))
    if plan.skip:
        return plan.skipped()
    read = call(db, clock, ACTOR, action, log_group,
                lambda: logs_usage.query_logs(plan, insights, log_group))
    if read.rows is None:
        return read.pending(plan)
    return step(db, clock, ACTOR, action, log_group,
                lambda session: logs_usage.record_logs(session, clock, plan, read, prices))
