"""Raise requests: file (button → modal, or `/bedrock request more`), decide once, expire.

An approval grants a temporary raise in the decision's own transaction; after the commit
`limits.after_raise` re-syncs the alarm/budget, lifts a revocation the raise makes room
for, and announces it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from bot.flows import limits as limits_flow
from bot.flows import locks
from bot.flows.filing import post_for_decision, request_ttl
from bot.flows.runner import step
from bot.quantities import Amount, Metric, Window
from bot.render import raises as ui
from bot.render.text import when
from bot.runtime import Services
from bot.services import raise_requests
from bot.services.directory import Actor
from bot.services.raise_requests import RaiseRequestTarget, RaiseRequestView
from bot.slack.notifier import safe

FILED = "📨 Your request for more is with the admins."
ALREADY = "⏳ You already have a request for more on that limit waiting for the admins."


def check_can_ask(s: Services, actor: Actor, limit_id: int) -> RaiseRequestTarget:
    return step(s.db, s.clock, actor, "raise_request.open", f"limit:{limit_id}",
                lambda session: raise_requests.check_can_ask(session, actor, limit_id))


def file_request(s: Services, actor: Actor, limit_id: int, amount: Amount, duration: timedelta | None,
                 reason: str) -> str:
    """The Request more modal, submitted."""
    created = step(s.db, s.clock, actor, "raise_request.create", f"limit:{limit_id}",
                   lambda session: raise_requests.create(session, s.clock, actor, limit_id, amount, duration,
                                                         reason, request_ttl(s)))
    return _filed(s, actor, created)


def request_more(s: Services, actor: Actor, amount: Amount, metric: Metric, window: Window | None,
                 duration: timedelta | None, reason: str) -> str:
    """`/bedrock request more <amount> [for <duration>] <reason>`: on the asker's own limit."""
    def work(session: Session) -> tuple[RaiseRequestView, bool]:
        limit_id = raise_requests.own_limit(session, s.clock, s.tz, s.week_start, actor, amount, metric,
                                            window)
        return raise_requests.create(session, s.clock, actor, limit_id, amount, duration, reason,
                                     request_ttl(s))

    return _filed(s, actor, step(s.db, s.clock, actor, "raise_request.create", actor.label, work))


def _filed(s: Services, actor: Actor, created: tuple[RaiseRequestView, bool]) -> str:
    req, is_new = created
    return post_for_decision(s, actor, req.id, is_new, ui.request_message(req, s.tz),
                             raise_requests.record_message, FILED, ALREADY)


def decide(s: Services, actor: Actor, request_id: int, decision: str) -> str | None:
    """Approve / approve half / deny. Returns a note for the clicker when nothing changed.
    The decision holds the subject's lock, so no enforcement revoke interleaves with it."""
    action, target = f"raise_request.{decision}", f"raise_request:{request_id}"
    subject_id = step(s.db, s.clock, actor, action, target,
                      lambda session: raise_requests.subject_of(session, request_id))
    with locks.subject(s.db, s.clock, subject_id):
        d = step(s.db, s.clock, actor, action, target, lambda session: raise_requests.decide(
            session, s.clock, s.tz, s.week_start, actor, request_id, decision))
    if not d.changed:
        r = d.request
        by = f" by <@{r.decided_by}>" if r.decided_by else ""
        return f"Nothing to do: raise request {r.id} is already {r.status}{by}."
    until = when(d.grant.expires_at, s.tz) if d.grant else None
    publish(s, d.request, until)
    if d.grant is not None:
        limits_flow.after_raise(s, actor, d.grant, f"approved raise request {d.request.id}: raised "
                                f"`{d.grant.subject}`'s {d.grant.metric}/{d.grant.window} limit")
    return None


def publish(s: Services, r: RaiseRequestView, until: str | None = None) -> None:
    if r.channel and r.ts:
        text, blocks = ui.decided_message(r, s.tz)
        safe(s.notifier.update, r.channel, r.ts, text, blocks)
    safe(s.notifier.dm, r.requester, ui.requester_note(r, until))


def expire(s: Services) -> list[RaiseRequestView]:
    """Close pending raise requests past their time, and raises that have ended."""
    actor = Actor.system("expire_requests")
    due = step(s.db, s.clock, actor, "expire_requests", "raise_requests",
               lambda session: raise_requests.expire(session, s.clock))
    for r in due:
        publish(s, r)
    limits_flow.close_expired_raises(s)
    return due
