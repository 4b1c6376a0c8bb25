"""Who is who: subjects (users, teams), team members, IAM principals, meters, admins.

`authorize` is the one authorization check every command goes through; it reads the
`admins` table at the moment of the action.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Subquery, select, union
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.aws.principals import classify
from bot.clock import Clock
from bot.errors import BadInput, Denied, NotFound
from bot.models import Admin, Meter, Principal, Subject, TeamMember
from bot.services import audit

ROLES = ("owner", "admin", "approver")
_RANK = {"approver": 1, "admin": 2, "owner": 3}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
TEAM_RE = re.compile(r"^team-[a-z0-9][a-z0-9._-]{0,58}\Z")


@dataclass(frozen=True)
class Actor:
    """Who is acting: `slack:U…`, `system:<job>`, `sns:<topic>` or `cli:<os user>`."""

    label: str
    slack_user_id: str | None = None

    @classmethod
    def slack(cls, user_id: str) -> Actor:
        return cls(f"slack:{user_id}", user_id)

    @classmethod
    def system(cls, job: str) -> Actor:
        return cls(f"system:{job}")


@dataclass(frozen=True)
class SubjectRef:
    """A subject as typed: a Slack mention (id, maybe a label) or a plain name."""

    name: str | None = None
    slack_user_id: str | None = None

    def __str__(self) -> str:
        return f"<@{self.slack_user_id}>" if self.slack_user_id else str(self.name)


@dataclass(frozen=True)
class SubjectInfo:
    id: int
    kind: str
    name: str
    slack_user_id: str | None
    created_at: datetime

    @property
    def mention(self) -> str:
        return f"<@{self.slack_user_id}>" if self.slack_user_id else f"`{self.name}`"


def info(s: Subject) -> SubjectInfo:
    return SubjectInfo(s.id, s.kind, s.name, s.slack_user_id, s.created_at)


# ---- admins and authorization -------------------------------------------------------

def bootstrap_admins(session: Session, clock: Clock, user_ids: list[str]) -> list[str]:
    """Make every `BOT_ADMINS` id an owner (idempotent). Returns the ids that were added."""
    added = []
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    for uid in user_ids:
        # INSERT … ON CONFLICT: two replicas starting together must not trip over each other.
        stmt = insert(Admin).values(slack_user_id=uid, role="owner", added_by="config:BOT_ADMINS",
                                    added_at=clock()).on_conflict_do_nothing()
        if session.execute(stmt.returning(Admin.slack_user_id)).first() is not None:
            added.append(uid)
            continue
        row = session.get(Admin, uid)
        if row is not None and row.role != "owner":
            row.role = "owner"
            added.append(uid)
    if added:
        session.flush()
        audit.record(session, clock, "config:BOT_ADMINS", "admins.bootstrap", "admins",
                     {"owners": added})
    return added


def role_of(session: Session, slack_user_id: str | None) -> str | None:
    if not slack_user_id:
        return None
    row = session.get(Admin, slack_user_id)
    return row.role if row else None


def has_role(session: Session, actor: Actor, need: str) -> bool:
    if actor.slack_user_id is None:
        return actor.label.startswith(("system:", "cli:", "sns:", "config:"))
    role = role_of(session, actor.slack_user_id)
    return role is not None and _RANK[role] >= _RANK[need]


def authorize(session: Session, actor: Actor, need: str, action: str) -> None:
    """Raise Denied unless `actor` holds `need` or better. System actors pass."""
    if not has_role(session, actor, need):
        raise Denied(f"`{action}` needs the {need} role; ask an owner (`/bedrock admins`).")


def set_admin(session: Session, clock: Clock, actor: Actor, user_id: str, role: str) -> None:
    authorize(session, actor, "owner", "admins add")
    if role not in ROLES:
        raise BadInput(f"unknown role {role!r}: use {', '.join(ROLES)}")
    row = session.get(Admin, user_id)
    before = row.role if row else None
    if before == "owner" and role != "owner" and _owners(session) == 1:
        raise BadInput("refusing to demote the last owner; make someone else owner first")
    if row is None:
        session.add(Admin(slack_user_id=user_id, role=role, added_by=actor.label, added_at=clock()))
    else:
        row.role = role
    session.flush()
    audit.record(session, clock, actor.label, "admins.add", f"slack:{user_id}",
                 {"role": role, "before": before})


def remove_admin(session: Session, clock: Clock, actor: Actor, user_id: str) -> None:
    authorize(session, actor, "owner", "admins remove")
    row = session.get(Admin, user_id)
    if row is None:
        raise NotFound(f"<@{user_id}> is not an admin")
    if row.role == "owner" and _owners(session) == 1:
        raise BadInput("refusing to remove the last owner")
    session.delete(row)
    session.flush()
    audit.record(session, clock, actor.label, "admins.remove", f"slack:{user_id}",
                 {"role": row.role})


def _owners(session: Session) -> int:
    return len(session.scalars(select(Admin.slack_user_id).where(Admin.role == "owner")).all())


def list_admins(session: Session) -> list[tuple[str, str]]:
    rows = session.scalars(select(Admin).order_by(Admin.role, Admin.slack_user_id))
    return [(r.slack_user_id, r.role) for r in rows]


# ---- subjects ------------------------------------------------------------------------

def normalise_name(raw: str) -> str:
    """Slack handles to subject names: accents folded (ålice → alice), the rest → '-'."""
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    name = folded.strip().lower().lstrip("@")
    name = re.sub(r"[^a-z0-9._-]+", "-", name).strip("-._")[:64]
    return name


def find(session: Session, ref: SubjectRef) -> Subject | None:
    if ref.slack_user_id:
        return session.scalar(select(Subject).where(Subject.slack_user_id == ref.slack_user_id))
    return session.scalar(select(Subject).where(Subject.name == (ref.name or "").lower()))


def get(session: Session, ref: SubjectRef, hint: str = "") -> Subject:
    subject = find(session, ref)
    if subject is None:
        raise NotFound(f"no subject {ref} yet{hint}")
    return subject


def ensure_user(session: Session, clock: Clock, actor: Actor, ref: SubjectRef) -> Subject:
    """Find or create the user subject for a mention (or a bare user name)."""
    found = find(session, ref)
    if found is not None:
        if found.kind != "user":
            raise BadInput(f"{ref} is a team, not a user")
        return found
    name = normalise_name(ref.name or ref.slack_user_id or "")
    if not NAME_RE.match(name) or name.startswith("team-"):
        raise BadInput(f"{ref!s:.80} is not a valid user name (a-z, 0-9, . _ -; not team-…)")
    if session.scalar(select(Subject).where(Subject.name == name)) is not None:
        name = normalise_name(f"{name}-{(ref.slack_user_id or '').lower()}")
    return _create(session, clock, actor, "user", name, ref.slack_user_id)


def ensure_team(session: Session, clock: Clock, actor: Actor, name: str) -> Subject:
    name = name.strip().lower()
    if not TEAM_RE.match(name):
        raise BadInput(f"{name[:80]!r} is not a team name: teams are named team-<name>")
    found = session.scalar(select(Subject).where(Subject.name == name))
    return found or _create(session, clock, actor, "team", name, None)


def ensure(session: Session, clock: Clock, actor: Actor, ref: SubjectRef) -> Subject:
    if ref.slack_user_id is None and (ref.name or "").startswith("team-"):
        return ensure_team(session, clock, actor, ref.name or "")
    return ensure_user(session, clock, actor, ref)


def _create(session: Session, clock: Clock, actor: Actor, kind: str, name: str,
            slack_user_id: str | None) -> Subject:
    subject = Subject(kind=kind, name=name, slack_user_id=slack_user_id, created_by=actor.label,
                      created_at=clock())
    session.add(subject)
    session.flush()
    audit.record(session, clock, actor.label, "subject.create", f"{kind}:{name}",
                 {"slack_user_id": slack_user_id})
    return subject


def teams_of(session: Session, user: Subject) -> list[Subject]:
    q = (select(Subject).join(TeamMember, TeamMember.team_id == Subject.id)
         .where(TeamMember.user_id == user.id).order_by(Subject.name))
    return list(session.scalars(q))


def members_of(session: Session, team: Subject) -> list[Subject]:
    q = (select(Subject).join(TeamMember, TeamMember.user_id == Subject.id)
         .where(TeamMember.team_id == team.id).order_by(Subject.name))
    return list(session.scalars(q))


def covered_subject_ids(session: Session, subject: Subject) -> list[int]:
    """A team covers itself and its members; a user covers itself."""
    if subject.kind == "team":
        return [subject.id, *(m.id for m in members_of(session, subject))]
    return [subject.id]


def coverage(subject_ids: Collection[int]) -> Subquery:
    """`covered_subject_ids` of many subjects in one SQL subquery: a row (group_id, subject_id)
    for each subject covering itself and, for a team, for each of its members."""
    ids = sorted(set(subject_ids))
    return union(
        select(Subject.id.label("group_id"), Subject.id.label("subject_id")).where(Subject.id.in_(ids)),
        select(TeamMember.team_id, TeamMember.user_id).join(Subject, Subject.id == TeamMember.team_id)
        .where(Subject.kind == "team", TeamMember.team_id.in_(ids)),
    ).subquery("covered")


def change_members(session: Session, clock: Clock, actor: Actor, team_name: str, op: str,
                   refs: list[SubjectRef]) -> tuple[Subject, list[Subject]]:
    authorize(session, actor, "admin", f"team {op}")
    if op not in ("add", "remove"):
        raise BadInput(f"unknown team operation {op!r}: use add or remove")
    team = ensure_team(session, clock, actor, team_name) if op == "add" else get(
        session, SubjectRef(name=team_name))
    if team.kind != "team":
        raise BadInput(f"{team.name} is not a team")
    changed: list[Subject] = []
    for ref in refs:
        if op == "add":
            user = ensure_user(session, clock, actor, ref)
            if session.get(TeamMember, (team.id, user.id)) is None:
                session.add(TeamMember(team_id=team.id, user_id=user.id, added_by=actor.label,
                                       added_at=clock()))
                changed.append(user)
        else:
            user = get(session, ref)
            member = session.get(TeamMember, (team.id, user.id))
            if member is not None:
                session.delete(member)
                changed.append(user)
    session.flush()
    audit.record(session, clock, actor.label, f"team.{op}", f"team:{team.name}",
                 {"members": [u.name for u in changed]})
    return team, changed


def can_view(session: Session, actor: Actor, subject: Subject) -> bool:
    """Anyone sees themselves and their own teams; admins and approvers see everyone."""
    if has_role(session, actor, "approver"):
        return True
    if subject.kind == "user":
        return subject.slack_user_id is not None and subject.slack_user_id == actor.slack_user_id
    me = session.scalar(select(Subject).where(Subject.slack_user_id == actor.slack_user_id))
    return me is not None and session.get(TeamMember, (subject.id, me.id)) is not None


# ---- principals and meters -----------------------------------------------------------

def ensure_meter(session: Session, clock: Clock, kind: str, key: str,
                 subject_id: int | None) -> Meter:
    meter = session.scalar(select(Meter).where(Meter.kind == kind, Meter.key == key))
    if meter is None:
        meter = Meter(kind=kind, key=key, subject_id=subject_id, created_at=clock())
        session.add(meter)
        session.flush()
    elif meter.subject_id != subject_id:
        meter.subject_id = subject_id
    return meter


def link_principal(session: Session, clock: Clock, actor: Actor, ref: SubjectRef,
                   arn: str) -> tuple[Subject, Principal]:
    authorize(session, actor, "admin", "link")
    try:
        linked = classify(arn)
    except ValueError as exc:
        raise BadInput(f"{exc} (expected an IAM user or role ARN, or "
                       "arn:aws:sts::123456789012:assumed-role/<role>/<session>)") from exc
    arn = linked.arn
    subject = ensure(session, clock, actor, ref)
    existing = session.scalar(select(Principal).where(Principal.arn == arn))
    if existing is not None and existing.subject_id != subject.id:
        owner = session.get(Subject, existing.subject_id)
        raise BadInput(f"{arn} is already linked to {owner.name if owner else '?'}; unlink it first")
    principal = existing or Principal(arn=arn, subject_id=subject.id, kind=linked.kind,
                                      created_by=actor.label, created_at=clock())
    session.add(principal)
    ensure_meter(session, clock, "principal", arn, subject.id)
    session.flush()
    audit.record(session, clock, actor.label, "principal.link", f"{subject.kind}:{subject.name}",
                 {"arn": arn, "kind": linked.kind})
    return subject, principal


def find_principal(session: Session, actor: Actor, ref: SubjectRef, arn: str) -> tuple[Subject, Principal]:
    """The linked principal `arn` of subject `ref`, for unlink (admin)."""
    authorize(session, actor, "admin", "unlink")
    subject = get(session, ref)
    principal = session.scalar(select(Principal).where(Principal.arn == arn.strip()))
    if principal is None or principal.subject_id != subject.id:
        raise BadInput(f"{arn.strip()[:120]} is not linked to {subject.name}")
    return subject, principal


def unlink_principal(session: Session, clock: Clock, actor: Actor, subject: Subject, arn: str,
                     released: bool | None) -> bool:
    """Delete the link (its meter and usage stay with the subject: history is not rewritten).
    `released`: whether a deny was taken off it first (None: it carried none). False when it
    was already gone."""
    principal = session.scalar(select(Principal).where(Principal.arn == arn,
                                                       Principal.subject_id == subject.id))
    if principal is None:
        return False
    session.delete(principal)
    session.flush()
    audit.record(session, clock, actor.label, "principal.unlink", f"{subject.kind}:{subject.name}",
                 {"arn": arn, "kind": principal.kind, "deny_removed": released})
    return True


def principals_of(session: Session, subject_ids: list[int]) -> list[Principal]:
    q = select(Principal).where(Principal.subject_id.in_(subject_ids)).order_by(Principal.arn)
    return list(session.scalars(q))
