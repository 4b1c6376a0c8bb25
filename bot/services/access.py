"""Access: revoke and restore subjects through IAM deny policies, with one row per cause.

Policies are per (principal, subject): `bedrock-bot-deny-<subject>`. A subject may hold
several active revocations (a limit and a manual one); its policies come off only when
the last one is lifted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.access import IamAccess
from bot.aws.enforcement import Block, Method, enforcer
from bot.clock import Clock
from bot.errors import AwsError, BadInput
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
    blocks: tuple[Block, ...] = ()  # per principal: method and whether it took effect

    @property
    def blocked(self) -> bool:
        """At least one principal is blocked, and none is left open by a missing method."""
        return bool(self.blocks) and all(b.blocked for b in self.blocks)

    @property
    def not_blocked(self) -> tuple[Block, ...]:
        return tuple(b for b in self.blocks if not b.blocked)


def _view(session: Session, rev: Revocation, subject: Subject, principals: list[str],
          dry_run: bool = False, blocks: tuple[Block, ...] = ()) -> RevocationView:
    return RevocationView(rev.id, directory.info(subject), rev.reason, rev.note, rev.limit_id,
                          rev.window_end, rev.state, rev.revoked_by, rev.revoked_at, rev.restored_by,
                          tuple(principals), tuple(affected_users(session, subject)), dry_run, blocks)


def affected_users(session: Session, subject: Subject) -> list[str]:
    people = directory.members_of(session, subject) if subject.kind == "team" else [subject]
    return [p.slack_user_id for p in people if p.slack_user_id]


def deny_resources(session: Session, subject: Subject) -> list[str] | None:
    """What the deny covers: all inference, for a user and for a team alike. A team deny that
    named only the team's AIPs left its members free to call foundation models directly, so
    a team limit did not limit the team; every member's principals now lose all inference."""
    return None


def subject_aips(session: Session, subject: Subject) -> list[str]:
    """The AIPs of the subject (a team: its own and its members'): what the tag method flips."""
    ids = directory.covered_subject_ids(session, subject)
    return sorted(session.scalars(select(Profile.arn).where(Profile.subject_id.in_(ids))))


def bound_principals(session: Session, subject: Subject) -> list[str]:
    ids = directory.covered_subject_ids(session, subject)
    return [p.arn for p in directory.principals_of(session, ids)]


def active(session: Session, subject_id: int) -> list[Revocation]:
    return list(session.scalars(select(Revocation).where(
        Revocation.subject_id == subject_id, Revocation.state == "active").order_by(Revocation.id)))


@dataclass(frozen=True)
class DenyPlan:
    """What a deny must cover, read in a transaction and applied after it (no lock held)."""

    subject_id: int
    subject_name: str
    principals: tuple[str, ...]
    resources: tuple[str, ...] | None  # None: everything
    aips: tuple[str, ...] = ()  # the subject's AIPs (SSO sessions blocked by AIP tags)
    credentials: tuple[tuple[str, tuple[str, ...]], ...] = ()  # API keys the bot turned off


def plan_deny(session: Session, subject: Subject) -> DenyPlan:
    resources = deny_resources(session, subject)
    return DenyPlan(subject.id, subject.name, tuple(bound_principals(session, subject)),
                    tuple(resources) if resources is not None else None,
                    tuple(subject_aips(session, subject)), _credentials(session, subject))


def _credentials(session: Session, subject: Subject) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """API keys deactivated by any active revocation of the subject, by principal."""
    found: dict[str, set[str]] = {}
    for rev in active(session, subject.id):
        for arn, entry in (rev.enforcement or {}).items():
            found.setdefault(arn, set()).update(entry.get("credentials", []))
    return tuple((arn, tuple(sorted(ids))) for arn, ids in sorted(found.items()) if ids)


