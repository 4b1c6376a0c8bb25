"""The continuous usage-stream consumer: `serve` and `socket` read BOT_USAGE_STREAM all the time,
on the replica holding the scheduler's lease only, and enforce as soon as pushed usage counts
toward a limit.

One thread (handlers/server.py `Background`) runs `StreamLoop.run` until shutdown. Each step:

- not the leader (`is_leader()` false): forget every shard position and wait `NOT_LEADER_WAIT`;
  the new leader starts from the checkpoints in the database, so a takeover neither loses nor
  repeats a record (stream_usage.apply_batch: the checkpoint compare and the event-id dedupe);
- the leader: one *round* — every shard whose time has come gets one GetRecords and its commit
  (`StreamConsumer.read_page`), then its next read is paced (`next_read`): at least
  `MIN_GAP` after the last one (5 GetRecords calls a second per shard), at least the page's
  bytes / 2 MiB/s after it (the shard's read rate), and `IDLE` (1 s) once the shard is caught
  up — the polling interval AWS recommends. A throttled or failing shard backs off.
  The loop then waits until the earliest shard is due.

Fenced: a round runs inside `leases.fenced(fence)` (the scheduler's fence), so every commit checks
in its own transaction that the lease is still ours; after losing it nothing more is committed
(`LeaseLost`: that page is rolled back and read again by whoever holds the lease).

Enforce: when a round added usage to meters that limits cover (`stream_usage.limits_covering`),
the enforce flow runs after the round for those limits only (warnings and breaches; lifts and
reasserts stay with the full run after each sync) — at most once per `ENFORCE_GAP`, and never
more than `ENFORCE_SHARE` of the time (the gap grows to 5× the last run's duration).

usage_sync leaves the stream alone while `reading()` (bot/flows/usage_stream.py
`consume_for_sync`); `bedrock-bot run-job usage_sync`, alone in its process, still reads it.

Time is injected: `monotonic` paces the reads, `wait(seconds)` waits (returning True when the
loop must stop; `threading.Event.wait` in production), so tests step the loop without sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot.aws.usage_stream import Page, Shard, Throttled
from bot.errors import AwsError, BotError
from bot.flows import enforce as enforce_flow
from bot.flows import usage_stream
from bot.flows.runner import attempt
from bot.flows.usage_stream import CLOSED, READ, ConsumeResult, StreamConsumer
from bot.runtime import Services
from bot.services import leases, stream_usage

log = logging.getLogger(__name__)

MIN_GAP = 0.2  # s between GetRecords on one shard: at most 5 calls a second per shard
READ_RATE = 2 * 1024 * 1024  # bytes a second one shard can be read at (2 MiB/s)
IDLE = 1.0  # s before reading a caught-up shard again (AWS: poll each shard once a second)
NOT_LEADER_WAIT = 1.0  # s between looks at the lease while another replica leads
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0  # a throttled or failing shard, doubling
SHARDS_EVERY = 60.0  # s between ListShards (a reshard adds children and closes parents)
ENFORCE_GAP = 0.5  # s at least between two enforce runs started by the stream…
ENFORCE_SHARE = 0.2  # …and at most this share of the reader's time spent enforcing
READING_FOR = 60.0  # usage_sync leaves the stream to a loop whose last round ended this recently
PAGE_RECORDS = 2_000


@dataclass
class _ShardState:
    due: float = 0.0  # monotonic time of the next read
    backoff: float = 0.0  # the last back-off (0: none)


def next_read(now: float, page: Page, limit: int) -> float:
    """When a shard may be read again after `page`, asked for at most `limit` records (pure).
    Behind the tip (MillisBehindLatest > 0) or a full page: as soon as the limits allow —
    `MIN_GAP`, and the page's bytes at `READ_RATE`. Caught up: `IDLE`."""
    by_rate = sum(len(r.data) for r in page.records) / READ_RATE
    if page.behind_ms > 0 or len(page.records) >= limit:
        return now + max(MIN_GAP, by_rate)
    return now + max(IDLE, by_rate)


def backoff(previous: float) -> float:
    return min(BACKOFF_MAX, previous * 2) if previous else BACKOFF_FIRST


