"""What a request to `/slack/events` must show before Bolt sees it: Slack's signature, and
that this signed request was not received before.

Slack signs `v0:{timestamp}:{body}` with the app's signing secret and we accept a timestamp
up to 5 minutes from now (https://api.slack.com/docs/verifying-requests-from-slack); the
check is slack_sdk's `SignatureVerifier`, Bolt's own. Headers are checked first, so that a
missing, non-numeric or non-ASCII timestamp or signature is a refusal with a reason, never
an exception. Only then is the signature claimed in the replay cache (`bot/services/replay.py`):
the second arrival of the same signed request is refused. Unsigned junk never writes a row.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from slack_sdk.signature import Clock, SignatureVerifier
from sqlalchemy.exc import DBAPIError

from bot.flows.group_commit import GroupCommit
from bot.runtime import Services
from bot.services import replay

log = logging.getLogger(__name__)
WINDOW = 300  # seconds either side of now in which a Slack timestamp verifies (slack_sdk's)
SKEW = timedelta(minutes=1)  # kept past expiry, for replicas whose clocks differ a little
PURGE_EVERY = 100  # claims between two purges of expired signatures, per process
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")


@dataclass(frozen=True)
class Refused:
    reason: str  # one of handlers.refusals.REASONS["slack"]
    detail: str


class _Now(Clock):
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


class SlackGate:
    """Verify, then claim. `now` is the clock signatures are checked against (Unix seconds)."""

    def __init__(self, services: Services, now: Callable[[], float] = time.time) -> None:
        self.services = services
        self.now = now
        self._verifier: SignatureVerifier | None = None
        self._claims = itertools.count()
        # Acks that arrive together claim together: one statement and (SQLite) one hold of the
        # write gate for the lot, instead of one each queueing for it (issue 19).
        self._group: GroupCommit[tuple[str, datetime], bool] = GroupCommit(
            self._claim_together, lambda item: self._claim_together([item])[0])

    @property
    def verifier(self) -> SignatureVerifier:
        if self._verifier is None:  # on first use: an app built without settings can still route
            secret = self.services.settings.slack.signing_secret or "unset"
            self._verifier = SignatureVerifier(secret, clock=_Now(self.now))
        return self._verifier

    def check(self, body: bytes, timestamp: str | None, signature: str | None) -> Refused | None:
        """None when the request may go on to Bolt; else why not."""
        refused = self.verify(body, timestamp, signature)
        if refused is not None or timestamp is None or signature is None:
            return refused
        if not self.claim(signature, int(timestamp)):
            return Refused("replay", "this signed request was received before")
        return None

    def verify(self, body: bytes, timestamp: str | None, signature: str | None) -> Refused | None:
        if not timestamp:
            return Refused("missing_header", "no X-Slack-Request-Timestamp")
        if not signature:
            return Refused("missing_header", "no X-Slack-Signature")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            return Refused("bad_timestamp", "X-Slack-Request-Timestamp is not a number of seconds")
        if abs(self.now() - int(timestamp)) > WINDOW:
            return Refused("stale", "X-Slack-Request-Timestamp is more than 5 minutes from now")
        if not _SIGNATURE.fullmatch(signature):
            return Refused("bad_signature", "X-Slack-Signature is not v0= and 64 hex digits")
        try:
            body.decode("utf-8")  # Slack bodies are UTF-8; the verifier would raise on others
        except UnicodeDecodeError:
            return Refused("malformed", "body is not UTF-8")
        if not self.verifier.is_valid(body, timestamp, signature):
            return Refused("bad_signature", "signature does not match the body")
        return None

    def claim(self, signature: str, timestamp: int) -> bool:
        """First sight of this signature? With the database down the request goes on (every
        command needs the database and will say it is not answering); logged.

        On the quick engine, since the ack waits for it: PostgreSQL runs the claim as one
        autocommit statement (no BEGIN, COMMIT or pre-ping round trips); SQLite commits it
        without an fsync (WAL, `synchronous=NORMAL`), so a power cut may forget the claims of its
        last moments, and those requests could be replayed until their 5 minutes are up."""
        expires = datetime.fromtimestamp(timestamp + WINDOW, UTC)
        try:
            first = self._group.submit((signature, expires))
            if first and next(self._claims) % PURGE_EVERY == 0:
                with self.services.db.quick.begin() as conn:
                    replay.purge(conn, datetime.fromtimestamp(self.now(), UTC) - SKEW)
            return first
        except DBAPIError as exc:
            log.warning("replay check skipped, the database is not answering: %s",
                        type(exc).__name__)
            return True

    def _claim_together(self, claims: Sequence[tuple[str, datetime]]) -> list[bool]:
        with self.services.db.quick.begin() as conn:
            return replay.claim_many(conn, claims)
