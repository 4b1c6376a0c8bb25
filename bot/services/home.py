"""The App Home's data: a person's own usage, limits, status and pending requests."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.services import access, directory, raise_requests, raises, usage
from bot.services.directory import Actor, SubjectRef
from bot.services.raise_requests import RaiseRequestView
from bot.services.raises import RaiseView
from bot.services.restore_requests import RequestView, pending_for
from bot.services.usage import UsageReport

# (this month's report, today/week/month, pending restore requests, the revocation to ask
#  about, pending raise requests, active raises on the person's limits)
HomeData = tuple[UsageReport | None, list[UsageReport], list[RequestView], int | None,
                 list[RaiseRequestView], list[RaiseView]]


def load(session: Session, clock: Clock, tz: ZoneInfo, week_start: int, actor: Actor) -> HomeData:
    """The App Home's data: own usage today / this week / this month, limits, status."""
    me = directory.find(session, SubjectRef(slack_user_id=actor.slack_user_id))
    if me is None:
        return None, [], [], None, [], []
    ref = SubjectRef(slack_user_id=actor.slack_user_id)
    periods = [usage.report(session, clock, tz, week_start, actor, ref, p)
               for p in ("today", "week", "month")]
    ids = [me.id, *(t.id for t in directory.teams_of(session, me))]
    revs = [r for i in ids for r in access.active(session, i)]
    pending = [r for r in pending_for(session, ids) if r.requester == actor.slack_user_id]
    asked = raise_requests.pending_by(session, actor.slack_user_id or "")
    raised = raises.active_on(session, [s.limit_id for s in periods[-1].limits], clock())
    return periods[-1], periods, pending, revs[-1].id if revs else None, asked, raised
