"""Provisioning an AIP: plan (then roll back), create it in Bedrock with no transaction
open, record it with its subject, tell the alert channel."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bot.flows.runner import call, step
from bot.runtime import Services
from bot.services import profiles
from bot.services.directory import Actor, SubjectRef
from bot.services.profiles import ProfileView, ProvisionPlan
from bot.slack.notifier import safe


def provision(s: Services, actor: Actor, ref: SubjectRef, model: str, tags: dict[str, str]) -> ProfileView:
    target = str(ref)

    def plan_only(session: Session) -> ProvisionPlan:
        plan = profiles.plan_provision(session, s.clock, s.profiles, s.settings.aws.region, actor, ref,
                                       model, tags)
        session.rollback()  # a subject named here is created with its AIP, not before
        return plan

    action = "profile.provision"
    plan = step(s.db, s.clock, actor, action, target, plan_only)
    created = call(s.db, s.clock, actor, action, target, lambda: profiles.create(s.profiles, plan))
    view = step(s.db, s.clock, actor, action, target, lambda session: profiles.record_provisioned(
        session, s.clock, actor, ref, plan, created))
    channel = s.settings.bot.alert_channel
    if channel:
        safe(s.notifier.post, channel, f"<@{actor.slack_user_id}> provisioned `{view.name}` for "
                                       f"`{view.subject}`: `{view.arn}`")
    return view


def list_profiles(s: Services, actor: Actor, ref: SubjectRef | None) -> list[ProfileView]:
    return step(s.db, s.clock, actor, "profile.list", str(ref or "all"),
                lambda session: profiles.list_profiles(session, ref), read_only=True)
