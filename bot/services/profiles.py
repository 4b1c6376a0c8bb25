"""Application Inference Profiles: provision from Slack, list, and adopt tagged ones."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.profiles import (
    InferenceProfileInfo,
    ProfilesBackend,
    derive_profile_name,
    managed_tags,
    model_id_of,
    resolve_model_source,
)
from bot.clock import Clock
from bot.errors import BadInput
from bot.models import Profile, Subject
from bot.services import audit, directory
from bot.services.directory import Actor, SubjectRef

DESCRIPTION = "managed by bedrock-bot"  # Bedrock allows few characters here; tags name the subject


@dataclass(frozen=True)
class ProfileView:
    profile_id: str
    arn: str
    name: str
    model_id: str
    subject: str | None
    status: str
    managed: bool
    created_at: datetime


def view(p: Profile, subject_name: str | None) -> ProfileView:
    return ProfileView(p.profile_id, p.arn, p.name, p.model_id, subject_name, p.status, p.managed,
                       p.created_at)


def _unique_name(session: Session, subject: str, model: str) -> str:
    name = derive_profile_name(subject, model)
    n = 2
    while session.scalar(select(Profile.id).where(Profile.name == name)) is not None:
        name = derive_profile_name(subject, model, suffix=str(n))
        n += 1
    return name


@dataclass(frozen=True)
class ProvisionPlan:
    name: str
    source: str
    tags: dict[str, str]
    token: str  # same subject + name + source → same token: a retried create returns the same AIP


def plan_provision(session: Session, clock: Clock, backend: ProfilesBackend, region: str, actor: Actor,
                   ref: SubjectRef, model: str, extra_tags: dict[str, str]) -> ProvisionPlan:
    """Authorize and work out the AIP to create (admin only). The caller rolls this
    transaction back: the subject is created only once the AIP exists."""
    directory.authorize(session, actor, "admin", "provision")
    subject = directory.ensure(session, clock, actor, ref)
    source = resolve_model_source(model, region, backend.account_id())
    tags = managed_tags(subject.kind, subject.name, extra_tags)
    name = _unique_name(session, subject.name, model)
    token = hashlib.sha256(f"{subject.name}|{name}|{source}".encode()).hexdigest()[:64]
    return ProvisionPlan(name, source, tags, token)


def create(backend: ProfilesBackend, plan: ProvisionPlan) -> InferenceProfileInfo:
    """The AWS call, with no session open."""
    return backend.create(plan.name, plan.source, plan.tags, DESCRIPTION, plan.token)


def record_provisioned(session: Session, clock: Clock, actor: Actor, ref: SubjectRef, plan: ProvisionPlan,
                       created: InferenceProfileInfo) -> ProfileView:
    subject = directory.ensure(session, clock, actor, ref)
    profile = _record(session, clock, created, subject, actor.label, managed=True, tags=plan.tags)
    audit.record(session, clock, actor.label, "profile.provision", f"{subject.kind}:{subject.name}",
                 {"arn": created.arn, "model": plan.source, "tags": plan.tags})
    return view(profile, subject.name)


def _record(session: Session, clock: Clock, info: InferenceProfileInfo, subject: Subject | None,
            by: str, managed: bool, tags: dict[str, str]) -> Profile:
    existing = session.scalar(select(Profile).where(Profile.arn == info.arn))
    if existing is not None:
        return existing
    profile = Profile(arn=info.arn, profile_id=info.id, name=info.name,
                      model_source=info.model_source, model_id=model_id_of(info.model_source),
                      tags=dict(tags), subject_id=subject.id if subject else None,
                      status=info.status, managed=managed, created_by=by, created_at=clock())
    session.add(profile)
    session.flush()
    directory.ensure_meter(session, clock, "profile", info.id, profile.subject_id)
    return profile


def list_profiles(session: Session, ref: SubjectRef | None) -> list[ProfileView]:
    q = select(Profile, Subject.name).outerjoin(Subject, Subject.id == Profile.subject_id)
    if ref is not None:
        subject = directory.get(session, ref)
        q = q.where(Profile.subject_id.in_(directory.covered_subject_ids(session, subject)))
    rows = session.execute(q.order_by(Subject.name, Profile.name).limit(500))
    return [view(p, name) for p, name in rows]


@dataclass(frozen=True)
class Tagged:
    """An AIP the database does not record, with its tags (read from AWS, no session open)."""

    info: InferenceProfileInfo
    tags: dict[str, str]


def find_tagged(backend: ProfilesBackend, known_arns: Collection[str]) -> list[Tagged]:
    """AIPs made outside the bot and tagged user=/team=: what `adopt` may bind (AWS calls only)."""
    found = []
    for info in backend.list_application():
        if info.arn in known_arns:
            continue
        tags = backend.tags_of(info.arn)
        if tags.get("team") or tags.get("user"):
            found.append(Tagged(info, tags))
    return found


def adopt(session: Session, clock: Clock, found: Sequence[Tagged]) -> list[ProfileView]:
    """Bind each found AIP to the subject its tags name (DESIGN §4); one recorded meanwhile,
    or whose tag is no valid name, is left as it is."""
    known = set(session.scalars(select(Profile.arn)))
    adopted: list[ProfileView] = []
    actor = Actor.system("usage_sync")
    for item in found:
        if item.info.arn in known:
            continue
        subject = _subject_from_tags(session, clock, actor, item.tags)
        if subject is None:
            continue
        managed = item.tags.get("managed-by") == "bedrock-bot"
        profile = _record(session, clock, item.info, subject, actor.label, managed, item.tags)
        audit.record(session, clock, actor.label, "profile.adopt", f"{subject.kind}:{subject.name}",
                     {"arn": item.info.arn, "tags": item.tags})
        adopted.append(view(profile, subject.name))
        known.add(item.info.arn)
    return adopted


def _subject_from_tags(session: Session, clock: Clock, actor: Actor,
                       tags: dict[str, str]) -> Subject | None:
    """`team=` wins over `user=`; a tag value that is not a valid name is ignored."""
    try:
        if tags.get("team"):
            name = tags["team"].lower()
            return directory.ensure_team(session, clock, actor,
                                         name if name.startswith("team-") else f"team-{name}")
        if tags.get("user"):
            return directory.ensure_user(session, clock, actor, SubjectRef(name=tags["user"]))
    except BadInput:
        return None
    return None
