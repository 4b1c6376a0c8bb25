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
``reconcile.<kind>``).

Three steps, run by `bot/flows/reconcile.py`, so that no transaction is open while IAM or
Bedrock answers: `read_state` (a short transaction: subjects, active revocations, their
principals and deny scope, known principals, recorded AIPs, as plain data), `check_aws`
(the AWS reads and fixes, no session), `record` (a short transaction: profile statuses,
principals remembered on the revocations, the audit rows).

Races with a concurrent revoke/restore: the revocation state is read again, each time in a
short transaction of its own, right before each IAM write; on PostgreSQL the re-check before
putting a deny back locks the active revocation rows (``FOR UPDATE``), so a restore that is
committing is waited for rather than undone. After a put, the state is read once more: a
restore that committed while IAM was being written wins, and the deny is taken off again
(a restore deletes its deny after its commit, so one committing later removes it itself).
A revoke's own IAM put precedes its commit; a deny removed in that gap is put back by the
next enforce run (``access.reassert``). The record step re-reads what it changes: a profile
whose status changed meanwhile is left alone, and an AIP recorded meanwhile (a provision
between its Bedrock call and its commit) is not reported as unrecorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.access import POLICY_PREFIX, IamAccess, policy_name
from bot.aws.enforcement import enforcer
from bot.aws.principals import kind_of
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
NOT_BLOCKABLE = "not_blocked"  # a revoked subject's principal no configured method can block
PROFILES_ERROR = "profiles_error"  # the AIP list (or one AIP's tags) could not be read
KINDS = (DENY_MISSING, DENY_ALTERED, DENY_STALE, DENY_UNKNOWN, PROFILE_MISSING, PROFILE_FOUND,
         PROFILE_UNRECORDED, IAM_ERROR, PROFILES_ERROR, NOT_BLOCKABLE)

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


# ---------------------------------------------------------------- the database's side


@dataclass(frozen=True)
class SubjectRow:
    id: int
    kind: str
    name: str

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class RevokedDeny:
    """A subject with an active revocation, and the deny its principals must carry."""

    subject: SubjectRow
    principals: tuple[str, ...]
    resources: tuple[str, ...] | None  # None: everything
    aips: tuple[str, ...] = ()  # the subject's AIPs (SSO sessions blocked by tags)


@dataclass(frozen=True)
class ProfileRow:
    id: int
    arn: str
    name: str
    profile_id: str
    status: str
    owner: SubjectRow | None


@dataclass(frozen=True)
class DbState:
    """What the database says, read in one short transaction (plain data)."""

    subjects: tuple[SubjectRow, ...]
    revoked: tuple[RevokedDeny, ...]
    known_principals: tuple[str, ...]  # the principals table and every revocation's list
    profiles: tuple[ProfileRow, ...]


def read_state(session: Session) -> DbState:
    subjects = list(session.scalars(select(Subject).order_by(Subject.id)))
    rows = {s.id: SubjectRow(s.id, s.kind, s.name) for s in subjects}
    revoked_ids = set(session.scalars(select(Revocation.subject_id).where(Revocation.state == "active")))
    revoked = []
    for subject in subjects:
        if subject.id in revoked_ids:
            resources = access.deny_resources(session, subject)
            revoked.append(RevokedDeny(rows[subject.id], tuple(access.bound_principals(session, subject)),
                                       tuple(resources) if resources is not None else None,
                                       tuple(access.subject_aips(session, subject))))
    arns = set(session.scalars(select(Principal.arn)))
    for recorded in session.scalars(select(Revocation.principals)):
        arns.update(a for a in (recorded or []) if isinstance(a, str) and a)
    profiles = tuple(
        ProfileRow(p.id, p.arn, p.name, p.profile_id, p.status,
                   rows.get(p.subject_id) if p.subject_id is not None else None)
        for p in session.scalars(select(Profile).order_by(Profile.id)))
    return DbState(tuple(rows.values()), tuple(revoked), tuple(sorted(arns)), profiles)


def still_revoked(session: Session, subject_id: int, lock: bool) -> bool:
    """Read again now (READ COMMITTED on PostgreSQL: sees what committed meanwhile)."""
    q = select(Revocation.id).where(Revocation.subject_id == subject_id, Revocation.state == "active")
    if lock:  # waits for a restore that has updated the row and not committed yet
        q = q.with_for_update()
    return bool(session.scalars(q).all())


# ---------------------------------------------------------------- the AWS side (no session)

StillRevoked = Callable[[int, bool], bool]  # (subject id, lock) → revoked now? One short transaction.


@dataclass
class Findings:
    """The AWS side's result: the report, and what the record step is to write."""

    report: ReconcileReport
    audit: list[tuple[Drift, str, dict[str, Any]]] = field(default_factory=list)
    status: list[tuple[Drift, int, str, str]] = field(default_factory=list)  # profile id, seen, new
    principals: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)  # subject id, bound


