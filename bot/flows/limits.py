"""Limits: save the limit, then make its CloudWatch alarm / AWS Budget match, then tell.

The limit commits first: the bot's own evaluation enforces it whatever AWS says. The
backstop is planned in a transaction, applied with none open, recorded in a third; a
failure there is part of the answer ("limit saved; the CloudWatch alarm could not be
created: …"), never a reason to say nothing was changed. The alert channel hears about
the change once, after all of it, with the same notes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from bot.errors import BotError
from bot.flows.runner import step
from bot.models import Limit
from bot.quantities import Amount, Metric, Window
from bot.runtime import Services
from bot.services import backstops, limits
from bot.services.directory import Actor, SubjectRef
from bot.services.limits import LimitView
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
NOT_UPDATED = "AWS alarm/budget not updated: "


@dataclass(frozen=True)
class LimitChange:
    limit: LimitView
    before: LimitView | None
    notes: list[str]  # what the backstop step did not do, and why


@dataclass(frozen=True)
class LimitsRemoved:
    removed: list[LimitView]
    notes: list[str]


def set_limit(s: Services, actor: Actor, ref: SubjectRef, amount: Amount, window: Window, metric: Metric,
              warn: tuple[int, ...], action: str, alarm: bool) -> LimitChange:
    after, before = step(s.db, s.clock, actor, "limit.set", str(ref), lambda session: limits.set_limit(
        session, s.clock, actor, ref, amount, window, metric, warn, action, alarm))
    notes = sync_backstop(s, actor, after.id)
    broadcast(s, actor, f"set a limit on `{after.subject}`: {after.amount_text} {after.metric}/"
                        f"{after.window} ({after.action})", notes)
    return LimitChange(after, before, notes)


def remove_limits(s: Services, actor: Actor, ref: SubjectRef, window: Window | None,
                  metric: Metric | None) -> LimitsRemoved:
    removed = step(s.db, s.clock, actor, "limit.remove", str(ref), lambda session: limits.remove_limits(
        session, s.clock, actor, ref, window, metric))
    notes = [n for v in removed for n in sync_backstop(s, actor, v.id, removed=True)]
    gone = ", ".join(f"{v.metric}/{v.window}" for v in removed)
    broadcast(s, actor, f"removed limits on `{ref}`: {gone}", notes)
    return LimitsRemoved(removed, notes)


def sync_backstop(s: Services, actor: Actor, limit_id: int, removed: bool = False) -> list[str]:
    """The limit's alarm/budget, after the limit's own commit: notes for the reply."""
    aws = s.settings.aws
    if not aws.alarm_topic_arn:  # nothing can have been created without a topic to notify
        return [] if removed else [backstops.NO_TOPIC]
    budgets = s.budgets
    try:
        if removed:
            result = backstops.apply_removal(limit_id, s.alarms, budgets)
            with s.db.session_scope() as session:
                backstops.record_removal(session, s.clock, actor.label, limit_id, result)
        else:
            with s.db.session_scope() as session:
                limit = session.get(Limit, limit_id)
                if limit is None:  # removed meanwhile: its own removal cleans up
                    return []
                plan = backstops.plan_backstop(session, limit, aws.alarm_topic_arn, s.account_id,
                                               budgets is not None)
            result = backstops.apply_backstop(plan, s.alarms, budgets)
            with s.db.session_scope() as session:
                backstops.record_backstop(session, s.clock, actor.label, plan, result)
    except (BotError, DBAPIError) as exc:  # the limit itself is saved; say what is missing
        log.warning("backstop of limit %s not synced: %s", limit_id, exc)
        return [f"{NOT_UPDATED}{exc if isinstance(exc, BotError) else 'the database did not answer'}"]
    return [*result.notes, *(f"{NOT_UPDATED}{e}" for e in result.errors)]


def broadcast(s: Services, actor: Actor, what: str, notes: list[str]) -> None:
    """A shared-state change, told to the alert channel after every commit it needed."""
    channel = s.settings.bot.alert_channel
    if channel:
        tail = "".join(f"\n• {n}" for n in notes)
        safe(s.notifier.post, channel, f"<@{actor.slack_user_id}> {what}{tail}")
