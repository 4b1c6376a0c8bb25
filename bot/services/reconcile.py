"""Reconcile: compare the database with AWS and put back what the database says is true.

What is checked (DESIGN §4 "Revoke/restore", §5 `reconcile`):

- **Deny policies that must be there.** Every principal bound to a subject with an active
  revocation carries ``bedrock-bot-deny-<subject>``. A missing one is put back
  (``deny_missing``); one edited outside the bot is rewritten (``deny_altered``). This also
  repairs a restore whose IAM delete went through but whose database commit did not.
- **Deny policies that must not be there.** Every principal the database knows (the
  ``principals`` table and every ``revocations.principals`` list) is listed for the bot's
  policies; one for a subject with no active revocation is removed (``deny_stale``): the
  repair for a revoke whose IAM put went through but whose database commit did not. A bot
  policy naming a subject the database does not know is reported and left in place
  (``deny_unknown``): denying too much is the safe side, and the bot does not delete what
  it has no record of.
- **AIPs.** A recorded profile that AWS no longer lists is marked ``MISSING`` (never
  deleted; ``profile_missing``) and marked back when it shows up again (``profile_found``).
  An AIP tagged ``managed-by=bedrock-bot`` that the database does not record is reported,
  never deleted (``profile_unrecorded``). AIPs tagged ``user=``/``team=`` are adopted by the
  usage sync; reconcile does not duplicate that.

An AWS error for one principal or one AIP is a drift of its own (action ``failed: <code>``)
and the run goes on. Every drift gets an audit row (``system:reconcile``,
``reconcile.<kind>``). The audit rows and profile status changes are written after all the
AWS calls, so the audit chain's lock is not held while IAM answers.

Races with a concurrent revoke/restore: the revocation state is read again right before
each IAM write; on PostgreSQL the re-check before putting a deny back locks the active
revocation rows (``FOR UPDATE``), so a restore that is committing is waited for rather than
undone. A revoke's own IAM put precedes its commit; a deny removed in that gap is put back
by the next enforce run (``access.reassert``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.access import POLICY_PREFIX, IamAccess, policy_name
from bot.aws.profiles import MANAGED_BY_KEY, MANAGED_BY_VALUE, InferenceProfileInfo, ProfilesBackend
from bot.clock import Clock
from bot.errors import AwsError
from bot.models import Principal, Profile, Revocation, Subject
from bot.services import access, audit
from bot.services.directory import Actor

ACTOR = Actor.system("reconcile")
MISSING = "MISSING"

# Drift kinds, in the order a report lists them.
DENY_MISSING = "deny_missing"
DENY_ALTERED = "deny_altered"
DENY_STALE = "deny_stale"
DENY_UNKNOWN = "deny_unknown"
PROFILE_MISSING = "profile_missing"
PROFILE_FOUND = "profile_found"
PROFILE_UNRECORDED = "profile_unrecorded"
IAM_ERROR = "iam_error"  # a principal's policies could not be read
PROFILES_ERROR = "profiles_error"  # the AIP list (or one AIP's tags) could not be read
KINDS = (DENY_MISSING, DENY_ALTERED, DENY_STALE, DENY_UNKNOWN, PROFILE_MISSING, PROFILE_FOUND,
         PROFILE_UNRECORDED, IAM_ERROR, PROFILES_ERROR)

FAILED = "failed: "
T = TypeVar("T")


@dataclass(frozen=True)
class Drift:
    """One difference between the database and AWS, and what reconcile did about it.

    `target` is the principal ARN (deny kinds) or the AIP ARN (profile kinds); `subject`
    the subject name involved, when there is one; `action_taken` e.g. ``restored``,
    ``removed``, ``marked MISSING``, ``reported``, ``failed: AccessDenied``.
    """

    kind: str
    subject: str | None
    target: str
    action_taken: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.action_taken.startswith(FAILED)


@dataclass
class ReconcileReport:
    drifts: list[Drift] = field(default_factory=list)
    revoked_subjects: int = 0  # subjects with an active revocation
    principals_checked: int = 0
    profiles_listed: int = 0  # AIPs AWS listed (0 when the list failed)
    dry_run: bool = False

    @property
    def failures(self) -> list[Drift]:
        return [d for d in self.drifts if d.failed]

    def of_kind(self, kind: str) -> list[Drift]:
        return [d for d in self.drifts if d.kind == kind]


@dataclass
class _Run:
    session: Session
    clock: Clock
    iam: IamAccess
    report: ReconcileReport
    pending_audit: list[tuple[Drift, str, dict[str, Any]]] = field(default_factory=list)
    pending_status: list[tuple[Profile, str]] = field(default_factory=list)
    pending_principals: list[tuple[Revocation, list[str]]] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)
    failed_principals: set[str] = field(default_factory=set)

    def drift(self, drift: Drift, audit_target: str, **details: Any) -> None:
        self.report.drifts.append(drift)
        self.pending_audit.append((drift, audit_target, details))


def reconcile(session: Session, clock: Clock, iam: IamAccess, backend: ProfilesBackend) -> ReconcileReport:
    """Compare the database with AWS, restore what the database says, report every drift."""
    run = _Run(session, clock, iam, ReconcileReport(dry_run=iam.dry_run))
    subjects = list(session.scalars(select(Subject).order_by(Subject.id)))
    revoked_ids = _revoked_subject_ids(session)
    run.report.revoked_subjects = len(revoked_ids)
    for subject in subjects:
        if subject.id in revoked_ids:
            _assert_denies(run, subject)
    _remove_stale(run, subjects)
    _check_profiles(run, backend, subjects)
    run.report.principals_checked = len(run.checked)
    _write(run)
    return run.report


# ---------------------------------------------------------------- deny policies


def _label(subject: Subject) -> str:
    return f"{subject.kind}:{subject.name}"


def _revoked_subject_ids(session: Session) -> set[int]:
    return set(session.scalars(select(Revocation.subject_id).where(Revocation.state == "active")))


def _still_revoked(session: Session, subject_id: int, lock: bool) -> bool:
    """Read again now (READ COMMITTED on PostgreSQL: sees what committed meanwhile)."""
    q = select(Revocation.id).where(Revocation.subject_id == subject_id, Revocation.state == "active")
    if lock:  # waits for a restore that has updated the row and not committed yet
        q = q.with_for_update()
    return bool(session.scalars(q).all())


def _try(call: Callable[..., T], *args: Any) -> T | AwsError:
    """One AWS call: an AwsError (or an ARN IAM can't take) is returned, never raised."""
    try:
        return call(*args)
    except AwsError as exc:
        return exc
    except ValueError as exc:  # parse_principal: an ARN that is no IAM user or role
        return AwsError("ParsePrincipal", "InvalidArn", str(exc))


def _failed(run: _Run, kind: str, subject: Subject | None, principal: str, err: AwsError) -> None:
    run.failed_principals.add(principal)
    run.drift(Drift(kind, subject.name if subject else None, principal, FAILED + err.code, str(err)[:300]),
              _label(subject) if subject else principal, principal=principal, error=str(err)[:500])


def _assert_denies(run: _Run, subject: Subject) -> None:
    """Every bound principal of a revoked subject carries its deny, as the database says."""
    session, iam = run.session, run.iam
    resources = access.deny_resources(session, subject)
    principals = access.bound_principals(session, subject)
    for arn in principals:
        run.checked.add(arn)
        present = _try(iam.has_deny, arn, subject.name)
        if isinstance(present, AwsError):  # could not even look
            _failed(run, IAM_ERROR, subject, arn, present)
            continue
        if not present and not _still_revoked(session, subject.id, lock=True):
            continue  # restored meanwhile: nothing to put back
        result = _try(iam.deny, arn, subject.name, resources)
        if isinstance(result, AwsError):
            _failed(run, DENY_MISSING if not present else DENY_ALTERED, subject, arn, result)
            continue
        if not result.changed:
            continue
        kind = DENY_ALTERED if present else DENY_MISSING
        verb = "rewritten" if present else "restored"
        action = f"would be {verb} (dry run)" if iam.dry_run else verb
        scope = ", ".join(result.resources)
        run.drift(Drift(kind, subject.name, arn, action, f"{result.policy_name} on {scope}"),
                  _label(subject), principal=arn, policy=result.policy_name,
                  resources=list(result.resources), dry_run=iam.dry_run)
    # Record the principals so a later restore reaches them even if they are unbound first
    # (written with the audit rows, after the AWS calls).
    for rev in access.active(session, subject.id):
        merged = sorted(set(rev.principals or []) | set(principals))
        if merged != sorted(rev.principals or []):
            run.pending_principals.append((rev, merged))


def _known_principals(session: Session) -> list[str]:
    arns = set(session.scalars(select(Principal.arn)))
    for recorded in session.scalars(select(Revocation.principals)):
        arns.update(a for a in (recorded or []) if isinstance(a, str) and a)
    return sorted(arns)


def _remove_stale(run: _Run, subjects: list[Subject]) -> None:
    """Take off bot deny policies whose subject has no active revocation."""
    session, iam = run.session, run.iam
    by_policy = {policy_name(s.name): s for s in subjects}
    revoked = _revoked_subject_ids(session)
    for arn in _known_principals(session):
        if arn in run.failed_principals:
            continue  # already reported for this run; tried again on the next
        run.checked.add(arn)
        found = _try(iam.denied_subjects, arn)
        if isinstance(found, AwsError):
            _failed(run, IAM_ERROR, None, arn, found)
            continue
        for suffix in found:
            name = POLICY_PREFIX + suffix
            subject = by_policy.get(name)
            if subject is None:
                run.drift(Drift(DENY_UNKNOWN, None, arn, "reported (left in place)",
                                f"{name} names no subject in the database"),
                          arn, principal=arn, policy=name)
                continue
            if subject.id in revoked or _still_revoked(session, subject.id, lock=False):
                continue
            removed = _try(iam.allow, arn, subject.name)
            if isinstance(removed, AwsError):
                _failed(run, DENY_STALE, subject, arn, removed)
                continue
            if not removed:
                continue  # gone between the list and the delete
            action = "would be removed (dry run)" if iam.dry_run else "removed"
            run.drift(Drift(DENY_STALE, subject.name, arn, action, f"{name}: no active revocation"),
                      _label(subject), principal=arn, policy=name, dry_run=iam.dry_run)


# ---------------------------------------------------------------- profiles


def _check_profiles(run: _Run, backend: ProfilesBackend, subjects: list[Subject]) -> None:
    session = run.session
    listed = _try(backend.list_application)
    if isinstance(listed, AwsError):
        run.drift(Drift(PROFILES_ERROR, None, "ListInferenceProfiles", FAILED + listed.code,
                        str(listed)[:300]), "profiles", error=str(listed)[:500])
        return
    run.report.profiles_listed = len(listed)
    in_aws: dict[str, InferenceProfileInfo] = {p.arn: p for p in listed}
    owners = {s.id: s for s in subjects}
    recorded = list(session.scalars(select(Profile).order_by(Profile.id)))
    for profile in recorded:
        owner = owners.get(profile.subject_id) if profile.subject_id is not None else None
        where = _label(owner) if owner else profile.arn
        info = in_aws.get(profile.arn)
        if info is None and profile.status != MISSING:
            run.pending_status.append((profile, MISSING))
            run.drift(Drift(PROFILE_MISSING, owner.name if owner else None, profile.arn,
                            f"marked {MISSING}", f"{profile.name} ({profile.profile_id}) is not in AWS"),
                      where, arn=profile.arn, name=profile.name, was=profile.status)
        elif info is not None and profile.status == MISSING:
            status = info.status or "ACTIVE"
            run.pending_status.append((profile, status))
            run.drift(Drift(PROFILE_FOUND, owner.name if owner else None, profile.arn,
                            f"marked {status}", f"{profile.name} ({profile.profile_id}) is back in AWS"),
                      where, arn=profile.arn, name=profile.name, status=status)
    known = {p.arn for p in recorded}
    for info in sorted(listed, key=lambda i: (i.name, i.arn)):  # a stable report order
        if info.arn in known:
            continue
        tags = dict(info.tags) if info.tags is not None else _try(backend.tags_of, info.arn)
        if isinstance(tags, AwsError):
            if tags.code != "ResourceNotFoundException":  # deleted since the list: nothing to say
                run.drift(Drift(PROFILES_ERROR, None, info.arn, FAILED + tags.code, str(tags)[:300]),
                          info.arn, arn=info.arn, error=str(tags)[:500])
            continue
        if tags.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
            continue
        owner_tag = tags.get("team") or tags.get("user")
        detail = f"{info.name} ({info.id}) is tagged {MANAGED_BY_KEY}={MANAGED_BY_VALUE}"
        detail += (f"; the usage sync adopts it ({'team' if tags.get('team') else 'user'}={owner_tag})"
                   if owner_tag else "; no user=/team= tag, so nothing adopts it")
        run.drift(Drift(PROFILE_UNRECORDED, owner_tag, info.arn, "reported (not deleted)", detail),
                  info.arn, arn=info.arn, name=info.name, tags=tags)


# ---------------------------------------------------------------- writes


def _write(run: _Run) -> None:
    for profile, status in run.pending_status:
        profile.status = status
    for rev, principals in run.pending_principals:
        rev.principals = principals
    for drift, target, details in run.pending_audit:
        audit.record(run.session, run.clock, ACTOR.label, f"reconcile.{drift.kind}", target,
                     {"subject": drift.subject, "target": drift.target, "action": drift.action_taken,
                      **details}, outcome="error" if drift.failed else "ok")
    run.session.flush()
