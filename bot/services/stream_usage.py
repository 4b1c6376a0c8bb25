"""Usage by push: invocation-log records from the usage stream, counted into the ledger once.

One call to `apply_batch` takes the records read from one shard after a known position and, in
the caller's transaction:

1. locks the shard's checkpoint and checks it still is that position — if another consumer (a
   replica taking over, a split brain) has moved it, nothing is written (`applied=False`) and the
   caller re-reads from the checkpoint;
2. parses each record (gzip JSON, CloudWatch Logs subscription format; CONTROL_MESSAGEs carry no
   usage) and each log event's invocation record; records that cannot be parsed are counted and
   passed over, so one bad record never stops the shard;
3. drops events already counted: every event id is inserted into `stream_events`
   (ON CONFLICT DO NOTHING … RETURNING), and only ids that were new are counted. Kinesis
   checkpoints alone cannot do this: CloudWatch Logs retries a failed delivery for up to 24 hours,
   and a retried batch is a new Kinesis record, with a new sequence number, maybe on another shard;
4. attributes each call once: an application inference profile in ``modelId`` → that AIP's
   ``profile`` meter (an AIP the bot does not know yet gets a meter without a subject, which its
   adoption later points at the subject, history included); otherwise the same resolution as the
   Logs Insights collector (`logs_usage.Attribution`: a mapped ``requestMetadata`` value, then the
   caller's linked IAM identity); otherwise unattributed — dropped and reported;
5. adds input, output, cache-read and cache-write tokens, one request and the estimated cost per
   (meter, hour) to the ledger (`ledger.add`), and moves the checkpoint past the last record.

Steps 3–5 commit together, so a crash before the commit leaves everything to be read again and a
crash after it leaves nothing to read twice.

**Handover.** Polling writes whole-hour absolutes; the stream adds increments. They never share an
hour: the first time the stream is read, the bot fixes a handover hour (the next top of the hour,
`sync_cursors` row ``usage_stream``). Calls before it are counted by polling (CloudWatch for AIPs,
Logs Insights for the rest), as before; calls from it on only by the stream — the pollers stop at
that hour (`until=`), and stream events logged before it are passed over. See docs/usage-stream.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import String, bindparam, delete, or_, select, text
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.aws.invocation_records import (
    CONTROL_MESSAGE,
    Invocation,
    MalformedRecord,
    NotInvocation,
    decode_subscription,
    parse_invocation,
)
from bot.aws.usage_stream import StreamRecord
from bot.clock import Clock
from bot.models import (
    Limit,
    Meter,
    Profile,
    StreamCheckpoint,
    StreamEvent,
    SyncCursor,
    TeamMember,
    UTCDateTime,
)
from bot.pricing import PriceTable
from bot.services import directory, ledger
from bot.services.ledger import HOUR, LedgerRow, floor_hour
from bot.services.logs_usage import Attribution, gateway_identities, identity_of

log = logging.getLogger(__name__)

HANDOVER = "usage_stream"
UNATTRIBUTED_SHOWN = 20
_AIP = re.compile(r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]+:\d{12}:application-inference-profile/"
                  r"(?P<id>[A-Za-z0-9]{1,64})\Z")


@dataclass
class BatchResult:
    """What one batch did. `applied` False: the checkpoint had moved, nothing was written."""

    applied: bool
    records: int = 0
    events: int = 0
    counted: int = 0  # calls added to the ledger
    duplicates: int = 0  # events already counted (a redelivery)
    before_handover: int = 0  # logged before the handover hour: polling counts them
    unattributed: int = 0
    unattributed_tokens: int = 0
    skipped_gateway: int = 0  # made by a BOT_GATEWAY_PRINCIPALS principal: /v1/usage counts them
    not_invocation: int = 0  # log events that are not invocation records
    malformed_records: int = 0  # Kinesis records that are not subscription records
    control_messages: int = 0
    ledger_rows: int = 0
    tokens: int = 0  # all four kinds, of the counted calls
    sequence: str | None = None  # the checkpoint after this batch
    strangers: Counter[str] = field(default_factory=Counter)  # unlinked callers, by tokens
    meters: set[int] = field(default_factory=set)  # meters this batch added usage to


# ---- the handover hour ----------------------------------------------------------------


def handover(session: Session) -> datetime | None:
    """The hour from which the stream counts, or None before the stream was first read."""
    cur = session.get(SyncCursor, HANDOVER)
    return cur.position if cur is not None else None


def ensure_handover(session: Session, clock: Clock) -> datetime:
    """The handover hour, fixed at the next top of the hour on the stream's first read."""
    cur = session.get(SyncCursor, HANDOVER)
    if cur is None:
        now = clock()
        cur = SyncCursor(name=HANDOVER, position=floor_hour(now) + HOUR, updated_at=now)
        session.add(cur)
        session.flush()
        log.info("usage stream: counts calls from %s on; polling counts the hours before",
                 cur.position.isoformat())
    return cur.position


