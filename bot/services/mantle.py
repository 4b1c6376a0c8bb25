"""bedrock-mantle projects metered for a subject: a `mantle` meter keyed by the project id, read
from CloudWatch `AWS/BedrockMantle` by the usage sync (bot/services/usage.py)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.mantle_metrics import parse_project
from bot.clock import Clock
from bot.errors import BadInput
from bot.models import Meter, Subject
from bot.services import audit, directory
from bot.services.directory import Actor, SubjectRef

KIND = "mantle"


def link_project(session: Session, clock: Clock, actor: Actor, ref: SubjectRef, raw: str) -> str:
    """Count the project's usage for the subject (admin); returns the subject's name. A project
    counted for someone else is refused: unlink it there first."""
    directory.authorize(session, actor, "admin", "link")
    try:
        project = parse_project(raw)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    subject = directory.ensure(session, clock, actor, ref)
    meter = session.scalar(select(Meter).where(Meter.kind == KIND, Meter.key == project))
    if meter is not None and meter.subject_id not in (None, subject.id):
        owner = session.get(Subject, meter.subject_id)
        raise BadInput(f"mantle project {project} already counts for {owner.name if owner else '?'}; "
                       "unlink it first")
    directory.ensure_meter(session, clock, KIND, project, subject.id)
    session.flush()
    audit.record(session, clock, actor.label, "mantle.link", f"{subject.kind}:{subject.name}",
                 {"project": project})
    return subject.name


def unlink_project(session: Session, clock: Clock, actor: Actor, ref: SubjectRef, raw: str) -> str:
    """Stop counting the project for the subject (admin): its ledger rows count for no one."""
    directory.authorize(session, actor, "admin", "unlink")
    try:
        project = parse_project(raw)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    subject = directory.get(session, ref)
    meter = session.scalar(select(Meter).where(Meter.kind == KIND, Meter.key == project))
    if meter is None or meter.subject_id != subject.id:
        raise BadInput(f"mantle project {project} is not linked to {subject.name}")
    meter.subject_id = None
    session.flush()
    audit.record(session, clock, actor.label, "mantle.unlink", f"{subject.kind}:{subject.name}",
                 {"project": project})
    return subject.name
