"""Revoke and restore: plan in the database, change IAM with no transaction open, record.

A person's revoke is all or nothing: when IAM refuses one principal, the denies already
written are taken off again and the refusal names the AWS error (nothing recorded). An
automatic revoke (enforce, an alarm) records what took effect and leaves the failed
principals to the next enforce run (`reassert`), so nothing is let through meanwhile.
A lift is recorded first and the deny deleted after; a delete that fails leaves a stale
deny, which reconcile removes (denying too long is the safe side).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.aws.enforcement import enforcer
from bot.errors import AwsError, BadInput
from bot.flows import locks, tell
from bot.flows.runner import audit_refusal, step
from bot.models import Revocation, Subject
from bot.runtime import Services
from bot.services import access, audit, directory
from bot.services.access import DenyOutcome, DenyPlan, Lift, RevocationView, SubjectCheck
from bot.services.directory import Actor, SubjectRef

log = logging.getLogger(__name__)


def revoke_manual(s: Services, actor: Actor, ref: SubjectRef, note: str) -> RevocationView:
    """`/bedrock revoke`: admin only, strict (every principal denied, or none)."""
    target = str(ref)
    subject_id = _resolve(s, actor, "revoke", ref)
    with locks.subject(s.db, s.clock, subject_id):
        plan = step(s.db, s.clock, actor, "access.revoke", target, lambda session: access.plan_deny(
            session, access.check_manual_revoke(session, actor, ref)))
        deny = access.apply_deny(s.access, plan)
        if deny.failed:
            _undo(s, plan, deny)
            arn, code = next(iter(deny.failed.items()))
            more = f" and {len(deny.failed) - 1} more" if len(deny.failed) > 1 else ""
            error = AwsError("PutUserPolicy" if ":user/" in arn else "PutRolePolicy", code,
                             f"could not deny {arn}{more}; nothing was changed")
            audit_refusal(s.db, s.clock, actor, "access.revoke", target, str(error), error.outcome)
            raise error
        try:
            view = step(s.db, s.clock, actor, "access.revoke", target,
                        lambda session: access.record_revocation(
                            session, s.clock, actor, _subject(session, plan), "manual", note, None, None,
                            deny, s.access.dry_run))
        except IntegrityError as exc:  # one active manual revocation per subject (a unique index)
            raise BadInput(f"{plan.subject_name} is already revoked by an admin") from exc
    tell.revoked(s.notifier, s.settings.bot.alert_channel, view, actor.slack_user_id)
    return view


def _resolve(s: Services, actor: Actor, verb: str, ref: SubjectRef, action: str = "") -> int:
    """Authorize, then name the subject whose lock the change takes."""
    def find(session: Session) -> int:
        directory.authorize(session, actor, "admin", verb)
        return directory.get(session, ref).id

    return step(s.db, s.clock, actor, action or f"access.{verb}", str(ref), find)


def _undo(s: Services, plan: DenyPlan, deny: DenyOutcome) -> None:
    """Take off the denies this attempt wrote, so IAM and the database agree (no row)."""
    failed = access.remove_deny(s.access, plan.subject_name, deny.changed, deny.credentials, plan.aips)
    if failed:  # reconcile removes a deny no revocation explains
        log.warning("could not undo a partial revoke of %s: %s", plan.subject_name, failed)


def revoke_automatic(s: Services, actor: Actor, subject_id: int, reason: str, note: str,
                     limit_id: int | None, window: tuple[datetime, datetime] | None,
                     still_wanted: Callable[[Session], bool]) -> RevocationView | None:
    """A revocation the bot decided (limit, alarm, budget). `still_wanted` is asked in the
    planning and in the recording transaction (another replica may have acted meanwhile);
    None when it no longer holds."""
    def plan_it(session: Session) -> DenyPlan | None:
        subject = session.get(Subject, subject_id)
        return access.plan_deny(session, subject) if subject and still_wanted(session) else None

    def record(session: Session) -> RevocationView | None:
        if plan is None or not still_wanted(session):
            return None
        return access.record_revocation(session, s.clock, actor, _subject(session, plan), reason, note,
                                        limit_id, window, deny, s.access.dry_run)

    target = f"subject:{subject_id}"
    with locks.subject(s.db, s.clock, subject_id):
        plan = step(s.db, s.clock, actor, "access.revoke", target, plan_it)
        if plan is None:
            return None
        deny = access.apply_deny(s.access, plan)
        try:
            return step(s.db, s.clock, actor, "access.revoke", target, record)
        except IntegrityError:  # the limit's revocation was recorded meanwhile (a unique index)
            return None


def lift(s: Services, actor: Actor, revocation_id: int, note: str,
         before: Callable[[Session, Revocation], None] | None = None) -> RevocationView | None:
    """Mark one revocation restored (after `before`, in the same transaction), then delete
    the deny if it was the subject's last. None when it was no longer active."""
    def mark(session: Session) -> Lift | None:
        rev = session.get(Revocation, revocation_id)
        if rev is None or rev.state != "active":
            return None
        if before is not None:
            before(session, rev)
        return access.mark_lifted(session, s.clock, actor, rev, note, s.access.dry_run)

    target = f"revocation:{revocation_id}"
    subject_id = step(s.db, s.clock, actor, "access.restore", target,
                      lambda session: session.scalar(select(Revocation.subject_id).where(
                          Revocation.id == revocation_id)))
    if subject_id is None:
        return None
    with locks.subject(s.db, s.clock, subject_id):
        done = step(s.db, s.clock, actor, "access.restore", target, mark)
        if done is None:
            return None
        clear(s, actor, [done])
    return done.view


