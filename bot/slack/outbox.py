"""Slack posts that must not be lost: a failed post is kept in `outbox` and retried.

`OutboxNotifier` wraps the real notifier. A transient failure (Slack down, 5xx, rate
limited after the client's own retries, network) stores the message; `flush_outbox`
sends due messages with exponential backoff. A permanent error (channel not found, not
in channel, bad auth) is logged and dropped: retrying cannot fix it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db import Database
from bot.models import OutboxMessage
from bot.slack.notifier import Notifier

log = logging.getLogger(__name__)
PERMANENT = {"channel_not_found", "not_in_channel", "is_archived", "invalid_auth", "account_inactive",
             "token_revoked", "user_not_found", "invalid_blocks", "msg_too_long", "no_text",
             "cannot_dm_bot", "missing_scope", "message_not_found", "cant_update_message"}
MAX_ATTEMPTS = 30
Blocks = list[dict[str, Any]] | None


def transient(exc: Exception) -> bool:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "")) not in PERMANENT
    return isinstance(exc, OSError)  # URLError, timeouts, refused connections


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


class OutboxNotifier:
    def __init__(self, inner: Notifier, db: Database, clock: Clock) -> None:
        self.inner = inner
        self.db = db
        self.clock = clock

    @property
    def client(self) -> Any:  # the digest uploads files through the real client
        return getattr(self.inner, "client", None)

    def post(self, channel: str, text: str, blocks: Blocks = None) -> str | None:
        return self._try("post", channel, None, text, blocks)

    def dm(self, user_id: str, text: str, blocks: Blocks = None) -> str | None:
        return self._try("dm", user_id, None, text, blocks)

    def update(self, channel: str, ts: str, text: str, blocks: Blocks = None) -> None:
        self._try("update", channel, ts, text, blocks)

    def _try(self, kind: str, target: str, ts: str | None, text: str, blocks: Blocks) -> str | None:
        try:
            return send(self.inner, kind, target, ts, text, blocks)
        except (SlackApiError, OSError) as exc:
            if not transient(exc):
                log.warning("slack %s to %s dropped: %s", kind, target, _reason(exc))
                return None
            log.warning("slack %s to %s failed (%s); kept in the outbox", kind, target, _reason(exc))
            now = self.clock()
            with self.db.session_scope() as session:
                session.add(OutboxMessage(kind=kind, target=target, ts=ts, text=text, blocks=blocks,
                                          attempts=1, next_attempt_at=now + backoff(1),
                                          last_error=_reason(exc), created_at=now))
            return None


def send(inner: Notifier, kind: str, target: str, ts: str | None, text: str, blocks: Blocks) -> str | None:
    if kind == "post":
        return inner.post(target, text, blocks)
    if kind == "dm":
        return inner.dm(target, text, blocks)
    inner.update(target, ts or "", text, blocks)
    return ts


def _reason(exc: Exception) -> str:
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error", "slack error"))[:200]
    return type(exc).__name__


@dataclass(frozen=True)
class FlushResult:
    sent: int
    retry: int
    dropped: int


def flush(session: Session, clock: Clock, inner: Notifier, batch: int = 50) -> FlushResult:
    """Send what is due. Rows are locked on PostgreSQL so two replicas never send one twice."""
    now = clock()
    q = (select(OutboxMessage).where(OutboxMessage.sent_at.is_(None), OutboxMessage.next_attempt_at <= now)
         .order_by(OutboxMessage.id).limit(batch))
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    sent = retry = dropped = 0
    for msg in session.scalars(q).all():
        try:
            send(inner, msg.kind, msg.target, msg.ts, msg.text, msg.blocks)
            msg.sent_at = now
            sent += 1
        except (SlackApiError, OSError) as exc:
            msg.attempts += 1
            msg.last_error = _reason(exc)
            if not transient(exc) or msg.attempts >= MAX_ATTEMPTS:
                msg.sent_at, dropped = now, dropped + 1  # given up: kept for the record
                log.error("slack %s to %s given up after %d attempts: %s", msg.kind, msg.target,
                          msg.attempts, msg.last_error)
            else:
                msg.next_attempt_at, retry = now + backoff(msg.attempts), retry + 1
            if isinstance(exc, OSError) or _reason(exc) in ("service_unavailable", "ratelimited"):
                break  # Slack is still down: stop hammering it this round
    session.flush()
    return FlushResult(sent, retry, dropped)
