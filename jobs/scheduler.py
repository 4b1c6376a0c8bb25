"""The job runner: one APScheduler 3 scheduler per replica; only the replica holding the
`scheduler` lease runs jobs, and each job is fenced by that lease.

Leadership. A `lease_heartbeat` job, every `lease_ttl / 3`, takes or renews the lease
(`bot.services.leases`); the holder is the leader, the others keep trying and take over once
the leader's lease expires (a dead leader is replaced within `lease_ttl` plus one heartbeat,
so within two lease periods). The heartbeat is a job of its own on the scheduler's thread
pool, so it keeps renewing while a long job runs: the lease says "this process is alive",
not "no job is slow". Every job wrapper first asks `is_leader()` — the lease is ours and not
expired by `services.clock` — and otherwise returns doing nothing.

Fencing. A job runs inside `leases.fenced(...)`: each transaction it commits first checks,
in that transaction, that the lease is still ours and unexpired (`Database.session_scope`).
A job that outlives its lease — the process stalled past the ttl, or another replica took
over — gets `LeaseLost` at its next commit and commits nothing from then on. The fence
guards the database only: an AWS or Slack call the job had already made stays made, and the
repair paths (reassert, reconcile, the digest's claim) handle that as after a crash.

Schedule (APScheduler triggers, coalesced, one instance of each job at a time):
- `usage_sync` every `BOT_SYNC_SECONDS` (it runs `enforce` itself, after the sync); with
  BOT_USAGE_STREAM set the stream is not read by this job in `serve`/`socket` but by a thread of
  its own on the leader (bot/flows/usage_stream_loop.py, started by handlers/server.py), which
  asks `is_leader()` before each round and commits under this runner's `fence`;
- `daily_digest` at `BOT_DIGEST_TIME` in `BOT_TIMEZONE` (cron, hours of misfire grace), and
  at once when a replica becomes leader after today's digest time — the digest job posts
  at most once per day (`digests` table), so the catch-up is safe;
- `reconcile` hourly, `expire_requests` every 5 minutes, `flush_outbox` every minute;
- `prices_refresh` and `bill_reconcile` every 24 hours (Price List changes a few times a
  month; Cost Explorer settles a day over 24-48 h and bills $0.01 a request).
Interval jobs also run as soon as a replica becomes leader: it cannot know when the old
leader last ran them. Jobs are looked up by name when they run (`jobs.registry.JOBS` by
default), so a job that is not registered is skipped.

A job that raises (`LeaseLost` included) is logged and audited (`system:scheduler`,
`job.<name>`, `error`) in a transaction of its own, outside the fence, and never stops the
scheduler.

Time: APScheduler fires by the wall clock, so `services.clock` must be the wall clock too
(`utcnow`, as in production). Tests move both with time-machine and step the scheduler
through APScheduler's own job processing (`make_scheduler`, tests/stepped_scheduler.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import uuid4

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.runtime import Services
from bot.services import audit, leases
from jobs import registry

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
ACTOR = "system:scheduler"
HEARTBEAT = "lease_heartbeat"
USAGE_SYNC = "usage_sync"
DAILY_DIGEST = "daily_digest"
RECONCILE = "reconcile"
EXPIRE_REQUESTS = "expire_requests"
FLUSH_OUTBOX = "flush_outbox"
PRICES_REFRESH = "prices_refresh"
BILL_RECONCILE = "bill_reconcile"
AUDIT_CHECKPOINT = "audit_checkpoint"
DIGEST_CATCH_UP = "daily_digest_catch_up"
DEFAULT_LEASE_TTL = timedelta(seconds=90)
DIGEST_MISFIRE_GRACE = timedelta(hours=6)
INTERVAL_MISFIRE_GRACE = timedelta(seconds=30)

JobFn = Callable[[Services], Any]
SchedulerFactory = Callable[..., BaseScheduler]


def default_holder() -> str:
    """`host:pid:random`: unique per process, readable in the `leases` table."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{uuid4().hex[:6]}"


