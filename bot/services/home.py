"""The App Home's data: a person's own usage, limits, status and pending requests."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.services import access, directory, usage
from bot.services.directory import Actor, SubjectRef
from bot.services.restore_requests import RequestView, pending_for
from bot.services.usage import UsageReport

HomeData = tuple[UsageReport | None, list[UsageReport], list[RequestView], int | None]


def load(session: Session, clock: Clock, tz: ZoneInfo, week_start: int, actor: Actor) -> HomeData:
    """The App Home's data: own usage today / this week / this month, limits, status."""
    me = directory.find(session, SubjectRef(slack_user_id=actor.slack_user_id))
    if me is None:
        return None, [], [], None
    ref = SubjectRef(slack_user_id=actor.slack_user_id)
    periods = [usage.report(session, clock, tz, week_start, actor, ref, p)
               for p in ("today", "week", "month")]
    ids = [me.id, *(t.id for t in directory.teams_of(session, me))]
    revs = [r for i in ids for r in access.active(session, i)]
    pending = [r for r in pending_for(session, ids) if r.requester == actor.slack_user_id]
    return periods[-1], periods, pending, revs[-1].id if revs else None
