"""Provisioning an AIP in tests that have a database but no Services: the same three steps
as `bot.flows.profiles.provision` (plan rolled back, create, record), without the post."""

from __future__ import annotations

from bot.aws.profiles import ProfilesBackend
from bot.clock import Clock
from bot.db import Database
from bot.services import profiles
from bot.services.directory import Actor, SubjectRef
from bot.services.profiles import ProfileView


def provision_aip(db: Database, clock: Clock, backend: ProfilesBackend, region: str, actor: Actor,
                  ref: SubjectRef, model: str, tags: dict[str, str] | None = None) -> ProfileView:
    with db.session_scope() as s:
        plan = profiles.plan_provision(s, clock, backend, region, actor, ref, model, tags or {})
        s.rollback()
    created = profiles.create(backend, plan)
    with db.session_scope() as s:
        return profiles.record_provisioned(s, clock, actor, ref, plan, created)
