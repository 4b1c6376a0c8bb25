"""Who is who: link principals, team membership, admins, metadata meters. Database only;
each change is told to the alert channel after its commit."""

from __future__ import annotations

from bot.flows.runner import step
from bot.render.text import code
from bot.runtime import Services
from bot.services import directory, logs_usage, mantle
from bot.services.directory import Actor, SubjectRef
from bot.slack.notifier import safe


def _broadcast(s: Services, actor: Actor, text: str) -> None:
    channel = s.settings.bot.alert_channel
    if channel:
        safe(s.notifier.post, channel, f"<@{actor.slack_user_id}> {text}")


def link(s: Services, actor: Actor, ref: SubjectRef, arn: str) -> str:
    """Bind an IAM principal to a user; returns the subject's name."""
    name = step(s.db, s.clock, actor, "principal.link", str(ref),
                lambda session: directory.link_principal(session, s.clock, actor, ref, arn)[0].name)
    _broadcast(s, actor, f"linked {code(arn)} to `{name}`")
    return name


def link_mantle(s: Services, actor: Actor, ref: SubjectRef, project: str) -> str:
    """Meter a bedrock-mantle project's usage for a subject; returns the subject's name."""
    name = step(s.db, s.clock, actor, "mantle.link", str(ref),
                lambda session: mantle.link_project(session, s.clock, actor, ref, project))
    _broadcast(s, actor, f"bedrock-mantle project {code(project)} now counts for `{name}`")
    return name


def unlink_mantle(s: Services, actor: Actor, ref: SubjectRef, project: str) -> str:
    name = step(s.db, s.clock, actor, "mantle.unlink", str(ref),
                lambda session: mantle.unlink_project(session, s.clock, actor, ref, project))
    _broadcast(s, actor, f"bedrock-mantle project {code(project)} no longer counts for `{name}`")
    return name


def change_team(s: Services, actor: Actor, team: str, op: str, members: list[SubjectRef]) -> list[str]:
    """Add or remove members; returns the names that changed."""
    changed = step(s.db, s.clock, actor, f"team.{op}", f"team:{team}", lambda session: [
        u.name for u in directory.change_members(session, s.clock, actor, team, op, members)[1]])
    if changed:
        verb = "added to" if op == "add" else "removed from"
        _broadcast(s, actor, f"{', '.join(changed)} {verb} `{team}`")
    return changed


def list_admins(s: Services, actor: Actor) -> list[tuple[str, str]]:
    return step(s.db, s.clock, actor, "admins.list", "admins", directory.list_admins)


def set_admin(s: Services, actor: Actor, user_id: str, role: str) -> str:
    step(s.db, s.clock, actor, "admins.add", f"slack:{user_id}",
         lambda session: directory.set_admin(session, s.clock, actor, user_id, role))
    done = f"<@{user_id}> is now {role}."
    _broadcast(s, actor, done)
    return done


def remove_admin(s: Services, actor: Actor, user_id: str) -> str:
    step(s.db, s.clock, actor, "admins.remove", f"slack:{user_id}",
         lambda session: directory.remove_admin(session, s.clock, actor, user_id))
    done = f"<@{user_id}> is no longer an admin."
    _broadcast(s, actor, done)
    return done


def map_meter(s: Services, actor: Actor, key: str, value: str, ref: SubjectRef) -> str:
    """Count invocation-log usage carrying requestMetadata key=value for the subject."""
    keys = s.settings.aws.metadata_keys
    mapped = step(s.db, s.clock, actor, "meter.map", f"{key}={value}",
                  lambda session: logs_usage.map_metadata(session, s.clock, actor, key, value, ref,
                                                          allowed_keys=keys or None).key)
    _broadcast(s, actor, f"mapped requestMetadata {code(mapped)} to {code(str(ref))}")
    return mapped
