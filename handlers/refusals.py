"""Requests refused before anyone was authenticated: counted, not audited one by one.

Anybody can POST junk to `/slack/events` or `/sns`. Writing an audit row for each refusal
would let them fill `/bedrock audit` and hold the audit chain's lock, so each refusal gets:
- one log line: endpoint, reason, a short detail, body size and source address, escaped
  (never the body: it is not authenticated);
- one increment of `bedrock_bot_refused_requests_total{endpoint, reason}`;
- a share of one audit row per (endpoint, reason, minute) per replica, written when the
  minute is over, with the count, the first detail, up to five source addresses and the
  replica that counted them (`<action>` `sns.refuse` / `slack.refuse`, outcome `denied`).

The tally lives in memory and is written by the first request this app handles after the
minute closed (or by `flush(force=True)` when the server stops). Replicas each write their
own row, so N replicas give at most N rows per reason per minute; summing `count` over the
rows of a minute gives the total. A tally that cannot be written (database down) is kept
and written with the next one. Authenticated refusals (a non-admin's command, a denied
approval) are audited one row each as before, by the flows that refuse them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from bot.logline import oneline
from bot.runtime import Services
from bot.services import audit

log = logging.getLogger(__name__)
WINDOW = timedelta(minutes=1)
MAX_SOURCES = 5
MAX_OPEN = 500  # tallies kept while the database cannot take them; endpoints × reasons × minutes
# Fixed label values, so a flood of odd reasons cannot grow the metric's series.
REASONS = {
    "slack": ("missing_header", "bad_timestamp", "stale", "bad_signature", "malformed", "replay"),
    "sns": ("malformed", "bad_certificate", "topic_not_allowed", "bad_signature", "stale"),
}
# SnsRejected's reasons begin with these phrases (bot/aws/sns.py); matched on the start only,
# so text quoted from the message later in a reason cannot choose the bucket.
_SNS_KINDS = (("topic not allow-listed", "topic_not_allowed"), ("SigningCertURL", "bad_certificate"),
              ("certificate", "bad_certificate"), ("signing certificate", "bad_certificate"),
              ("pinned certificate", "bad_certificate"), ("unsupported SignatureVersion", "bad_signature"),
              ("Signature", "bad_signature"), ("signature", "bad_signature"),
              ("message older than", "stale"), ("message Timestamp", "stale"))


def sns_kind(reason: str) -> str:
    """The fixed reason an SNS refusal is counted under (its text stays in the detail)."""
    for prefix, kind in _SNS_KINDS:
        if reason.startswith(prefix):
            return kind
    return "malformed"


@dataclass
class Tally:
    first_at: datetime
    last_at: datetime
    detail: str
    count: int = 0
    sources: list[str] = field(default_factory=list)

    def add(self, at: datetime, source: str) -> None:
        self.count += 1
        self.last_at = max(self.last_at, at)
        self._source(source)

    def merge(self, other: Tally) -> None:
        self.count += other.count
        self.first_at, self.last_at = min(self.first_at, other.first_at), max(self.last_at, other.last_at)
        for source in other.sources:
            self._source(source)

    def _source(self, source: str) -> None:
        if source not in self.sources and len(self.sources) < MAX_SOURCES:
            self.sources.append(source)


Key = tuple[str, str, datetime]  # endpoint, reason, start of the minute


class Refusals:
    """The counter, the log line and the per-minute audit rows for one app (thread-safe)."""

    def __init__(self, services: Services, registry: CollectorRegistry) -> None:
        self.services = services
        self.counter = Counter("bedrock_bot_refused_requests",
                               "Unauthenticated requests refused, by endpoint and reason",
                               ["endpoint", "reason"], registry=registry)
        self.replica = f"{socket.gethostname()[:64]}:{os.getpid()}"
        self._lock = threading.Lock()
        self._open: dict[Key, Tally] = {}
        self._retry_at: datetime | None = None  # after a failed write: not before the next minute

    def refuse(self, endpoint: str, reason: str, detail: str, size: int, source: str) -> None:
        """Count one refused request and log one line about it."""
        if reason not in REASONS[endpoint]:
            raise ValueError(f"unknown {endpoint} refusal reason {reason!r}")
        source = oneline(source or "unknown", 64)
        log.warning("%s request refused: %s (%s); %d bytes from %s", endpoint, reason,
                    oneline(detail, 200), size, source)
        self.counter.labels(endpoint, reason).inc()
        now = self.services.clock()
        key = (endpoint, reason, _minute(now))
        with self._lock:
            tally = self._open.get(key)
            if tally is None:
                tally = self._open[key] = Tally(now, now, oneline(detail, 200))
            tally.add(now, source)
        self.flush()

    def flush(self, force: bool = False) -> int:
        """Write the tallies of the minutes that are over (all of them with `force`); how many
        rows were written. Cheap when there is nothing to write."""
        with self._lock:
            if not self._open:
                return 0
        now = self.services.clock()
        current = _minute(now)
        with self._lock:
            if not force and self._retry_at is not None and now < self._retry_at:
                return 0  # the database just failed us: a flood must not retry it per request
            done = {k: v for k, v in self._open.items() if force or k[2] < current}
            for key in done:
                del self._open[key]
        if not done:
            return 0
        try:
            self._write(done)
        except Exception as exc:  # the database is down: keep the counts for the next try
            log.warning("could not audit %d refusal tallies: %s", len(done), type(exc).__name__)
            self._keep(done, retry_at=current + WINDOW)
            return 0
        return len(done)

    def _write(self, done: dict[Key, Tally]) -> None:
        s = self.services
        with s.db.session_scope() as session:
            for (endpoint, reason, minute), t in sorted(done.items(), key=lambda kv: kv[0][2]):
                audit.record(session, s.clock, f"{endpoint}:unverified", f"{endpoint}.refuse",
                             endpoint, {"reason": reason, "count": t.count, "detail": t.detail,
                                        "window": minute.isoformat(), "first_at": t.first_at.isoformat(),
                                        "last_at": t.last_at.isoformat(), "sources": t.sources,
                                        "replica": self.replica}, outcome="denied")

    def _keep(self, done: dict[Key, Tally], retry_at: datetime) -> None:
        with self._lock:
            self._retry_at = retry_at
            for key, tally in done.items():
                if key in self._open:
                    self._open[key].merge(tally)
                else:
                    self._open[key] = tally
            while len(self._open) > MAX_OPEN:  # oldest minute first; the metric still counted it
                oldest = min(self._open, key=lambda k: k[2])
                lost = self._open.pop(oldest)
                log.warning("dropped the tally of %d %s refusals (%s) at %s: database unavailable",
                            lost.count, oldest[0], oldest[1], oldest[2].isoformat())

    def pending(self) -> int:
        with self._lock:
            return sum(t.count for t in self._open.values())


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)