class StreamLoop:
    """Reads the stream continuously while `is_leader()`; see the module doc."""

    def __init__(self, services: Services, *, is_leader: Callable[[], bool],
                 fence: leases.Fence | None, stop: threading.Event | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None,
                 enforce_gap: float = ENFORCE_GAP, page_records: int = PAGE_RECORDS) -> None:
        self.services = services
        self.is_leader = is_leader
        self.fence = fence
        self.stop = stop or threading.Event()
        self.monotonic = monotonic
        self.wait = wait or self.stop.wait
        self.min_enforce_gap = enforce_gap
        self.enforce_gap = enforce_gap  # grows with how long enforce takes (ENFORCE_SHARE)
        self.consumer = StreamConsumer(services, page_records)
        self.page_records = self.consumer.page_records
        self.shards: list[Shard] | None = None
        self.state: dict[str, _ShardState] = {}
        self._shards_at = 0.0
        self._done: set[str] = set()
        self._handover_at: datetime | None = None
        self.enforce_pending: set[int] = set()  # limits whose usage grew since the last enforce
        self._enforced_at: float | None = None
        self.last_round: float | None = None  # monotonic end of the last complete round
        self.totals = ConsumeResult()
        self.enforce_runs = 0
        self._failing = 0.0  # the back-off after failed rounds (0: the last one worked)

    # ---- the thread -------------------------------------------------------------------------

    def run(self) -> None:
        """Step until `stop` is set (or `wait` says stop)."""
        usage_stream.register_continuous(self.services, self.reading)
        log.info("usage stream: reading %s continuously on the leader", self.consumer.name)
        try:
            while not self.stop.is_set():
                if self.wait(self.step()):
                    break
        finally:
            usage_stream.register_continuous(self.services, None)
            self._forget()
            log.info("usage stream: continuous reading stopped")

    def reading(self) -> bool:
        """Whether this loop is the stream's reader now (usage_sync then does not read it)."""
        last = self.last_round
        return (not self.stop.is_set() and last is not None and self.is_leader()
                and self.monotonic() - last < READING_FOR)

    def step(self) -> float:
        """One look at the lease and, as leader, one round; the seconds to wait before the next."""
        if not self.is_leader():
            self._forget()
            return NOT_LEADER_WAIT
        try:
            if self.fence is None:
                wait = self.round()
            else:
                with leases.fenced(self.fence):
                    wait = self.round()
            self._failing = 0.0
            return wait
        except leases.LeaseLost as exc:
            log.warning("usage stream: %s; stopped reading until the lease is ours again", exc)
            self._forget()
            return NOT_LEADER_WAIT
        except BotError as exc:  # the stream cannot be listed, the database failed in a step…
            log.warning("usage stream: round failed: %s", exc)
        except Exception:  # never let the thread die: log, forget positions, try again later
            log.exception("usage stream: round failed")
        self._forget()
        self._failing = backoff(self._failing)
        return self._failing

    # ---- one round --------------------------------------------------------------------------

    def round(self) -> float:
        """Read every due shard once, enforce if a limit may be crossed; seconds until next due."""
        now = self.monotonic()
        shards = self._shard_list(now)
        result = ConsumeResult(handover=self._handover())
        for shard in shards:
            if shard.id in self._done or self._state(shard.id).due > now:
                continue
            self._read(shard, result)
        self._note(result)
        if result.meters:
            with self.services.db.session_scope() as session:
                self.enforce_pending |= stream_usage.limits_covering(session, result.meters)
        self._enforce_if_due()
        self.consumer._prune()
        self.last_round = end = self.monotonic()
        waits = [self.state[s.id].due - end for s in shards if s.id not in self._done]
        if self.enforce_pending and self._enforced_at is not None:
            waits.append(self._enforced_at + self.enforce_gap - end)
        return max(0.0, min(waits, default=IDLE))

    def _read(self, shard: Shard, result: ConsumeResult) -> None:
        state = self._state(shard.id)
        try:
            page, status = self.consumer.read_page(shard, self.page_records, result)
        except Throttled:
            result.throttled += 1
            self.consumer.positions.pop(shard.id, None)
            state.backoff = backoff(state.backoff)
            state.due = self.monotonic() + state.backoff
            return
        except AwsError as exc:
            result.errors.append(f"{shard.id}: {exc}")
            self.consumer.positions.pop(shard.id, None)
            state.backoff = backoff(state.backoff)
            state.due = self.monotonic() + state.backoff
            return
        state.backoff = 0.0
        now = self.monotonic()
        if status == CLOSED:
            self._done.add(shard.id)
        state.due = next_read(now, page, self.page_records) if status == READ else now + MIN_GAP

    def _shard_list(self, now: float) -> list[Shard]:
        if self.shards is None or now >= self._shards_at:
            if self.consumer.retention is None:
                summary = self.consumer.kinesis.summary()
                self.consumer.retention = stream_usage.dedupe_retention(summary.retention_hours)
            self.shards = usage_stream._parents_first(self.consumer.kinesis.shards())
            with self.services.db.session_scope() as session:
                self._done = {sid for sid, cp in stream_usage.checkpoints(
                    session, self.consumer.name).items() if cp.finished}
            self._shards_at = now + SHARDS_EVERY
            known = {s.id for s in self.shards}
            self.state = {k: v for k, v in self.state.items() if k in known}
        return self.shards

    def _handover(self) -> datetime:
        """Fixed on the stream's first read and kept while it is set: read once per leadership."""
        if self._handover_at is None:
            s = self.services
            with s.db.session_scope() as session:
                self._handover_at = stream_usage.ensure_handover(session, s.clock)
        return self._handover_at

    def _state(self, shard_id: str) -> _ShardState:
        return self.state.setdefault(shard_id, _ShardState())

    def _enforce_if_due(self) -> None:
        if not self.enforce_pending:
            return
        now = self.monotonic()
        if self._enforced_at is not None and now - self._enforced_at < self.enforce_gap:
            return
        only, self.enforce_pending = self.enforce_pending, set()
        self._enforced_at = now
        self.enforce_runs += 1
        s = self.services
        out = attempt(lambda: enforce_flow.run(s, only=only))
        took = self.monotonic() - now
        self.enforce_gap = max(self.min_enforce_gap, took / ENFORCE_SHARE)
        if not out.ok:
            log.warning("usage stream: enforce after pushed usage failed: %s", out.message)

    def _note(self, result: ConsumeResult) -> None:
        self.totals.merge(result)
        if result.counted or result.errors or result.malformed_records or result.conflicts:
            log.info("usage stream: %d records, %d calls counted, %d duplicates, %d unattributed, "
                     "%d malformed, %d conflicts, %d throttled, behind %d ms", result.records,
                     result.counted, result.duplicates, result.unattributed, result.malformed_records,
                     result.conflicts, result.throttled, result.behind_ms)
        for error in result.errors:
            log.warning("usage stream: %s", error)

    def _forget(self) -> None:
        """Not the reader any more: positions, shard list and pacing are re-read as leader."""
        self.consumer.positions.clear()
        self.shards = None
        self.state.clear()
        self.last_round = None
        self._handover_at = None