def forget_handover(session: Session) -> datetime | None:
    """The stream was switched off (BOT_USAGE_STREAM unset): polling counts every hour again,
    overwriting them whole, and a stream switched on later must start from a new handover hour
    — resuming at the old one would add its calls to hours polling has since written."""
    cur = session.get(SyncCursor, HANDOVER)
    if cur is None:
        return None
    at = cur.position
    session.delete(cur)
    session.flush()
    log.warning("usage stream switched off: polling counts every hour again (handover was %s)",
                at.isoformat())
    return at


# ---- checkpoints ------------------------------------------------------------------------


def checkpoints(session: Session, stream: str) -> dict[str, StreamCheckpoint]:
    rows = session.scalars(select(StreamCheckpoint).where(StreamCheckpoint.stream == stream))
    return {c.shard_id: c for c in rows}


def _locked_checkpoint(session: Session, clock: Clock, stream: str, shard_id: str) -> StreamCheckpoint:
    """This shard's checkpoint row, locked until the transaction ends (created when new: two
    consumers creating it at once collide on the primary key, and one of them rolls back)."""
    q = (select(StreamCheckpoint).where(StreamCheckpoint.stream == stream,
                                        StreamCheckpoint.shard_id == shard_id).with_for_update())
    cp = session.scalar(q)
    if cp is None:
        cp = StreamCheckpoint(stream=stream, shard_id=shard_id, sequence=None, finished=False,
                              updated_at=clock())
        session.add(cp)
        session.flush()
    return cp


def mark_finished(session: Session, clock: Clock, stream: str, shard_id: str, expected: str | None) -> bool:
    """A closed shard read to its end: never read again. False when the checkpoint had moved."""
    cp = _locked_checkpoint(session, clock, stream, shard_id)
    if cp.sequence != expected:
        return False
    cp.finished, cp.updated_at = True, clock()
    session.flush()
    return True


# ---- one batch --------------------------------------------------------------------------


def apply_batch(session: Session, clock: Clock, stream: str, shard_id: str, expected: str | None,
                records: Sequence[StreamRecord], *, metadata_keys: Sequence[str],
                prices: PriceTable, handover_at: datetime,
                gateway_principals: Sequence[str] = ()) -> BatchResult:
    """Count `records` (read from `shard_id` just after `expected`) into the ledger: see module doc."""
    cp = _locked_checkpoint(session, clock, stream, shard_id)
    if cp.sequence != expected:
        return BatchResult(applied=False, sequence=cp.sequence)
    result = BatchResult(applied=True, records=len(records))
    calls = _calls(records, handover_at, result)
    fresh = _first_seen(session, [c.event_id for c in calls], clock())
    result.duplicates += len(calls) - len(fresh)
    now = clock()
    resolver = _Resolver(session, clock, metadata_keys, gateway_identities(gateway_principals))
    sums = _attribute([c for c in calls if c.event_id in fresh], resolver, floor_hour(now), result)
    result.ledger_rows = ledger.add(session, _ledger_rows(sums, prices), now)
    result.meters = {meter_id for meter_id, _hour, _model in sums}
    if records:
        cp.sequence = records[-1].sequence
    cp.updated_at = now
    result.sequence = cp.sequence
    session.flush()
    return result


