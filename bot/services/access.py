"""Access: revoke and restore subjects through IAM deny policies, with one row per cause.

Policies are per (principal, subject): `bedrock-bot-deny-<subject>`. A subject may hold
several active revocations (a limit and a manual one); its policies come off only when
the last one is lifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.access import IamAccess
from bot.clock import Clock
from bot.errors import AwsError, BadInput, Denied
from bot.models import Limit, LimitException, Profile, Revocation, Subject
from bot.quantities import Window
from bot.services import audit, directory
from bot.services.directory import Actor, SubjectInfo

REASONS = ("limit", "manual", "alarm", "budget")


@dataclass(frozen=True)
class RevocationView:
    id: int
    subject: SubjectInfo
    reason: str
    note: str
    limit_id: int | None
    window_end: datetime | None
    state: str
    revoked_by: str
    revoked_at: datetime
    restored_by: str | None
    principals: tuple[str, ...]
    affected_users: tuple[str, ...]  # Slack ids to DM
    dry_run: bool = False


def _view(session: Session, rev: Revocation, subject: Subject, principals: list[str],
          dry_run: bool = False) -> RevocationView:
    return RevocationView(rev.id, directory.info(subject), rev.reason, rev.note, rev.limit_id,
                          rev.window_end, rev.state, rev.revoked_by, rev.revoked_at, rev.restored_by,
                          tuple(principals), tuple(affected_users(session, subject)), dry_run)


def affected_users(session: Session, subject: Subject) -> list[str]:
    people = directory.members_of(session, subject) if subject.kind == "team" else [subject]
    return [p.slack_user_id for p in people if p.slack_user_id]


def deny_resources(session: Session, subject: Subject) -> list[str] | None:
    """What the deny covers: everything for a user (the base models too); a team's AIPs
    and its members' for a team, or everything when there are none to name."""
    if subject.kind == "user":
        return None
    ids = directory.covered_subject_ids(session, subject)
    arns = list(session.scalars(select(Profile.arn).where(Profile.subject_id.in_(ids))))
    return sorted(arns) or None


def bound_principals(session: Session, subject: Subject) -> list[str]:
    ids = directory.covered_subject_ids(session, subject)
    return [p.arn for p in directory.principals_of(session, ids)]


def active(session: Session, subject_id: int) -> list[Revocation]:
    return list(session.scalars(select(Revocation).where(
        Revocation.subject_id == subject_id, Revocation.state == "active").order_by(Revocation.id)))


@dataclass(frozen=True)
class DenyOutcome:
    principals: list[str]  # every bound principal
    changed: list[str]  # written or changed now
    failed: dict[str, str]  # principal → AWS error code (deleted user, quota, AccessDenied …)


def apply_deny(session: Session, iam: IamAccess, subject: Subject) -> DenyOutcome:
    """Put the subject's deny policy on every bound principal (idempotent).

    One principal failing (deleted outside the bot, inline quota full) does not stop the
    others; the failure is returned, audited by the caller and retried on the next run."""
    resources = deny_resources(session, subject)
    out = DenyOutcome(bound_principals(session, subject), [], {})
    for arn in out.principals:
        try:
            if iam.deny(arn, subject.name, resources).changed:
                out.changed.append(arn)
        except (AwsError, ValueError) as exc:
            out.failed[arn] = exc.code if isinstance(exc, AwsError) else "InvalidPrincipal"
    return out


def reassert(session: Session, clock: Clock, iam: IamAccess) -> list[str]:
    """Keep every active revocation's deny complete: principals linked, members added or
    AIPs provisioned since the revocation are covered on the next enforce run."""
    touched: list[str] = []
    if iam.dry_run:  # nothing was written, so there is nothing to keep complete
        return touched
    subject_ids = set(session.scalars(select(Revocation.subject_id).where(Revocation.state == "active")))
    for subject in session.scalars(select(Subject).where(Subject.id.in_(subject_ids)).order_by(Subject.id)):
        out = apply_deny(session, iam, subject)
        for rev in active(session, subject.id):
            rev.principals = sorted(set(rev.principals or []) | set(out.principals))
        if out.changed:
            touched.append(subject.name)
            audit.record(session, clock, "system:enforce", "access.reassert",
                         f"{subject.kind}:{subject.name}", {"principals": out.changed})
        if out.failed:
            audit.record(session, clock, "system:enforce", "access.reassert",
                         f"{subject.kind}:{subject.name}", {"failed": out.failed}, outcome="error")
    session.flush()
    return touched


def lift_deny(session: Session, iam: IamAccess, subject: Subject) -> list[str]:
    recorded = session.scalars(select(Revocation.principals).where(Revocation.subject_id == subject.id))
    principals = sorted(set(bound_principals(session, subject)).union(*[set(r or []) for r in recorded]))
    for arn in principals:
        iam.allow(arn, subject.name)
    return principals