class JobRunner:
    """Runs the jobs on the replica that holds the `scheduler` lease.

    `make_scheduler` builds the APScheduler scheduler from its options (timezone,
    job_defaults): a BackgroundScheduler in production; tests pass one they step by hand.
    `lease_ttl` defaults to DEFAULT_LEASE_TTL, read when the runner is built.
    """

    def __init__(self, services: Services, holder: str | None = None,
                 lease_ttl: timedelta | None = None, jobs: Mapping[str, JobFn] | None = None,
                 make_scheduler: SchedulerFactory = BackgroundScheduler) -> None:
        ttl = DEFAULT_LEASE_TTL if lease_ttl is None else lease_ttl
        if ttl <= timedelta(0):
            raise ValueError("lease_ttl must be positive")
        self.services = services
        self.holder = holder or default_holder()
        self.lease_ttl = ttl
        self.heartbeat_every = ttl / 3
        self.fence = leases.Fence(LEASE_NAME, self.holder, services.clock)
        self._jobs = jobs
        self._make_scheduler = make_scheduler
        bot = services.settings.bot
        self.digest_time = bot.digest_time
        self.intervals: dict[str, timedelta] = {
            USAGE_SYNC: timedelta(seconds=bot.sync_seconds),
            EXPIRE_REQUESTS: timedelta(minutes=5),
            RECONCILE: timedelta(hours=1),
            FLUSH_OUTBOX: timedelta(minutes=1),
            PRICES_REFRESH: timedelta(hours=24),
            BILL_RECONCILE: timedelta(hours=24),
        }
        audit = services.settings.audit
        if audit.checkpoint_file or audit.checkpoint_channel or bot.alert_channel:
            self.intervals[AUDIT_CHECKPOINT] = timedelta(hours=1)  # somewhere to anchor the chain
        self._lock = threading.Lock()
        self._leader_until: datetime | None = None
        self.last_heartbeat: datetime | None = None  # clock time of our last successful renewal
        self._scheduler: BaseScheduler | None = None
        self._stopping = False

    # ---- leadership --------------------------------------------------------------------

    def is_leader(self) -> bool:
        """True while our lease is held and not expired by `services.clock`."""
        until = self._leader_until
        return until is not None and self.services.clock() < until

    def heartbeat(self) -> bool:
        """Take or renew the lease; True when we hold it. A database error is logged, and
        leadership then runs out when the lease we last wrote expires."""
        with self._lock:
            if self._stopping:
                return False
            was_leader = self.is_leader()
            now = self.services.clock()
            try:
                with self.services.db.session_scope() as session:
                    held = leases.acquire(session, LEASE_NAME, self.holder, now, self.lease_ttl)
            except Exception:
                log.exception("lease heartbeat failed (%s)", self.holder)
                return self.is_leader()
            if held:
                self._leader_until = now + self.lease_ttl
                self.last_heartbeat = now
            else:
                self._leader_until = None
        if held and not was_leader:
            log.info("scheduler lease taken by %s", self.holder)
            self._on_leadership()
        elif was_leader and not held:
            log.warning("scheduler lease lost by %s", self.holder)
        return held

    def _on_leadership(self) -> None:
        """A new leader runs the interval jobs now and catches up today's digest."""
        scheduler = self._scheduler
        if scheduler is None:
            return
        now = datetime.now(UTC)  # APScheduler's own clock
        try:
            for name in self.intervals:
                scheduler.modify_job(name, next_run_time=now)
            if self._digest_time_passed():
                scheduler.add_job(self.run_job, DateTrigger(run_date=now, timezone=UTC),
                                  args=[DAILY_DIGEST], id=DIGEST_CATCH_UP, replace_existing=True,
                                  misfire_grace_time=int(DIGEST_MISFIRE_GRACE.total_seconds()))
        except Exception:  # shut down meanwhile
            log.exception("could not reschedule jobs for the new leader")

    # ---- running jobs ------------------------------------------------------------------

    def job(self, name: str) -> JobFn | None:
        """The job called `name` now (registered later → found; never registered → None)."""
        table = self._jobs if self._jobs is not None else registry.JOBS
        return table.get(name)

    def run_job(self, name: str) -> bool:
        """Run one job, fenced by our lease, if we are the leader and it exists; True when
        it was run (even if it failed: a failure is logged and audited, never raised)."""
        if not self.is_leader():
            return False
        fn = self.job(name)
        if fn is None:
            return False
        try:
            with leases.fenced(self.fence):
                fn(self.services)
        except leases.LeaseLost as exc:
            log.warning("job %s lost the scheduler lease; its uncommitted work was rolled back", name)
            self._audit_failure(name, exc)
        except Exception as exc:
            log.exception("job %s failed", name)
            self._audit_failure(name, exc)
        return True

    def _audit_failure(self, name: str, exc: Exception) -> None:
        try:
            with self.services.db.session_scope() as session:
                audit.record(session, self.services.clock, ACTOR, f"job.{name}", name,
                             {"error": type(exc).__name__ + ": " + str(exc)[:300]}, outcome="error")
        except Exception:
            log.exception("could not audit the failure of job %s", name)

    def _digest_time_passed(self) -> bool:
        """Whether today's digest time (in BOT_TIMEZONE) has passed by `services.clock`."""
        now = self.services.clock()
        today: date = now.astimezone(self.services.tz).date()
        return datetime.combine(today, self.digest_time, tzinfo=self.services.tz) <= now

    # ---- the scheduler -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    @property
    def scheduler(self) -> BaseScheduler | None:
        """The APScheduler scheduler while started (tests step it)."""
        return self._scheduler

    def start(self) -> None:
        """Build the scheduler, schedule everything, start it, and heartbeat at once."""
        if self._scheduler is not None:
            raise RuntimeError("JobRunner already started")
        scheduler = self._make_scheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1,
            "misfire_grace_time": int(INTERVAL_MISFIRE_GRACE.total_seconds())})
        self._schedule(scheduler)
        self._scheduler = scheduler
        self._stopping = False
        scheduler.start()
        log.info("scheduler started as %s (lease ttl %ss)", self.holder, self.lease_ttl.total_seconds())
        self.heartbeat()

    def _schedule(self, scheduler: BaseScheduler) -> None:
        # A late heartbeat still runs (no misfire grace): skipping one could cost the lease.
        scheduler.add_job(self.heartbeat, IntervalTrigger(
            seconds=self.heartbeat_every.total_seconds(), timezone=UTC), id=HEARTBEAT,
            misfire_grace_time=None)
        for name, every in self.intervals.items():
            scheduler.add_job(self.run_job, IntervalTrigger(seconds=every.total_seconds(), timezone=UTC),
                              args=[name], id=name)
        t = self.digest_time
        scheduler.add_job(self.run_job, CronTrigger(hour=t.hour, minute=t.minute, second=t.second,
                                                    timezone=self.services.tz),
                          args=[DAILY_DIGEST], id=DAILY_DIGEST,
                          misfire_grace_time=int(DIGEST_MISFIRE_GRACE.total_seconds()))

    def shutdown(self, wait: bool = True) -> None:
        """Stop the scheduler (waiting for running jobs) and release the lease, so another
        replica takes over at its next heartbeat instead of after the ttl."""
        self._stopping = True  # a heartbeat still in flight must not take the lease again
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=wait)
        with self._lock:
            was_leader = self._leader_until is not None
            self._leader_until = None
        if not was_leader:
            return
        try:
            with self.services.db.session_scope() as session:
                leases.release(session, LEASE_NAME, self.holder)
        except Exception:
            log.exception("could not release the scheduler lease (%s)", self.holder)