def _attribute(calls: Iterable[Invocation], resolver: _Resolver, this_hour: datetime,
               result: BatchResult) -> dict[tuple[int, datetime, str], list[int]]:
    """Sums per (meter, hour, model priced as): input, output, cache read, cache write, calls."""
    sums: dict[tuple[int, datetime, str], list[int]] = {}
    for call in calls:
        if resolver.by_gateway(call):
            result.skipped_gateway += 1
            continue
        target = resolver.meter_for(call)
        if target is None:
            result.unattributed += 1
            result.unattributed_tokens += call.tokens
            result.strangers[call.identity_arn or "(no identity)"] += call.tokens
            continue
        meter_id, priced_as = target
        hour = min(floor_hour(call.at), this_hour)  # a clock ahead of ours: count it now
        acc = sums.setdefault((meter_id, hour, priced_as), [0, 0, 0, 0, 0])
        acc[0] += call.input_tokens
        acc[1] += call.output_tokens
        acc[2] += call.cache_read_tokens
        acc[3] += call.cache_write_tokens
        acc[4] += 1
        result.counted += 1
        result.tokens += call.tokens
    return sums


def _calls(records: Iterable[StreamRecord], handover_at: datetime, result: BatchResult) -> list[Invocation]:
    """The invocation records in `records` logged from the handover hour on, de-duplicated by id."""
    calls: dict[str, Invocation] = {}
    for record in records:
        try:
            message = decode_subscription(record.data)
        except MalformedRecord as exc:
            result.malformed_records += 1
            log.warning("usage stream: record %s skipped: %s", record.sequence, exc)
            continue
        if message.message_type == CONTROL_MESSAGE:
            result.control_messages += 1
            continue
        for event in message.events:
            result.events += 1
            try:
                call = parse_invocation(event)
            except NotInvocation:
                result.not_invocation += 1
                continue
            if call.at < handover_at:
                result.before_handover += 1
                continue
            if call.event_id in calls:  # the same event twice in one batch
                result.duplicates += 1
                continue
            calls[call.event_id] = call
    return list(calls.values())


def _first_seen(session: Session, event_ids: list[str], now: datetime) -> set[str]:
    """Record `event_ids` as counted; the ones that were not recorded before."""
    if not event_ids:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        # One statement, the ids as one JSON parameter, one round trip for the whole batch (an
        # executemany with RETURNING is sent as multi-VALUES statements of 4,000 parameters
        # each, which psycopg parses anew every time: the largest cost of a batch on PostgreSQL).
        return set(session.scalars(_FIRST_SEEN_PG, {"ids": json.dumps(event_ids), "now": now}))
    stmt = sqlite_insert(StreamEvent).on_conflict_do_nothing().returning(StreamEvent.event_id)
    rows = session.execute(stmt, [{"event_id": i, "seen_at": now} for i in event_ids])
    return {r[0] for r in rows}


_FIRST_SEEN_PG = text(
    "INSERT INTO stream_events (event_id, seen_at) SELECT value, :now "
    "FROM json_array_elements_text(CAST(:ids AS json)) ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
).bindparams(bindparam("ids", type_=String()), bindparam("now", type_=UTCDateTime()))