def revoke(session: Session, clock: Clock, iam: IamAccess, actor: Actor, subject: Subject,
           reason: str, note: str = "", limit_id: int | None = None,
           window: tuple[datetime, datetime] | None = None, strict: bool = False) -> RevocationView:
    """Deny now and record it. `strict` (a person asked): any IAM failure refuses the whole
    revocation, named in the reply. Not strict (enforce, alarms): the revocation is recorded
    and the failed principals are retried every run, so nothing is let through meanwhile."""
    if reason not in REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}")
    deny = apply_deny(session, iam, subject)
    if strict and deny.failed:
        arn, code = next(iter(deny.failed.items()))
        raise AwsError("PutUserPolicy" if ":user/" in arn else "PutRolePolicy", code,
                       f"could not deny {arn}" + (f" and {len(deny.failed) - 1} more" if len(deny.failed) > 1
                                                  else ""))
    principals, dry = deny.principals, iam.dry_run
    rev = Revocation(subject_id=subject.id, reason=reason, note=note[:500], limit_id=limit_id,
                     window_start=window[0] if window else None,
                     window_end=window[1] if window else None, state="active",
                     revoked_by=actor.label, revoked_at=clock(), principals=principals)
    session.add(rev)
    session.flush()
    audit.record(session, clock, actor.label, "access.revoke", f"{subject.kind}:{subject.name}",
                 {"revocation": rev.id, "reason": reason, "note": note[:500], "limit": limit_id,
                  "principals": principals, "dry_run": dry, "failed": deny.failed},
                 outcome="error" if deny.failed else "ok")
    return _view(session, rev, subject, principals, dry)


def revoke_manual(session: Session, clock: Clock, iam: IamAccess, actor: Actor,
                  ref: directory.SubjectRef, note: str) -> RevocationView:
    directory.authorize(session, actor, "admin", "revoke")
    subject = directory.get(session, ref)
    if any(r.reason == "manual" for r in active(session, subject.id)):
        raise BadInput(f"{subject.name} is already revoked by an admin")
    return revoke(session, clock, iam, actor, subject, "manual", note, strict=True)


def lift(session: Session, clock: Clock, iam: IamAccess, actor: Actor, rev: Revocation,
         note: str = "") -> RevocationView:
    """Mark one revocation restored; the deny comes off when none is left active."""
    subject = session.get(Subject, rev.subject_id)
    assert subject is not None
    rev.state, rev.restored_by, rev.restored_at = "restored", actor.label, clock()
    session.flush()
    remaining = active(session, subject.id)
    principals = [] if remaining else lift_deny(session, iam, subject)
    audit.record(session, clock, actor.label, "access.restore", f"{subject.kind}:{subject.name}",
                 {"revocation": rev.id, "reason": rev.reason, "note": note[:500],
                  "principals": principals, "still_revoked_by": [r.id for r in remaining],
                  "dry_run": iam.dry_run})
    return _view(session, rev, subject, principals, iam.dry_run)


def restore_manual(session: Session, clock: Clock, iam: IamAccess, actor: Actor,
                   ref: directory.SubjectRef, note: str) -> list[RevocationView]:
    """An admin lifts every active revocation of the subject."""
    if not directory.has_role(session, actor, "admin"):
        raise Denied("only admins restore access directly; ask for it back with "
                               "the Request restore button on the revocation message")
    subject = directory.get(session, ref)
    revs = active(session, subject.id)
    if not revs:
        raise BadInput(f"{subject.name} is not revoked")
    for rev in revs:
        hold_off(session, clock, actor, rev)
    return [lift(session, clock, iam, actor, rev, note) for rev in revs]


def hold_off(session: Session, clock: Clock, actor: Actor, rev: Revocation,
             until: datetime | None = None, request_id: int | None = None) -> LimitException | None:
    """A restore of a limit revocation would be undone by the next enforce run while the
    subject is still over; an exception suspends that limit until its window ends (or
    `until`)."""
    if rev.reason == "manual" or rev.limit_id is None or session.get(Limit, rev.limit_id) is None:
        return None
    now = clock()
    if until is None:
        limit = session.get(Limit, rev.limit_id)
        assert limit is not None
        window = Window(limit.window)
        until = rev.window_end if (rev.window_end and rev.window_end > now and not window.rolling) \
            else now + (window.length or timedelta(days=1))
    exc = LimitException(limit_id=rev.limit_id, request_id=request_id, granted_by=actor.label,
                         created_at=now, expires_at=until)
    session.add(exc)
    session.flush()
    audit.record(session, clock, actor.label, "limit.exception", f"limit:{rev.limit_id}",
                 {"revocation": rev.id, "expires_at": until.isoformat()})
    return exc


def is_revoked(session: Session, subject_id: int) -> bool:
    return bool(active(session, subject_id))
