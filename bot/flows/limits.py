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
from datetime import timedelta

from sqlalchemy.exc import DBAPIError

from bot.errors import BotError
from bot.flows import access as access_flow
from bot.flows.runner import step
from bot.models import Limit
from bot.quantities import Amount, Metric, Window
from bot.render.text import escape, when
from bot.runtime import Services
from bot.services import backstops, limits, raises
from bot.services.directory import Actor, SubjectRef
from bot.services.limits import LimitView
from bot.services.raises import RaiseView
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
              warn: tuple[int, ...], action: str, alarm: bool,
              grace: timedelta = timedelta(0)) -> LimitChange:
    after, before = step(s.db, s.clock, actor, "limit.set", str(ref), lambda session: limits.set_limit(
        session, s.clock, actor, ref, amount, window, metric, warn, action, alarm, grace))
    notes = sync_backstop(s, actor, after.id)
    broadcast(s, actor, f"set a limit on `{after.subject}`: {after.amount_text} {after.metric}/"
                        f"{after.window} ({after.action})", notes)
    return LimitChange(after, before, notes)


@dataclass(frozen=True)
class RaiseGranted:
    grant: RaiseView
    lifted: bool  # the limit's revocation was lifted: usage is under the raised amount
    notes: list[str]


def grant_raise(s: Services, actor: Actor, ref: SubjectRef, amount: Amount, window: Window,
                metric: Metric, duration: timedelta | None, reason: str) -> RaiseGranted:
    """`/bedrock limit alice +1M/day for 24h <reason>` (admin)."""
    grant = step(s.db, s.clock, actor, "limit.raise", str(ref), lambda session: raises.grant_direct(
        session, s.clock, s.tz, s.week_start, actor, ref, amount, window, metric, duration, reason))
    return after_raise(s, actor, grant, f"raised `{grant.subject}`'s {grant.metric}/{grant.window} limit")


def after_raise(s: Services, actor: Actor, grant: RaiseView, what: str) -> RaiseGranted:
    """After a raise commits: the alarm/budget follow the raised amount, a revocation the
    raise makes room for is lifted, and the alert channel hears of it."""
    notes = sync_backstop(s, actor, grant.limit_id)
    rev_id = step(s.db, s.clock, actor, "limit.raise", f"limit:{grant.limit_id}",
                  lambda session: raises.revocation_to_lift(session, grant.limit_id, s.clock(), s.tz,
                                                            s.week_start))
    lifted = rev_id is not None and access_flow.lift(
        s, actor, rev_id, f"limit raised by {grant.amount_text}") is not None
    until = when(grant.expires_at, s.tz)
    broadcast(s, actor, f"{what} by {grant.amount_text} until {until}: {escape(grant.reason)}"
              + (" — access restored" if lifted else ""), notes)
    return RaiseGranted(grant, lifted, notes)


def close_expired_raises(s: Services) -> list[RaiseView]:
    """Raises that ended: closed (audited), their limits' alarms/budgets back to the plain amount."""
    actor = Actor.system("expire_requests")
    ended = step(s.db, s.clock, actor, "limit.raise.expire", "limit_raises",
                 lambda session: raises.close_expired(session, s.clock))
    for limit_id in sorted({r.limit_id for r in ended}):
        sync_backstop(s, actor, limit_id)
    return ended


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
                                               budgets is not None,
                                               raises.effective_amount(session, limit, s.clock()))
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