def _ledger_rows(sums: dict[tuple[int, datetime, str], list[int]], prices: PriceTable) -> list[LedgerRow]:
    """Per (meter, hour), cost rounded once per model, like the Logs Insights collector."""
    merged: dict[tuple[int, datetime], list[int]] = {}
    for (meter_id, hour, model), (i, o, cr, cw, n) in sums.items():
        acc = merged.setdefault((meter_id, hour), [0, 0, 0, 0, 0, 0])
        for j, v in enumerate((i, o, cr, cw, n, prices.cost_micro_usd(model, i, o, cr, cw))):
            acc[j] += v
    return [LedgerRow(m, h, *v) for (m, h), v in sorted(merged.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def limits_covering(session: Session, meter_ids: Iterable[int]) -> set[int]:
    """The limits that usage on these meters counts toward: limits on the meters' subjects and on
    the teams those subjects are members of (what a limit covers: `directory.covered_subject_ids`)."""
    ids = sorted(set(meter_ids))
    if not ids:
        return set()
    subjects = select(Meter.subject_id).where(Meter.id.in_(ids), Meter.subject_id.is_not(None))
    teams = select(TeamMember.team_id).where(TeamMember.user_id.in_(subjects))
    q = select(Limit.id).where(or_(Limit.subject_id.in_(subjects), Limit.subject_id.in_(teams)))
    return set(session.scalars(q))


def prune_seen(session: Session, now: datetime, retention: timedelta) -> int:
    """Forget event ids seen longer ago than `retention` (no redelivery can come that late)."""
    result = session.execute(delete(StreamEvent).where(StreamEvent.seen_at < now - retention)
                             .execution_options(synchronize_session=False))
    return int(getattr(result, "rowcount", 0) or 0)


def dedupe_retention(stream_retention_hours: int) -> timedelta:
    """How long an event id is kept: a duplicate can be *put* up to 24 h after the original (the
    CloudWatch Logs retry window) and then be read up to the stream's retention later — an hour
    added for clocks and slow reads."""
    return timedelta(hours=24 + max(24, stream_retention_hours) + 1)


# ---- attribution ------------------------------------------------------------------------


class _Resolver:
    """Call → (meter id, the model id it is priced as). Loaded once per batch."""

    def __init__(self, session: Session, clock: Clock, keys: Sequence[str],
                 gateway: frozenset[tuple[str, str, str]] = frozenset()) -> None:
        self.session, self.clock, self.gateway = session, clock, gateway
        session.flush()  # the reads below bypass the session's autoflush
        self.attribution = Attribution(session, clock, keys)
        self.keys = list(keys)
        # AIP ARN and id → (id, model it copies, subject): plain rows, no ORM objects to build.
        self.profiles: dict[str, tuple[str, str, int | None]] = {}
        rows = session.connection().execute  # Core rows: the ORM's row handling cost ~10% a batch
        for arn, pid, model, subject_id in rows(
                select(Profile.arn, Profile.profile_id, Profile.model_id, Profile.subject_id)).all():
            self.profiles[arn] = self.profiles[pid] = (pid, model, subject_id)
        self.aip_meters: dict[str, int] = {}
        self.existing: dict[str, tuple[int, int | None]] = {
            key: (meter_id, subject_id) for key, meter_id, subject_id in rows(
                select(Meter.key, Meter.id, Meter.subject_id).where(Meter.kind == "profile")).all()}

    def by_gateway(self, call: Invocation) -> bool:
        """A call the gateway made for someone, not through an AIP: the gateway reports it
        through /v1/usage, so counting it here too would count it twice (as the log reader)."""
        if not self.gateway or call.model_id in self.profiles or _AIP.match(call.model_id):
            return False
        return identity_of(call.identity_arn or "") in self.gateway

    def meter_for(self, call: Invocation) -> tuple[int, str] | None:
        profile = self.profiles.get(call.model_id)
        if profile is not None:
            pid, model, subject_id = profile
            return self._aip_meter(pid, subject_id), model
        unknown = _AIP.match(call.model_id)
        if unknown is not None:
            # Priced at 0 until adopted: an AIP's ARN does not say which model it copies.
            return self._aip_meter(unknown["id"], None), call.model_id
        meter_id = self.attribution.meter_for(call.identity_arn,
                                              {k: call.metadata.get(k) for k in self.keys})
        return (meter_id, call.model_id) if meter_id is not None else None

    def _aip_meter(self, profile_id: str, subject_id: int | None) -> int:
        found = self.aip_meters.get(profile_id)
        if found is not None:
            return found
        existing = self.existing.get(profile_id)
        if existing is not None and (subject_id is None or existing[1] == subject_id):
            self.aip_meters[profile_id] = existing[0]
            return existing[0]
        if subject_id is not None:  # a known AIP: its meter follows the profile's subject
            meter_id = directory.ensure_meter(self.session, self.clock, "profile", profile_id, subject_id).id
        else:  # never re-point an existing meter to nobody
            meter = self.session.scalar(select(Meter).where(Meter.kind == "profile", Meter.key == profile_id))
            if meter is None:
                meter = Meter(kind="profile", key=profile_id, subject_id=None, created_at=self.clock())
                self.session.add(meter)
                self.session.flush()
            meter_id = meter.id
        self.aip_meters[profile_id] = meter_id
        return meter_id
