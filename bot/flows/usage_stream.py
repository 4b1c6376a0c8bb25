"""Usage stream: read the usage stream (BOT_USAGE_STREAM) into the ledger.

`consume(services, max_records=…)` is one pass over every shard: what every usage sync
(`bot/flows/usage_sync.run`) does first when the stream is set, and what a continuous consumer
calls in a loop (keep one `StreamConsumer` for that: it keeps its shard iterators between passes
instead of asking for new ones each time).

Per shard: the checkpoint is read, records are fetched with no transaction open (GetRecords),
then each page is applied in a transaction of its own (`stream_usage.apply_batch`: dedupe,
ledger, checkpoint, one commit). A page whose checkpoint moved meanwhile (another replica) is
dropped and the shard re-read from the database's checkpoint. A shard that is throttled, or
fails, is left for the next pass; the others go on.

The hourly cross-check is plan → call → record too: the due hour and the ledger's counts in
one short transaction, CloudWatch with none open, the comparison and its audit in another.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from bot.aws.usage_stream import IteratorExpired, KinesisStream, Page, Shard, Throttled
from bot.errors import AwsError, BotError
from bot.flows.runner import call, step
from bot.runtime import Services
from bot.services import audit, stream_check, stream_usage
from bot.services.directory import Actor
from bot.services.stream_check import CheckPlan, CrossCheckResult
from bot.services.stream_usage import BatchResult

log = logging.getLogger(__name__)

NAME = "usage_stream"
ACTOR = Actor.system(NAME)
PAGE_RECORDS = 2_000  # GetRecords Limit per call (at most 10,000)
MAX_EMPTY_PAGES = 3  # per shard and pass: Kinesis may return empty pages while behind
ITERATOR_TTL = timedelta(minutes=4)  # Kinesis expires iterators after 5 minutes
PRUNE_EVERY = timedelta(minutes=10)
READ, MOVED, CLOSED = "read", "moved", "closed"  # what `StreamConsumer.read_page` did


@dataclass
class ConsumeResult:
    shards: int = 0
    records: int = 0
    events: int = 0
    counted: int = 0
    duplicates: int = 0
    before_handover: int = 0
    unattributed: int = 0
    unattributed_tokens: int = 0
    skipped_gateway: int = 0
    not_invocation: int = 0
    malformed_records: int = 0
    conflicts: int = 0  # pages dropped because another consumer had moved the checkpoint
    throttled: int = 0
    errors: list[str] = field(default_factory=list)
    behind_ms: int = 0  # the largest MillisBehindLatest seen
    handover: datetime | None = None
    calls: dict[str, int] = field(default_factory=dict)
    strangers: Counter[str] = field(default_factory=Counter)
    meters: set[int] = field(default_factory=set)  # meters whose usage the pass added to

    def merge(self, other: ConsumeResult) -> None:
        """Add another pass's counts (a continuous consumer's running totals)."""
        for name in ("records", "events", "counted", "duplicates", "before_handover", "unattributed",
                     "unattributed_tokens", "skipped_gateway", "not_invocation", "malformed_records",
                     "conflicts", "throttled"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors[-20:])
        del self.errors[:-20]
        self.behind_ms = other.behind_ms

    def add(self, batch: BatchResult) -> None:
        for name in ("records", "events", "counted", "duplicates", "before_handover", "unattributed",
                     "unattributed_tokens", "skipped_gateway", "not_invocation", "malformed_records"):
            setattr(self, name, getattr(self, name) + getattr(batch, name))
        self.strangers.update(batch.strangers)
        self.meters |= batch.meters


@dataclass
class _Position:
    iterator: str
    after: str | None  # the sequence the iterator starts after (None: the shard's start)
    obtained: float  # time.monotonic() when handed out


class StreamConsumer:
    """Reads the configured stream; one per process (positions are per consumer)."""

    def __init__(self, services: Services, page_records: int = PAGE_RECORDS) -> None:
        aws = services.settings.aws
        if not aws.usage_stream or not aws.usage_stream_name:
            raise ValueError("BOT_USAGE_STREAM is not set")
        self.services = services
        self.name = aws.usage_stream_name
        self.kinesis = KinesisStream(services.aws_client("kinesis"), aws.usage_stream)
        self.page_records = max(1, page_records)
        self.positions: dict[str, _Position] = {}
        self.retention: timedelta | None = None
        self._pruned_at: datetime | None = None

    def consume(self, max_records: int = 10_000) -> ConsumeResult:
        """One pass: at most `max_records` Kinesis records over all shards."""
        s = self.services
        result = ConsumeResult()
        calls_before = Counter(self.kinesis.calls)
        if self.retention is None:
            self.retention = stream_usage.dedupe_retention(self.kinesis.summary().retention_hours)
        shards = self.kinesis.shards()
        with s.db.session_scope() as session:
            result.handover = stream_usage.ensure_handover(session, s.clock)
            done = {sid for sid, cp in stream_usage.checkpoints(session, self.name).items() if cp.finished}
        budget = max_records
        for shard in _parents_first(shards):
            if shard.id in done or budget <= 0:
                continue
            result.shards += 1
            try:
                budget -= self._shard(shard, budget, result)
            except Throttled:
                result.throttled += 1
                self.positions.pop(shard.id, None)
            except AwsError as exc:
                result.errors.append(f"{shard.id}: {exc}")
                self.positions.pop(shard.id, None)
        self._prune()
        result.calls = dict(Counter(self.kinesis.calls) - calls_before)
        return result

    def _shard(self, shard: Shard, budget: int, result: ConsumeResult) -> int:
        """Read one shard until caught up, out of budget or out of empty pages; records read."""
        read = empty = 0
        while read < budget:
            page, status = self.read_page(shard, min(self.page_records, budget - read), result)
            read += len(page.records)
            if status != READ:
                return read
            if not page.records:
                empty += 1
                if page.behind_ms == 0 or empty >= MAX_EMPTY_PAGES:
                    return read
        return read

    def read_page(self, shard: Shard, limit: int, result: ConsumeResult) -> tuple[Page, str]:
        """One GetRecords on `shard` from the database's checkpoint, committed (`_apply`), and
        what became of it: READ; MOVED (another consumer had moved the checkpoint: nothing was
        written, the shard is read again from the database's checkpoint); CLOSED (a closed
        shard, now read to its end). Raises Throttled and AwsError as `KinesisStream.read`
        does, and `leases.LeaseLost` from a fenced commit."""
        position = self._position(shard.id)
        try:
            page = self.kinesis.read(position.iterator, limit)
        except IteratorExpired:
            self.positions.pop(shard.id, None)
            position = self._position(shard.id)
            page = self.kinesis.read(position.iterator, limit)
        result.behind_ms = max(result.behind_ms, page.behind_ms)
        if not self._apply(shard, position, page, result):
            return page, MOVED
        if page.next_iterator is None:  # a closed shard, read to its end
            self._finish(shard.id, self.positions.pop(shard.id).after)
            return page, CLOSED
        return page, READ

    def _apply(self, shard: Shard, position: _Position, page: Page, result: ConsumeResult) -> bool:
        """Commit one page (or note that another consumer had moved on). False: stop this shard."""
        s, aws = self.services, self.services.settings.aws
        after = position.after
        if page.records:
            assert result.handover is not None
            with s.db.session_scope() as session:
                batch = stream_usage.apply_batch(
                    session, s.clock, self.name, shard.id, after, page.records,
                    metadata_keys=aws.metadata_keys, prices=s.prices, handover_at=result.handover,
                    gateway_principals=s.settings.bot.gateway_principals)
            if not batch.applied:
                result.conflicts += 1
                self.positions.pop(shard.id, None)  # re-read from the database's checkpoint
                return False
            result.add(batch)
            after = batch.sequence
        if page.next_iterator is not None:
            self.positions[shard.id] = _Position(page.next_iterator, after, time.monotonic())
        else:
            self.positions[shard.id] = _Position("", after, time.monotonic())
        return True

    def _position(self, shard_id: str) -> _Position:
        """The remembered iterator if still fresh and still where the database says; else a new one."""
        s = self.services
        with s.db.session_scope() as session:
            cp = stream_usage.checkpoints(session, self.name).get(shard_id)
        after = cp.sequence if cp is not None else None
        known = self.positions.get(shard_id)
        if (known is not None and known.iterator and known.after == after
                and time.monotonic() - known.obtained < ITERATOR_TTL.total_seconds()):
            return known
        position = _Position(self.kinesis.iterator(shard_id, after), after, time.monotonic())
        self.positions[shard_id] = position
        return position

    def _finish(self, shard_id: str, after: str | None) -> None:
        s = self.services
        with s.db.session_scope() as session:
            stream_usage.mark_finished(session, s.clock, self.name, shard_id, after)

    def _prune(self) -> None:
        s = self.services
        now = s.clock()
        if self.retention is None or (self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY):
            return
        with s.db.session_scope() as session:
            gone = stream_usage.prune_seen(session, now, self.retention)
        self._pruned_at = now
        if gone:
            log.info("usage stream: forgot %d event ids older than %s", gone, self.retention)


def _parents_first(shards: list[Shard]) -> list[Shard]:
    """Parents before their children (after a reshard), so a call is counted in arrival order."""
    ids = {s.id for s in shards}
    order: list[Shard] = []
    placed: set[str] = set()
    pending = list(shards)
    while pending:
        rest = []
        for s in pending:
            if s.parent is None or s.parent not in ids or s.parent in placed:
                order.append(s)
                placed.add(s.id)
            else:
                rest.append(s)
        if len(rest) == len(pending):  # a cycle cannot happen; be safe anyway
            order.extend(rest)
            break
        pending = rest
    return order


def consume(services: Services, max_records: int = 10_000,
            consumer: StreamConsumer | None = None) -> ConsumeResult:
    """One pass over the stream (see module doc); raises AwsError when the stream cannot be listed."""
    result = (consumer or StreamConsumer(services)).consume(max_records)
    if result.counted or result.errors or result.malformed_records:
        log.info("usage stream: %d records, %d calls counted, %d duplicates, %d unattributed, "
                 "%d malformed, %d conflicts, behind %d ms, calls %s", result.records, result.counted,
                 result.duplicates, result.unattributed, result.malformed_records, result.conflicts,
                 result.behind_ms, result.calls)
    for error in result.errors:
        log.warning("usage stream: %s", error)
    return result


# ---- what usage_sync runs when the stream is set -----------------------------------------

_consumers: dict[int, StreamConsumer] = {}  # one per Services: iterators survive between syncs
_continuous: dict[int, Callable[[], bool]] = {}  # Services → "is a continuous consumer reading?"


def register_continuous(services: Services, reading: Callable[[], bool] | None) -> None:
    """A continuous consumer (bot/flows/usage_stream_loop.py) in this process says whether it is
    reading the stream now; usage_sync then leaves the stream to it (None: it has stopped)."""
    if reading is None:
        _continuous.pop(id(services), None)
    else:
        _continuous[id(services)] = reading


def continuous_reading(services: Services) -> bool:
    reading = _continuous.get(id(services))
    return reading is not None and reading()


def consumer_for(services: Services) -> StreamConsumer:
    consumer = _consumers.get(id(services))
    if consumer is None or consumer.services is not services:
        _consumers.clear()
        consumer = _consumers[id(services)] = StreamConsumer(services)
    return consumer


def consume_for_sync(services: Services, max_records: int = 10_000) -> datetime | None:
    """Read the stream, then give the pollers the hour they must stop at (the handover). A stream
    that cannot be read is logged and audited; the handover still holds — polling must not write
    hours the stream owns — so that usage waits in the stream until it can be read again."""
    s = services
    if continuous_reading(s):  # serve's continuous consumer reads it: no second reader here
        with s.db.session_scope() as session:
            return stream_usage.handover(session)
    try:
        consume(s, max_records, consumer=consumer_for(s))
    except BotError as exc:
        log.warning("usage stream not read: %s", exc)
        with s.db.session_scope() as session:
            audit.record(session, s.clock, ACTOR.label, f"{NAME}.read", s.settings.aws.usage_stream or "",
                         {"reason": str(exc)[:500]}, outcome="error")
    with s.db.session_scope() as session:
        return stream_usage.handover(session)


def forget(services: Services) -> None:
    """BOT_USAGE_STREAM unset: drop a handover left from when it was set (see stream_usage). A
    database that fails here fails the sync's own transaction next, which reports it."""
    try:
        with services.db.session_scope() as session:
            stream_usage.forget_handover(session)
    except SQLAlchemyError as exc:
        log.warning("usage stream handover not checked: %s", type(exc).__name__)


def cross_check(services: Services) -> CrossCheckResult | None:
    """The hourly comparison with CloudWatch (bot.services.stream_check): plan, CloudWatch
    with no transaction open, record. Failures are audited (runner) and logged."""
    s = services
    action = f"{NAME}.check"
    try:
        plan = step(s.db, s.clock, ACTOR, action, "usage-stream",
                    lambda session: stream_check.plan_check(session, s.clock))
        if not isinstance(plan, CheckPlan):
            return plan
        read = call(s.db, s.clock, ACTOR, action, "usage-stream",
                    lambda: stream_check.read_check(plan, s.metrics))
        return step(s.db, s.clock, ACTOR, action, "usage-stream",
                    lambda session: stream_check.record_check(session, s.clock, plan, read))
    except BotError as exc:
        log.warning("usage stream cross-check failed: %s", exc)
        return None
