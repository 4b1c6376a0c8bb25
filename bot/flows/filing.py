"""Filing a request for a decision (restore, raise): post it to the alert channel after its
commit, remember where the message is (so the decision updates it in place), tell the asker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session

from bot.render.blocks import Reply
from bot.runtime import Services
from bot.services.directory import Actor
from bot.slack.notifier import safe

RecordMessage = Callable[[Session, int, str, str], None]  # (session, request id, channel, ts)


def request_ttl(s: Services) -> timedelta:
    """How long a request waits for a decision before it expires."""
    return timedelta(hours=s.settings.bot.request_ttl_hours)


def post_for_decision(s: Services, actor: Actor, request_id: int, is_new: bool, message: Reply,
                      record: RecordMessage, filed: str, already: str) -> str:
    """A new request goes to the alert channel; either way the asker hears where it stands."""
    channel = s.settings.bot.alert_channel
    if is_new and channel:
        ts = safe(s.notifier.post, channel, message[0], message[1])
        if ts:
            with s.db.session_scope() as session:
                record(session, request_id, channel, ts)
    note = filed if is_new else already
    safe(s.notifier.dm, actor.slack_user_id or "", note)
    return note
