"""Restore requests and their four-eyes decision: file, decide, expire, then tell.

Every function here is what a button, a modal, a slash command or a job reaches; each
returns what to tell the person (or raises BotError, already audited, with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from bot.errors import BadInput
from bot.flows import access as access_flow
from bot.flows import locks, tell
from bot.flows.filing import post_for_decision, request_ttl
from bot.flows.runner import step
from bot.render import approvals as ui
from bot.render.text import plain
from bot.runtime import Services
from bot.services import audit, directory, home, restore_requests
from bot.services.access import RevocationView
from bot.services.directory import Actor, SubjectRef
from bot.services.restore_requests import RequestView
from bot.slack.notifier import safe

FILED = "📨 Your restore request is with the admins."
ALREADY = "⏳ You already have a restore request waiting for the admins."
OWN_ACCESS = ("four eyes: this restores your own access, so it is a request another admin "
              "approves; say why: `/bedrock restore <subject> <reason>`")


def check_can_ask(s: Services, actor: Actor, revocation_id: int) -> str:
    """Before the modal opens: may this person ask? Returns the subject's name."""
    return step(s.db, s.clock, actor, "request.open", f"revocation:{revocation_id}",
                lambda session: restore_requests.check_can_ask(session, actor, revocation_id))


def check_decider(s: Services, actor: Actor, request_id: int) -> RequestView:
    return step(s.db, s.clock, actor, "request.deny", f"request:{request_id}",
                lambda session: restore_requests.check_decider(session, actor, request_id))


def file_request(s: Services, actor: Actor, revocation_id: int, reason: str) -> str:
    return _filed(s, actor, step(s.db, s.clock, actor, "request.create", f"revocation:{revocation_id}",
                                 lambda session: restore_requests.create(
                                     session, s.clock, actor, revocation_id, reason, request_ttl(s))))


def file_request_for(s: Services, actor: Actor, ref: SubjectRef, reason: str) -> str:
    """`/bedrock restore <subject> <reason>` by someone who may not restore directly."""
    return _filed(s, actor, step(s.db, s.clock, actor, "request.create", str(ref),
                                 lambda session: restore_requests.create_for_subject(
                                     session, s.clock, actor, ref, reason, request_ttl(s))))


@dataclass(frozen=True)
class RestoreAnswer:
    restored: list[RevocationView]
    request_note: str | None = None  # the actor may not restore: a request was filed instead


def restore(s: Services, actor: Actor, ref: SubjectRef, note: str,
            break_glass: bool = False) -> RestoreAnswer:
    """`/bedrock restore`: admins restore at once; anyone else files a restore request (the
    same one the button makes), and so does an admin whose own access it is (four eyes).
    An owner's break-glass restores at once, with a reason, loudly. The role is read in the
    same transaction that acts."""
    if break_glass:
        _break_glass(s, actor, ref, note)
        return RestoreAnswer(access_flow.restore_manual(s, actor, ref, f"break-glass: {note}"))

    def file_unless_admin(session: Session) -> tuple[RequestView, bool] | None:
        if directory.has_role(session, actor, "admin"):
            if not restore_requests.restores_own_access(session, actor, ref):
                return None
            if not note.strip():
                raise BadInput(OWN_ACCESS)
        return restore_requests.create_for_subject(session, s.clock, actor, ref, note, request_ttl(s))

    filed = step(s.db, s.clock, actor, "access.restore", str(ref), file_unless_admin)
    if filed is not None:
        return RestoreAnswer([], _filed(s, actor, filed))
    return RestoreAnswer(access_flow.restore_manual(s, actor, ref, note))


def _break_glass(s: Services, actor: Actor, ref: SubjectRef, reason: str) -> None:
    """Owner only, reason required; audited and announced before IAM is touched, so the
    alarm is raised even when the restore itself then fails."""
    def authorize(session: Session) -> str:
        directory.authorize(session, actor, "owner", "restore … break-glass")
        if not reason.strip():
            raise BadInput("a break-glass restore needs a reason")
        subject = directory.get(session, ref)
        audit.record(session, s.clock, actor.label, "access.break_glass", f"{subject.kind}:{subject.name}",
                     {"reason": reason[:500]})
        return subject.name

    name = step(s.db, s.clock, actor, "access.break_glass", str(ref), authorize)
    channel = s.settings.bot.alert_channel
    if channel:
        safe(s.notifier.post, channel, f"🚨 break-glass restore by <@{actor.slack_user_id}> "
                                       f"for `{name}`: {plain(reason)}")


def _filed(s: Services, actor: Actor, created: tuple[RequestView, bool]) -> str:
    req, is_new = created
    return post_for_decision(s, actor, req.id, is_new, ui.request_message(req, s.tz),
                             restore_requests.record_message, FILED, ALREADY)


def decide(s: Services, actor: Actor, request_id: int, decision: str, note: str = "") -> str | None:
    """Approve / approve for 24h / deny. Returns a note for the clicker when nothing changed.
    The decision and the deny's removal hold the subject's lock (no revoke interleaves)."""
    action, target = f"request.{decision}", f"request:{request_id}"
    subject_id = step(s.db, s.clock, actor, action, target,
                      lambda session: restore_requests.subject_of(session, request_id))
    with locks.subject(s.db, s.clock, subject_id):
        d = step(s.db, s.clock, actor, action, target, lambda session: restore_requests.decide(
            session, s.clock, actor, request_id, decision, note, s.access.dry_run))
        access_flow.clear(s, actor, d.lifts)
    if not d.changed:  # audited by the service: a no-op is a decision too
        return restore_requests.nothing_to_do(d.request)
    publish_decision(s, d.request)
    tell.restored(s.notifier, s.settings.bot.alert_channel, [x.view for x in d.lifts],
                  f"<@{actor.slack_user_id}>", f"restore request {d.request.id}")
    return None


def publish_decision(s: Services, r: RequestView) -> None:
    if r.channel and r.ts:
        text, blocks = ui.decided_message(r, s.tz)
        safe(s.notifier.update, r.channel, r.ts, text, blocks)
    safe(s.notifier.dm, r.requester, ui.requester_note(r))


def expire(s: Services) -> list[RequestView]:
    """Close pending requests past their time; their messages say so."""
    actor = Actor.system("expire_requests")
    due = step(s.db, s.clock, actor, "expire_requests", "restore_requests",
               lambda session: restore_requests.expire(session, s.clock))
    for r in due:
        publish_decision(s, r)
    return due


def home_view(s: Services, actor: Actor) -> home.HomeData:
    def load(session: Session) -> home.HomeData:
        return home.load(session, s.clock, s.tz, s.week_start, actor)

    return step(s.db, s.clock, actor, "home.view", actor.label, load)