@dataclass(frozen=True)
class DenyOutcome:
    principals: list[str]  # every bound principal
    changed: list[str]  # written or changed now
    failed: dict[str, str]  # principal → AWS error code (deleted user, quota, AccessDenied …)
    blocks: dict[str, Block] = field(default_factory=dict)  # principal → what its method did

    @property
    def not_blocked(self) -> dict[str, str]:
        """Principals no configured method can block → why (never counted as revoked)."""
        return {arn: b.reason for arn, b in self.blocks.items() if not b.blocked}

    @property
    def credentials(self) -> dict[str, list[str]]:
        return {arn: list(b.credentials) for arn, b in self.blocks.items() if b.credentials}

    def record(self) -> dict[str, Any]:
        """What goes in `revocations.enforcement` and the audit row."""
        return {arn: {"kind": b.kind, "method": b.method, "blocked": b.blocked,
                      **({"reason": b.reason} if b.reason else {}),
                      **({"credentials": list(b.credentials)} if b.credentials else {})}
                for arn, b in self.blocks.items()}


def apply_deny(iam: IamAccess, plan: DenyPlan) -> DenyOutcome:
    """Block every planned principal by its kind's method (idempotent). No session.

    One principal failing (deleted outside the bot, inline quota full) does not stop the
    others; the failure is returned, audited by the caller and retried on the next run."""
    enf = enforcer(iam)
    out = DenyOutcome(list(plan.principals), [], {})
    for arn in plan.principals:
        try:
            block = enf.block(arn, plan.subject_name, plan.resources, plan.aips)
        except (AwsError, ValueError) as exc:
            out.failed[arn] = exc.code if isinstance(exc, AwsError) else "InvalidPrincipal"
            continue
        out.blocks[arn] = block
        if block.changed:
            out.changed.append(arn)
    return out


def remove_deny(iam: IamAccess, subject_name: str, principals: list[str],
                credentials: dict[str, list[str]] | None = None,
                aips: tuple[str, ...] = ()) -> dict[str, str]:
    """Undo each principal's block (idempotent): deny deleted, session taken out of the role's
    or the SCP's list, AIP tags set back, the API keys the bot deactivated reactivated."""
    enf = enforcer(iam)
    failed: dict[str, str] = {}
    for arn in principals:
        try:
            enf.release(arn, subject_name, (credentials or {}).get(arn, []), aips)
        except (AwsError, ValueError) as exc:
            failed[arn] = exc.code if isinstance(exc, AwsError) else "InvalidPrincipal"
    return failed


def revoked_subject_ids(session: Session) -> list[int]:
    return sorted(set(session.scalars(select(Revocation.subject_id).where(Revocation.state == "active"))))


def plan_reassert_one(session: Session, subject_id: int) -> DenyPlan | None:
    """A revoked subject's deny as it should be now: principals linked, members added or AIPs
    provisioned since the revocation are covered on the next enforce run. None once restored."""
    subject = session.get(Subject, subject_id)
    if subject is None or not active(session, subject_id):
        return None
    return plan_deny(session, subject)


def record_reassert(session: Session, clock: Clock, plan: DenyPlan, out: DenyOutcome) -> bool:
    """Remember the principals now covered; audit what changed or failed. True if changed."""
    subject = session.get(Subject, plan.subject_id)
    if subject is None:
        return False
    revs = active(session, subject.id)
    known = {arn for rev in revs for arn, e in (rev.enforcement or {}).items() if e.get("blocked") is False}
    for rev in revs:
        rev.principals = sorted(set(rev.principals or []) | set(out.principals))
        rev.enforcement = merge_enforcement(rev.enforcement or {}, out.record())
    label = f"{subject.kind}:{subject.name}"
    newly = {arn: why for arn, why in out.not_blocked.items() if arn not in known}
    if newly:  # once per principal, not every run (reconcile reports it hourly)
        audit.record(session, clock, "system:enforce", "access.reassert", label,
                     {"not_blocked": newly}, outcome="error")
    if out.changed:
        audit.record(session, clock, "system:enforce", "access.reassert", label, {"principals": out.changed})
    if out.failed:
        audit.record(session, clock, "system:enforce", "access.reassert", label, {"failed": out.failed},
                     outcome="error")
    session.flush()
    return bool(out.changed)