def restore_manual(s: Services, actor: Actor, ref: SubjectRef, note: str) -> list[RevocationView]:
    """A person's restore is all or nothing: the denies come off first; when IAM refuses one,
    those already deleted are put back and the refusal names the AWS error."""
    target = str(ref)
    subject_id = _resolve(s, actor, "restore", ref)
    with locks.subject(s.db, s.clock, subject_id):
        plan = step(s.db, s.clock, actor, "access.restore", target,
                    lambda session: access.plan_manual_restore(session, actor, ref))
        failed = access.remove_deny(s.access, plan.subject_name, list(plan.clear),
                                    {arn: list(ids) for arn, ids in plan.deny.credentials}, plan.deny.aips)
        if failed:
            removed = tuple(p for p in plan.clear if p not in failed and p in plan.deny.principals)
            access.apply_deny(s.access, DenyPlan(plan.deny.subject_id, plan.subject_name, removed,
                                                 plan.deny.resources, plan.deny.aips))
            arn, code = next(iter(failed.items()))
            error = AwsError("DeleteUserPolicy" if ":user/" in arn else "DeleteRolePolicy", code,
                             f"could not remove the deny from {arn}; nothing was changed")
            audit_refusal(s.db, s.clock, actor, "access.restore", target, str(error), error.outcome)
            raise error
        lifts = step(s.db, s.clock, actor, "access.restore", target,
                     lambda session: access.record_manual_restore(session, s.clock, actor, plan, note,
                                                                  s.access.dry_run))
    views = [x.view for x in lifts]
    tell.restored(s.notifier, s.settings.bot.alert_channel, views, f"<@{actor.slack_user_id}>", note)
    return views


def clear(s: Services, actor: Actor, lifts: list[Lift]) -> None:
    """Delete the denies of recorded lifts; a failure is audited (reconcile retries it)."""
    for x in lifts:
        failed = access.remove_deny(s.access, x.subject_name, x.principals, x.credentials, x.aips)
        if failed:
            with s.db.session_scope() as session:
                audit.record(session, s.clock, actor.label, "access.restore", f"revocation:{x.view.id}",
                             {"failed": failed, "note": "deny left in place; reconcile removes it"},
                             outcome="error")


def reassert(s: Services) -> list[str]:
    """Keep every active revocation's deny complete (see access.plan_reassert_one)."""
    if s.access.dry_run:  # nothing was written, so there is nothing to keep complete
        return []
    actor = Actor.system("enforce")
    subject_ids = step(s.db, s.clock, actor, "access.reassert", "revocations", access.revoked_subject_ids)
    touched = []
    for subject_id in subject_ids:
        name = _reassert_one(s, actor, subject_id)
        if name is not None:
            touched.append(name)
    return touched


def _reassert_one(s: Services, actor: Actor, subject_id: int) -> str | None:
    """Put the subject's deny back where it is missing; its name when something changed."""
    with locks.subject(s.db, s.clock, subject_id):
        plan = step(s.db, s.clock, actor, "access.reassert", f"subject:{subject_id}",
                    lambda session: access.plan_reassert_one(session, subject_id))
        if plan is None:  # restored meanwhile
            return None
        out = access.apply_deny(s.access, plan)
        with s.db.session_scope() as session:
            return plan.subject_name if access.record_reassert(session, s.clock, plan, out) else None


def _subject(session: Session, plan: DenyPlan) -> Subject:
    subject = session.get(Subject, plan.subject_id)
    assert subject is not None, "subjects are never deleted"
    return subject


def unlink(s: Services, actor: Actor, ref: SubjectRef, arn: str) -> access.UnlinkPlan:
    """`/bedrock unlink`: take off what the bot's revocations put on the principal (each
    holder's deny, its session entry, its API keys back on), then delete the link. All or
    nothing: when AWS refuses, the link stays and the reply names the error."""
    target = str(ref)
    subject_id = _resolve(s, actor, "unlink", ref, "principal.unlink")
    with locks.subject(s.db, s.clock, subject_id):  # a revoke/restore of the subject waits
        plan = step(s.db, s.clock, actor, "principal.unlink", target,
                    lambda session: access.plan_unlink(session, actor, ref, arn))
        for i, holder in enumerate(plan.held_by):
            keys = {plan.arn: list(plan.credentials)} if i == 0 else {}
            failed = access.remove_deny(s.access, holder, [plan.arn], keys, plan.aips)
            if failed:
                error = AwsError("Release", failed[plan.arn],
                                 f"could not take {holder}'s block off {plan.arn}; it stays linked")
                audit_refusal(s.db, s.clock, actor, "principal.unlink", target, str(error), error.outcome)
                raise error
        step(s.db, s.clock, actor, "principal.unlink", target,
             lambda session: access.record_unlink(session, s.clock, actor, plan))
    return plan


def check(s: Services, actor: Actor, ref: SubjectRef | None) -> list[SubjectCheck]:
    """`/bedrock check` and `bedrock-bot check-access`: what a revoke would do, principal by
    principal, read-only (no AWS call: the method follows from the kind and the settings)."""
    found = step(s.db, s.clock, actor, "access.check", str(ref or "everyone"),
                 lambda session: access.plan_check(session, actor, ref))
    enf = enforcer(s.access)
    return [SubjectCheck(name, tuple((arn, enf.method(arn)) for arn in arns)) for name, arns in found]