@dataclass
class _Run:
    iam: IamAccess
    still_revoked: StillRevoked
    found: Findings
    checked: set[str] = field(default_factory=set)
    failed_principals: set[str] = field(default_factory=set)

    def drift(self, drift: Drift, audit_target: str, **details: Any) -> None:
        self.found.report.drifts.append(drift)
        self.found.audit.append((drift, audit_target, details))


def check_aws(state: DbState, iam: IamAccess, backend: ProfilesBackend,
              revoked_now: StillRevoked) -> Findings:
    """Compare the database's state with AWS and put IAM back as the database says.

    Called with no transaction open; `revoked_now` re-reads one subject's revocation state
    in a short transaction of its own, right before (and after) each IAM write.
    """
    run = _Run(iam, revoked_now, Findings(ReconcileReport(dry_run=iam.dry_run)))
    run.found.report.revoked_subjects = len(state.revoked)
    for deny in state.revoked:
        _assert_denies(run, deny)
    _remove_stale(run, state)
    _check_profiles(run, backend, state)
    run.found.report.principals_checked = len(run.checked)
    return run.found


# ---------------------------------------------------------------- deny policies


def _try(call: Callable[..., T], *args: Any) -> T | AwsError:
    """One AWS call: an AwsError (or an ARN IAM can't take) is returned, never raised."""
    try:
        return call(*args)
    except AwsError as exc:
        return exc
    except ValueError as exc:  # parse_principal: an ARN that is no IAM user or role
        return AwsError("ParsePrincipal", "InvalidArn", str(exc))


def _failed(run: _Run, kind: str, subject: SubjectRow | None, principal: str, err: AwsError) -> None:
    run.failed_principals.add(principal)
    run.drift(Drift(kind, subject.name if subject else None, principal, FAILED + err.code, str(err)[:300]),
              subject.label if subject else principal, principal=principal, error=str(err)[:500])


def _assert_denies(run: _Run, deny: RevokedDeny) -> None:
    """Every bound principal of a revoked subject carries its deny, as the database says."""
    iam, subject = run.iam, deny.subject
    for arn in deny.principals:
        run.checked.add(arn)
        if not _inline(arn):
            _assert_other(run, deny, arn)
            continue
        present = _try(iam.has_deny, arn, subject.name)
        if isinstance(present, AwsError):  # could not even look
            _failed(run, IAM_ERROR, subject, arn, present)
            continue
        if not present and not run.still_revoked(subject.id, True):
            continue  # restored meanwhile: nothing to put back
        result = _try(iam.deny, arn, subject.name, deny.resources)
        if isinstance(result, AwsError):
            _failed(run, DENY_MISSING if not present else DENY_ALTERED, subject, arn, result)
            continue
        if not result.changed:
            continue
        if not run.still_revoked(subject.id, True):
            _take_back(run, subject, arn)  # a restore committed while IAM was written
            continue
        kind = DENY_ALTERED if present else DENY_MISSING
        verb = "rewritten" if present else "restored"
        action = f"would be {verb} (dry run)" if iam.dry_run else verb
        scope = ", ".join(result.resources)
        run.drift(Drift(kind, subject.name, arn, action, f"{result.policy_name} on {scope}"),
                  subject.label, principal=arn, policy=result.policy_name,
                  resources=list(result.resources), dry_run=iam.dry_run)
    # Record the principals so a later restore reaches them even if they are unbound first.
    run.found.principals.append((subject.id, deny.principals))


def _inline(arn: str) -> bool:
    """Blocked by the per-subject inline deny (users, own roles, API-key users)."""
    return kind_of(arn) in ("user", "role", "apikey")


def _assert_other(run: _Run, deny: RevokedDeny, arn: str) -> None:
    """A session (role policy condition), an SSO session (AIP tags or SCP): report what is not
    blocked, put back a block that is missing."""
    enf, subject = enforcer(run.iam), deny.subject
    method = enf.method(arn)
    if not method.would_block:
        run.drift(Drift(NOT_BLOCKABLE, subject.name, arn, "reported", method.missing),
                  subject.label, principal=arn, method=method.method)
        return
    present = _try(enf.is_blocked, arn, subject.name, deny.aips)
    if isinstance(present, AwsError):
        _failed(run, IAM_ERROR, subject, arn, present)
        return
    if present is not False or not run.still_revoked(subject.id, True):
        return
    done = _try(enf.block, arn, subject.name, deny.resources, deny.aips)
    if isinstance(done, AwsError):
        _failed(run, DENY_MISSING, subject, arn, done)
        return
    action = "would be restored (dry run)" if run.iam.dry_run else "restored"
    run.drift(Drift(DENY_MISSING, subject.name, arn, action, method.method), subject.label,
              principal=arn, method=method.method, dry_run=run.iam.dry_run)