def merge_enforcement(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The newest method/state per principal, keeping every API key ever deactivated."""
    merged = {**old, **new}
    for arn, entry in new.items():
        keys = set(old.get(arn, {}).get("credentials", [])) | set(entry.get("credentials", []))
        if keys:
            merged[arn] = {**entry, "credentials": sorted(keys)}
    return merged


def principals_to_clear(session: Session, subject: Subject) -> list[str]:
    """Everyone who may carry the subject's deny: bound now, or recorded on any revocation."""
    recorded = session.scalars(select(Revocation.principals).where(Revocation.subject_id == subject.id))
    return sorted(set(bound_principals(session, subject)).union(*[set(r or []) for r in recorded]))


def record_revocation(session: Session, clock: Clock, actor: Actor, subject: Subject, reason: str,
                      note: str, limit_id: int | None, window: tuple[datetime, datetime] | None,
                      deny: DenyOutcome, dry_run: bool) -> RevocationView:
    """Record a revocation whose deny has been applied (`deny` says where it took effect)."""
    if reason not in REASONS:
        raise ValueError(f"unknown revocation reason {reason!r}")
    rev = Revocation(subject_id=subject.id, reason=reason, note=note[:500], limit_id=limit_id,
                     window_start=window[0] if window else None,
                     window_end=window[1] if window else None, state="active",
                     revoked_by=actor.label, revoked_at=clock(), principals=deny.principals)
    held: dict[str, Any] = {}
    for other in active(session, subject.id):  # the last one lifted must know every key turned off
        held = merge_enforcement(held, other.enforcement or {})
        other.enforcement = merge_enforcement(other.enforcement or {}, deny.record())
    rev.enforcement = merge_enforcement(held, deny.record())
    session.add(rev)
    session.flush()
    audit.record(session, clock, actor.label, "access.revoke", f"{subject.kind}:{subject.name}",
                 {"revocation": rev.id, "reason": reason, "note": note[:500], "limit": limit_id,
                  "principals": deny.principals, "dry_run": dry_run, "failed": deny.failed,
                  "methods": {a: b.method for a, b in deny.blocks.items()},
                  "not_blocked": deny.not_blocked},
                 outcome="error" if deny.failed or deny.not_blocked else "ok")
    return _view(session, rev, subject, deny.principals, dry_run, tuple(deny.blocks.values()))


def check_manual_revoke(session: Session, actor: Actor, ref: directory.SubjectRef) -> Subject:
    directory.authorize(session, actor, "admin", "revoke")
    subject = directory.get(session, ref)
    if any(r.reason == "manual" for r in active(session, subject.id)):
        raise BadInput(f"{subject.name} is already revoked by an admin")
    return subject


@dataclass(frozen=True)
class Lift:
    """A revocation marked restored; `principals` are to lose the deny (none while another
    revocation of the subject stays active)."""

    view: RevocationView
    subject_name: str
    principals: list[str]
    credentials: dict[str, list[str]] = field(default_factory=dict)  # API keys to turn back on
    aips: tuple[str, ...] = ()


def mark_lifted(session: Session, clock: Clock, actor: Actor, rev: Revocation, note: str = "",
                dry_run: bool = False) -> Lift:
    """Mark one revocation restored; the deny comes off (after the commit) when none is left."""
    subject = session.get(Subject, rev.subject_id)
    assert subject is not None
    rev.state, rev.restored_by, rev.restored_at = "restored", actor.label, clock()
    session.flush()
    credentials = {arn: list(ids) for arn, ids in _held_credentials(rev)}
    remaining = active(session, subject.id)
    principals = [] if remaining else principals_to_clear(session, subject)
    audit.record(session, clock, actor.label, "access.restore", f"{subject.kind}:{subject.name}",
                 {"revocation": rev.id, "reason": rev.reason, "note": note[:500],
                  "principals": principals, "still_revoked_by": [r.id for r in remaining],
                  "dry_run": dry_run})
    return Lift(_view(session, rev, subject, principals, dry_run), subject.name, principals,
                {} if remaining else credentials, () if remaining else tuple(subject_aips(session, subject)))


def _held_credentials(rev: Revocation) -> list[tuple[str, list[str]]]:
    return [(arn, list(e["credentials"])) for arn, e in (rev.enforcement or {}).items()
            if e.get("credentials")]


@dataclass(frozen=True)
class RestorePlan:
    """An admin's restore: the revocations to lift, and the denies to delete first."""

    subject_name: str
    revocation_ids: tuple[int, ...]
    clear: tuple[str, ...]  # principals whose deny comes off
    deny: DenyPlan  # to put back what was deleted when IAM refuses part of the restore


def plan_manual_restore(session: Session, actor: Actor, ref: directory.SubjectRef) -> RestorePlan:
    """An admin lifts every active revocation of the subject (authorized here)."""
    directory.authorize(session, actor, "admin", "restore")
    subject = directory.get(session, ref)
    revs = active(session, subject.id)
    if not revs:
        raise BadInput(f"{subject.name} is not revoked")
    return RestorePlan(subject.name, tuple(r.id for r in revs), tuple(principals_to_clear(session, subject)),
                       plan_deny(session, subject))


def record_manual_restore(session: Session, clock: Clock, actor: Actor, plan: RestorePlan, note: str,
                          dry_run: bool = False) -> list[Lift]:
    """After the denies are gone: mark the planned revocations restored (those still active)."""
    lifts = []
    for rev_id in plan.revocation_ids:
        rev = session.get(Revocation, rev_id)
        if rev is not None and rev.state == "active":
            hold_off(session, clock, actor, rev)
            lifts.append(mark_lifted(session, clock, actor, rev, note, dry_run))
    return lifts


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


@dataclass(frozen=True)
class UnlinkPlan:
    """A principal to unlink, and the subjects whose revocation put a block on it."""

    subject_name: str
    arn: str
    kind: str
    held_by: tuple[str, ...]  # subject names with an active revocation covering it
    credentials: tuple[str, ...]  # its API keys the bot deactivated
    aips: tuple[str, ...]


def plan_unlink(session: Session, actor: Actor, ref: directory.SubjectRef, arn: str) -> UnlinkPlan:
    subject, principal = directory.find_principal(session, actor, ref, arn)
    revs = list(session.scalars(select(Revocation).where(Revocation.state == "active")))
    holders = [r for r in revs if principal.arn in (r.principals or [])]
    names = sorted({s.name for r in holders if (s := session.get(Subject, r.subject_id)) is not None})
    keys = sorted({k for r in holders for k in (r.enforcement or {}).get(principal.arn, {}).get(
        "credentials", [])})
    # SSO sessions blocked by tags: the tags belong to the subject's AIPs, which stay revoked
    # while the subject is; unlinking one session does not flip them back.
    return UnlinkPlan(subject.name, principal.arn, principal.kind, tuple(names), tuple(keys), ())


def record_unlink(session: Session, clock: Clock, actor: Actor, plan: UnlinkPlan) -> bool:
    """Delete the link and forget the principal on the subjects' revocations (a later
    restore must not touch it again: it may belong to someone else by then)."""
    subject = directory.get(session, directory.SubjectRef(name=plan.subject_name))
    holders = [s for name in plan.held_by
               if (s := session.scalar(select(Subject).where(Subject.name == name))) is not None]
    for holder in {subject.id, *[h.id for h in holders]}:
        for rev in session.scalars(select(Revocation).where(Revocation.subject_id == holder)):
            if plan.arn in (rev.principals or []):
                rev.principals = [p for p in rev.principals if p != plan.arn]
                rev.enforcement = {k: v for k, v in (rev.enforcement or {}).items() if k != plan.arn}
    return directory.unlink_principal(session, clock, actor, subject, plan.arn,
                                      bool(plan.held_by) if plan.held_by else None)


def plan_check(session: Session, actor: Actor,
               ref: directory.SubjectRef | None) -> list[tuple[str, list[str]]]:
    """(subject, its bound principals) for one subject or, with no ref, every subject (admin)."""
    directory.authorize(session, actor, "admin", "check")
    subjects = [directory.get(session, ref)] if ref is not None else list(
        session.scalars(select(Subject).order_by(Subject.name)))
    return [(s.name, bound_principals(session, s)) for s in subjects]


@dataclass(frozen=True)
class SubjectCheck:
    subject: str
    methods: tuple[tuple[str, Method], ...]  # (principal ARN, how a revoke would block it)

    @property
    def blockable(self) -> bool:
        return bool(self.methods) and all(m.would_block for _, m in self.methods)
