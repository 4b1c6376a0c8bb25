"""The usage stream's cross-check: CloudWatch's hourly AIP sums against what the stream counted.

With the stream set, CloudWatch no longer counts anything; once an hour (an hour is checked
`SETTLE` after it closed, so late metrics and late log deliveries are in) the bot reads that hour's
`AWS/Bedrock` sums for at most `MAX_PROFILES` AIPs and compares them, field by field, with the
ledger rows of their ``profile`` meters. A difference above the threshold is reported (returned,
logged and audited as ``usage.divergence``); nothing is corrected — the stream stays the source of
truth, and a divergence says that something upstream (the subscription filter, the stream, the
consumer) needs a look.

Which AIPs: those CloudWatch lists as active (ListMetrics is free) but that the ledger has nothing
for in that hour come first — the signature of a broken subscription — then the busiest in the
ledger. At 5 metrics each, a check reads at most 100 metrics: about $0.73 a month whatever the
number of users (GetMetricData bills per metric requested). A sample is enough for what it is for:
when the subscription or the stream breaks, every active AIP goes missing at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.metrics import ALL_METRICS, CloudWatchMetrics, HourlyUsage
from bot.clock import Clock
from bot.models import Meter, Subject, SyncCursor, Usage
from bot.services import audit, stream_usage
from bot.services.ledger import HOUR, floor_hour

log = logging.getLogger(__name__)

CURSOR = "usage_stream_check"
SETTLE = timedelta(minutes=15)
MAX_PROFILES = 20  # x 5 metrics x 730 checks a month = 73k metrics: $0.73 at $0.01 per 1,000
RELATIVE = 0.05  # a field diverges when it differs by more than 5 % of the larger value
MIN_TOKENS = 5_000  # … and by more than this many tokens (requests: MIN_REQUESTS)
MIN_REQUESTS = 5
SHOWN = 20
_FIELDS = (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
           ("cache_read_tokens", "cache_read_tokens"), ("cache_write_tokens", "cache_write_tokens"),
           ("requests", "invocations"))


@dataclass(frozen=True)
class Divergence:
    profile_id: str
    subject: str | None
    field: str  # a ledger column
    ledger: int
    cloudwatch: int


@dataclass(frozen=True)
class CrossCheckResult:
    status: str  # checked | not-due | no-stream
    hour: datetime | None = None
    profiles: int = 0
    divergences: tuple[Divergence, ...] = ()
    calls: dict[str, int] = field(default_factory=dict)


def due_hour(session: Session, now: datetime) -> datetime | None:
    """The hour to check now, or None: none closed `SETTLE` ago since the last check, or the
    stream does not count it yet."""
    start = stream_usage.handover(session)
    hour = floor_hour(now - SETTLE) - HOUR
    if start is None or hour < start:
        return None
    cur = session.get(SyncCursor, CURSOR)
    return None if cur is not None and cur.position >= hour else hour


@dataclass(frozen=True)
class LedgerRow:
    """The ledger's counts of one AIP for the checked hour (plain data, read in the plan)."""

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    requests: int


@dataclass(frozen=True)
class CheckPlan:
    now: datetime
    hour: datetime
    counted: dict[str, tuple[LedgerRow, str | None]]  # AIP id → (its row, its subject's name)


@dataclass(frozen=True)
class CheckRead:
    chosen: list[str]
    readings: list[HourlyUsage]
    calls: dict[str, int]


def plan_check(session: Session, clock: Clock) -> CheckPlan | CrossCheckResult:
    """The due hour and the ledger's counts for it, or why there is nothing to check."""
    now = clock()
    if stream_usage.handover(session) is None:
        return CrossCheckResult("no-stream")
    hour = due_hour(session, now)
    if hour is None:
        return CrossCheckResult("not-due")
    return CheckPlan(now, hour, _ledger_hour(session, hour))


def read_check(plan: CheckPlan, metrics: CloudWatchMetrics, *,
               max_profiles: int = MAX_PROFILES) -> CheckRead:
    """CloudWatch's sums for the chosen AIPs (see module doc); no session: no transaction open."""
    before = Counter(metrics.calls)
    counted = plan.counted
    active = metrics.active_model_ids(recently_active=True)
    missing = sorted(pid for pid in active if pid not in counted)
    busiest = sorted(counted, key=lambda pid: (-_tokens(counted[pid][0]), pid))
    chosen = list(dict.fromkeys([*missing, *busiest]))[:max(0, max_profiles)]
    hour = plan.hour
    readings = metrics.hourly({pid: ALL_METRICS for pid in chosen}, hour, hour + HOUR) if chosen else []
    return CheckRead(chosen, readings, dict(Counter(metrics.calls) - before))


def record_check(session: Session, clock: Clock, plan: CheckPlan, read: CheckRead) -> CrossCheckResult:
    """Compare, advance the check's cursor, audit a divergence (`usage.divergence`)."""
    hour = plan.hour
    seen = {r.model_id: r for r in read.readings}
    found: list[Divergence] = []
    for pid in read.chosen:
        row, subject = plan.counted.get(pid, (None, None))
        found += _compare(pid, subject, row, seen.get(pid))
    _advance(session, hour, plan.now)
    result = CrossCheckResult("checked", hour, len(read.chosen), tuple(found), read.calls)
    if found:
        log.warning("usage stream cross-check %s: %d fields diverge from CloudWatch, e.g. %s",
                    hour.isoformat(), len(found), found[0])
        audit.record(session, clock, "system:usage_stream", "usage.divergence", "usage-stream",
                     {"hour": hour.isoformat(), "profiles": len(read.chosen), "divergences": [
                         {"profile": d.profile_id, "subject": d.subject, "field": d.field,
                          "ledger": d.ledger, "cloudwatch": d.cloudwatch} for d in found[:SHOWN]]},
                     outcome="error")
    return result


def _ledger_hour(session: Session, hour: datetime) -> dict[str, tuple[LedgerRow, str | None]]:
    """{AIP id: (its ledger row for `hour`, its subject's name)} for profile meters with usage."""
    q = (select(Meter.key, Usage.input_tokens, Usage.output_tokens, Usage.cache_read_tokens,
                Usage.cache_write_tokens, Usage.requests, Subject.name)
         .join(Usage, Usage.meter_id == Meter.id)
         .outerjoin(Subject, Subject.id == Meter.subject_id)
         .where(Meter.kind == "profile", Usage.hour == hour))
    return {key: (LedgerRow(int(i), int(o), int(cr), int(cw), int(r)), name)
            for key, i, o, cr, cw, r, name in session.execute(q)}


def _tokens(row: LedgerRow) -> int:
    return row.input_tokens + row.output_tokens + row.cache_read_tokens + row.cache_write_tokens


def _compare(pid: str, subject: str | None, row: LedgerRow | None,
             cw: HourlyUsage | None) -> list[Divergence]:
    out = []
    for ledger_field, cw_field in _FIELDS:
        a = int(getattr(row, ledger_field)) if row is not None else 0
        b = int(getattr(cw, cw_field)) if cw is not None else 0
        floor = MIN_REQUESTS if ledger_field == "requests" else MIN_TOKENS
        if abs(a - b) > max(floor, RELATIVE * max(a, b)):
            out.append(Divergence(pid, subject, ledger_field, a, b))
    return out


def _advance(session: Session, hour: datetime, now: datetime) -> None:
    cur = session.get(SyncCursor, CURSOR)
    if cur is None:
        session.add(SyncCursor(name=CURSOR, position=hour, updated_at=now))
    else:
        cur.position, cur.updated_at = hour, now
    session.flush()