def _take_back(run: _Run, subject: SubjectRow, arn: str) -> None:
    """Undo a put that a restore overtook (the restore's own delete may have come first)."""
    removed = _try(run.iam.allow, arn, subject.name)
    if isinstance(removed, AwsError):
        _failed(run, DENY_STALE, subject, arn, removed)


def _remove_stale(run: _Run, state: DbState) -> None:
    """Take off bot deny policies whose subject has no active revocation."""
    iam = run.iam
    by_policy = {policy_name(s.name): s for s in state.subjects}
    revoked = {d.subject.id for d in state.revoked}
    for arn in state.known_principals:
        if arn in run.failed_principals or not _inline(arn):
            continue  # reported already (tried again next run); sessions: see docs/enforcement.md
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
            if subject.id in revoked or run.still_revoked(subject.id, False):
                continue
            removed = _try(iam.allow, arn, subject.name)
            if isinstance(removed, AwsError):
                _failed(run, DENY_STALE, subject, arn, removed)
                continue
            if not removed:
                continue  # gone between the list and the delete
            action = "would be removed (dry run)" if iam.dry_run else "removed"
            run.drift(Drift(DENY_STALE, subject.name, arn, action, f"{name}: no active revocation"),
                      subject.label, principal=arn, policy=name, dry_run=iam.dry_run)


# ---------------------------------------------------------------- profiles


def _check_profiles(run: _Run, backend: ProfilesBackend, state: DbState) -> None:
    listed = _try(backend.list_application)
    if isinstance(listed, AwsError):
        run.drift(Drift(PROFILES_ERROR, None, "ListInferenceProfiles", FAILED + listed.code,
                        str(listed)[:300]), "profiles", error=str(listed)[:500])
        return
    run.found.report.profiles_listed = len(listed)
    in_aws: dict[str, InferenceProfileInfo] = {p.arn: p for p in listed}
    for profile in state.profiles:
        owner = profile.owner
        where = owner.label if owner else profile.arn
        info = in_aws.get(profile.arn)
        if info is None and profile.status != MISSING:
            drift = Drift(PROFILE_MISSING, owner.name if owner else None, profile.arn,
                          f"marked {MISSING}", f"{profile.name} ({profile.profile_id}) is not in AWS")
            run.found.status.append((drift, profile.id, profile.status, MISSING))
            run.drift(drift, where, arn=profile.arn, name=profile.name, was=profile.status)
        elif info is not None and profile.status == MISSING:
            status = info.status or "ACTIVE"
            drift = Drift(PROFILE_FOUND, owner.name if owner else None, profile.arn,
                          f"marked {status}", f"{profile.name} ({profile.profile_id}) is back in AWS")
            run.found.status.append((drift, profile.id, profile.status, status))
            run.drift(drift, where, arn=profile.arn, name=profile.name, status=status)
    known = {p.arn for p in state.profiles}
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


def record(session: Session, clock: Clock, found: Findings) -> ReconcileReport:
    """Write what the AWS side found, against the database as it is now: a status changed
    or an AIP recorded meanwhile (a provision finishing) is not overwritten or reported."""
    dropped = _overtaken(session, found)
    for drift, profile_id, _, status in found.status:
        profile = session.get(Profile, profile_id)
        if profile is not None and not _is_in(drift, dropped):
            profile.status = status
    for subject_id, bound in found.principals:
        for rev in access.active(session, subject_id):
            merged = sorted(set(rev.principals or []) | set(bound))
            if merged != sorted(rev.principals or []):
                rev.principals = merged
    report = found.report
    report.drifts = [d for d in report.drifts if not _is_in(d, dropped)]
    for drift, target, details in found.audit:
        if _is_in(drift, dropped):
            continue
        audit.record(session, clock, ACTOR.label, f"reconcile.{drift.kind}", target,
                     {"subject": drift.subject, "target": drift.target, "action": drift.action_taken,
                      **details}, outcome="error" if drift.failed else "ok")
    session.flush()
    return report


def _overtaken(session: Session, found: Findings) -> list[Drift]:
    dropped = []
    for drift, profile_id, seen, _ in found.status:
        profile = session.get(Profile, profile_id)
        if profile is None or profile.status != seen:
            dropped.append(drift)
    unrecorded = [d for d in found.report.drifts if d.kind == PROFILE_UNRECORDED]
    if unrecorded:
        now_known = set(session.scalars(select(Profile.arn).where(
            Profile.arn.in_([d.target for d in unrecorded]))))
        dropped += [d for d in unrecorded if d.target in now_known]
    return dropped


def _is_in(drift: Drift, drifts: list[Drift]) -> bool:
    return any(drift is d for d in drifts)
