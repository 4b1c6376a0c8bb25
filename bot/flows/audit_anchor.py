"""Checkpoint the audit chain: check it against the last checkpoint, then anchor the new head.

1. check (database only): the last checkpoint's row is still there with its hash, and every
   row after it chains on (keyed rows checked with the key); with no file, the whole chain;
2. anchor: append the head to BOT_AUDIT_CHECKPOINT_FILE and post it to the checkpoint
   channel — only when the head moved, so an idle log adds nothing;
3. a failed check writes no checkpoint (it would bless the damage): it is audited, posted to
   the alert channel and returned as the job's error.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from bot.errors import BotError
from bot.flows.runner import step
from bot.runtime import Services
from bot.services import audit
from bot.services import audit_anchor as anchor
from bot.services.audit_anchor import AnchorError, Checkpoint
from bot.services.directory import Actor
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
ACTOR = Actor.system("audit_checkpoint")


class ChainBroken(BotError):
    outcome = "error"


@dataclass(frozen=True)
class CheckpointResult:
    checkpoint: Checkpoint | None  # the head now; None while the log is empty
    written: str | None = None  # the file it was appended to
    posted: str | None = None  # the channel it was posted to
    note: str = ""

    def __str__(self) -> str:
        if self.checkpoint is None or self.note:
            return self.note or "audit log is empty"
        where = [w for w in (self.written, self.posted and f"#{self.posted}") if w]
        return f"row {self.checkpoint.id} {self.checkpoint.hash} → {', '.join(where)}"


def checkpoint(s: Services, path: str | None = None, post: bool = True,
               actor: Actor = ACTOR) -> CheckpointResult:
    path = path or s.settings.audit.checkpoint_file
    channel = (s.settings.audit.checkpoint_channel or s.settings.bot.alert_channel) if post else None
    if not path and not channel:
        raise AnchorError("nowhere to put a checkpoint: set BOT_AUDIT_CHECKPOINT_FILE or "
                          "BOT_AUDIT_CHECKPOINT_CHANNEL")
    try:
        return _anchor(s, path, channel, actor)
    except BotError as exc:
        alert = s.settings.bot.alert_channel or channel
        if alert:
            safe(s.notifier.post, alert, f":rotating_light: Audit checkpoint failed: {exc} "
                 "No checkpoint was written.")
        raise


def _anchor(s: Services, path: str | None, channel: str | None, actor: Actor) -> CheckpointResult:
    previous = anchor.read_last(path) if path and os.path.exists(path) else None
    head = step(s.db, s.clock, actor, "audit.checkpoint", "audit",
                lambda session: _checked_head(session, s.db.audit_keyring, s.clock(), previous))
    if head is None:
        return CheckpointResult(None, note="audit log is empty: nothing to checkpoint")
    if previous is not None and head.id == previous.id:
        return CheckpointResult(head, note=f"unchanged since the checkpoint of {previous.at}")
    if path:
        anchor.append(path, head)
    if channel:
        safe(s.notifier.post, channel, checkpoint_text(head))
    log.info("audit checkpoint: row %d (%d rows) → %s", head.id, head.rows,
             ", ".join(w for w in (path, channel) if w))
    return CheckpointResult(head, path, channel)


def _checked_head(session: Session, keyring: audit.Keyring, now: datetime,
                  previous: Checkpoint | None) -> Checkpoint | None:
    if previous is not None:
        problem = anchor.compare(session, previous)
        if problem:
            raise ChainBroken(problem + ".")
    start = previous.start if previous is not None else audit.Start()
    result = audit.verify(session, keyring, start)
    if not result.ok:
        raise ChainBroken(f"{result.reason}.")
    return anchor.head(session, now)


def checkpoint_text(cp: Checkpoint) -> str:
    """The Slack message: everything `audit verify --anchor` needs to check against it."""
    return (f":anchor: Audit checkpoint: row {cp.id} of {cp.rows} (newest at {cp.head_at}), "
            f"hash `{cp.hash}`. Check the database against it with "
            f"`bedrock-bot audit verify --anchor {cp.id}:{cp.hash}`.")
