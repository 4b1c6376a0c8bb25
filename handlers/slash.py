"""`/bedrock` slash command: ack at once, then parse → service → render → respond()."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.exc import DBAPIError

from bot import announce
from bot.errors import BadInput
from bot.execute import Outcome, execute
from bot.models import Limit
from bot.render import messages
from bot.render.messages import Reply
from bot.render.text import escape
from bot.render.usage import usage_blocks, usage_text
from bot.runtime import Services
from bot.services import (
    access,
    audit,
    backstops,
    directory,
    limits,
    logs_usage,
    profiles,
    restore_requests,
    usage,
)
from bot.services.directory import Actor, SubjectRef
from bot.slack.notifier import safe
from bot.slash import grammar as cmds
from handlers.approvals import Approvals
from jobs import daily_digest

log = logging.getLogger(__name__)
Handler = Callable[["Ctx", Any], Reply]


class Ctx:
    """What one command invocation needs: services, the actor and the Slack client."""

    def __init__(self, services: Services, client: WebClient, user_id: str) -> None:
        self.services = services
        self.client = client
        self.actor = Actor.slack(user_id)

    def run(self, action: str, target: str, work: Callable[[Any], Any]) -> Outcome[Any]:
        s = self.services
        return execute(s.db, s.clock, self.actor, action, target, work)

    def named(self, ref: SubjectRef) -> SubjectRef:
        """Fill in a mention's user name from Slack when the mention carried none."""
        if ref.slack_user_id is None or ref.name:
            return ref
        try:
            user = self.client.users_info(user=ref.slack_user_id)["user"]
            return SubjectRef(name=user.get("name") or ref.slack_user_id.lower(),
                              slack_user_id=ref.slack_user_id)
        except (SlackApiError, KeyError, TypeError):
            return SubjectRef(name=ref.slack_user_id.lower(), slack_user_id=ref.slack_user_id)

    def broadcast(self, text: str) -> None:
        """State changes are also posted to the alert channel, after the commit."""
        channel = self.services.settings.bot.alert_channel
        if channel:
            safe(self.services.notifier.post, channel, text)


def _or_error(outcome: Outcome[Any], ok: Callable[[Any], Reply]) -> Reply:
    return ok(outcome.value) if outcome.ok else messages.error_reply(outcome.message)


def do_help(ctx: Ctx, cmd: cmds.Help) -> Reply:
    return messages.help_reply(cmd.topic)


def do_usage(ctx: Ctx, cmd: cmds.UsageQuery) -> Reply:
    s = ctx.services
    out = ctx.run("usage.view", str(cmd.subject or ctx.actor.label), lambda session: usage.report(
        session, s.clock, s.tz, s.week_start, ctx.actor, cmd.subject, cmd.period))
    return _or_error(out, lambda r: (usage_text(r), usage_blocks(r, s.tz)))


def do_provision(ctx: Ctx, cmd: cmds.Provision) -> Reply:
    s, ref = ctx.services, ctx.named(cmd.subject)
    out = ctx.run("profile.provision", str(ref), lambda session: profiles.provision(
        session, s.clock, s.profiles, s.settings.aws.region, ctx.actor, ref, cmd.model, cmd.tags))
    if out.ok:
        ctx.broadcast(f"<@{ctx.actor.slack_user_id}> provisioned `{out.value.name}` for "
                      f"`{out.value.subject}`: `{out.value.arn}`")
    return _or_error(out, lambda p: messages.provisioned_reply(p, ctx.actor.slack_user_id or ""))


def do_profiles(ctx: Ctx, cmd: cmds.SubjectCommand) -> Reply:
    out = ctx.run("profile.list", str(cmd.subject or "all"),
                  lambda session: profiles.list_profiles(session, cmd.subject))
    return _or_error(out, lambda ps: messages.profiles_reply(ps, str(cmd.subject or "everyone")))


def do_link(ctx: Ctx, cmd: cmds.Link) -> Reply:
    s, ref = ctx.services, ctx.named(cmd.subject)
    out = ctx.run("principal.link", str(ref), lambda session: directory.link_principal(
        session, s.clock, ctx.actor, ref, cmd.arn)[0].name)
    if out.ok:
        ctx.broadcast(f"<@{ctx.actor.slack_user_id}> linked `{escape(cmd.arn)}` to `{out.value}`")
    return _or_error(out, lambda name: messages.text_reply(f"✅ Linked `{escape(cmd.arn)}` to `{name}`."))


def do_team(ctx: Ctx, cmd: cmds.TeamChange) -> Reply:
    s = ctx.services
    members = [ctx.named(m) for m in cmd.members]
    out = ctx.run(f"team.{cmd.op}", f"team:{cmd.team}", lambda session: [
        u.name for u in directory.change_members(session, s.clock, ctx.actor, cmd.team, cmd.op,
                                                 members)[1]])
    if not out.ok:
        return messages.error_reply(out.message)
    verb = "added to" if cmd.op == "add" else "removed from"
    text = (f"✅ {', '.join(out.value)} {verb} `{cmd.team}`." if out.value
            else f"Nothing changed in `{cmd.team}`.")
    if out.value:
        ctx.broadcast(f"<@{ctx.actor.slack_user_id}>: {', '.join(out.value)} {verb} `{cmd.team}`")
    return messages.text_reply(text)


def do_admins(ctx: Ctx, cmd: cmds.Admins) -> Reply:
    s = ctx.services
    if cmd.op is None:
        out = ctx.run("admins.list", "admins", directory.list_admins)
        return _or_error(out, messages.admins_reply)
    uid = cmd.user_id or ""
    if cmd.op == "add":
        out = ctx.run("admins.add", f"slack:{uid}", lambda session: directory.set_admin(
            session, s.clock, ctx.actor, uid, cmd.role))
        done = f"<@{uid}> is now {cmd.role}."
    else:
        out = ctx.run("admins.remove", f"slack:{uid}", lambda session: directory.remove_admin(
            session, s.clock, ctx.actor, uid))
        done = f"<@{uid}> is no longer an admin."
    if out.ok:
        ctx.broadcast(f"<@{ctx.actor.slack_user_id}>: {done}")
    return _or_error(out, lambda _: messages.text_reply(f"✅ {done}"))


def do_limit(ctx: Ctx, cmd: cmds.SetLimit) -> Reply:
    s = ctx.services
    out = ctx.run("limit.set", str(cmd.subject), lambda session: limits.set_limit(
        session, s.clock, ctx.actor, cmd.subject, cmd.amount, cmd.window, cmd.metric, cmd.warn,
        cmd.action, cmd.alarm))
    if not out.ok:
        return messages.error_reply(out.message)
    new = out.value[0]
    ctx.broadcast(f"<@{ctx.actor.slack_user_id}> set a limit on `{new.subject}`: "
                  f"{new.amount_text} {new.metric}/{new.window} ({new.action})")
    text, _ = messages.limit_set_reply(*out.value)
    notes = backstops_for(ctx, new.id)
    return messages.text_reply(text + ("\n" + "\n".join(f"• {n}" for n in notes) if notes else ""))


def backstops_for(ctx: Ctx, limit_id: int, removed: bool = False) -> list[str]:
    """After the limit's own commit: its CloudWatch alarm / AWS Budget (defence in depth).

    A failure here does not undo the limit: the bot's own evaluation enforces it anyway;
    the failure is audited and shown."""
    s = ctx.services
    aws = s.settings.aws
    if not aws.alarm_topic_arn:  # nothing can have been created without a topic to notify
        return [] if removed else [backstops.NO_TOPIC]

    def work(session: Any) -> list[str]:
        if removed:
            r = backstops.remove_backstops(session, s.clock, limit_id, s.alarms, s.budgets,
                                          actor=ctx.actor.label)
        else:
            limit = session.get(Limit, limit_id)
            r = backstops.sync_backstops(session, s.clock, limit, s.alarms, s.budgets, aws.alarm_topic_arn,
                                   s.account_id, actor=ctx.actor.label)
        return [*r.notes, *(f"AWS alarm/budget not updated: {e}" for e in r.errors)]

    out = ctx.run("backstops.sync", f"limit:{limit_id}", work)
    return out.value if out.ok and out.value is not None else [f"AWS alarm/budget not updated: {out.message}"]


def do_limits(ctx: Ctx, cmd: cmds.SubjectCommand) -> Reply:
    out = ctx.run("limit.list", str(cmd.subject or "all"),
                  lambda session: limits.list_limits(session, cmd.subject))
    return _or_error(out, lambda ls: messages.limits_reply(ls, str(cmd.subject or "everyone")))


def do_unlimit(ctx: Ctx, cmd: cmds.SubjectCommand) -> Reply:
    s = ctx.services
    assert cmd.subject is not None
    out = ctx.run("limit.remove", str(cmd.subject), lambda session: limits.remove_limits(
        session, s.clock, ctx.actor, cmd.subject, cmd.window, cmd.metric))
    if not out.ok:
        return messages.error_reply(out.message)
    gone = ", ".join(f"{v.metric}/{v.window}" for v in out.value)
    for v in out.value:
        backstops_for(ctx, v.id, removed=True)
    ctx.broadcast(f"<@{ctx.actor.slack_user_id}> removed limits on `{cmd.subject}`: {gone}")
    return messages.text_reply(f"✅ Removed {gone} on `{cmd.subject}`. A revocation caused by a "
                               "removed limit is lifted at the next enforcement run.")


def do_revoke(ctx: Ctx, cmd: cmds.SubjectCommand) -> Reply:
    s = ctx.services
    assert cmd.subject is not None
    out = ctx.run("access.revoke", str(cmd.subject), lambda session: access.revoke_manual(
        session, s.clock, s.access, ctx.actor, cmd.subject, cmd.reason))
    if not out.ok:
        return messages.error_reply(out.message)
    announce.revoked(s.notifier, s.settings.bot.alert_channel, out.value, ctx.actor.slack_user_id)
    return messages.text_reply(f"⛔ Revoked `{out.value.subject.name}` on "
                               f"{len(out.value.principals)} IAM principal(s).")


def do_restore(ctx: Ctx, cmd: cmds.SubjectCommand) -> Reply:
    """Admins restore; anyone else files a restore request (the same one the button makes)."""
    s = ctx.services
    ref = cmd.subject
    assert ref is not None
    is_admin = ctx.run("access.restore", str(ref), lambda session: directory.has_role(
        session, ctx.actor, "admin"))
    if is_admin.ok and not is_admin.value:
        ttl = timedelta(hours=s.settings.bot.request_ttl_hours)
        out = ctx.run("request.create", str(ref), lambda session: restore_requests.create_for_subject(
            session, s.clock, ctx.actor, ref, cmd.reason, ttl))
        return messages.text_reply(Approvals(s).after_request(ctx.actor, out))
    out = ctx.run("access.restore", str(ref), lambda session: access.restore_manual(
        session, s.clock, s.access, ctx.actor, ref, cmd.reason))
    if not out.ok:
        return messages.error_reply(out.message)
    announce.restored(s.notifier, s.settings.bot.alert_channel, out.value,
                      f"<@{ctx.actor.slack_user_id}>", cmd.reason)
    return messages.text_reply(f"✅ Restored `{out.value[0].subject.name}`.")


def do_meter(ctx: Ctx, cmd: cmds.MeterMap) -> Reply:
    s, ref = ctx.services, ctx.named(cmd.subject)
    keys = s.settings.aws.metadata_keys
    out = ctx.run("meter.map", f"{cmd.key}={cmd.value}", lambda session: logs_usage.map_metadata(
        session, s.clock, ctx.actor, cmd.key, cmd.value, ref, allowed_keys=keys or None).key)
    if out.ok:
        ctx.broadcast(f"<@{ctx.actor.slack_user_id}> mapped requestMetadata `{escape(out.value)}` "
                      f"to `{escape(str(ref))}`")
    return _or_error(out, lambda key: messages.text_reply(
        f"✅ Invocation-log usage with requestMetadata `{escape(key)}` now counts for `{escape(str(ref))}`."
        + ("" if s.settings.aws.invocation_log_group else
           " (BOT_INVOCATION_LOG_GROUP is not set, so no logs are read yet.)")))


def do_audit(ctx: Ctx, cmd: cmds.SubjectCommand) -> Reply:
    def work(session: Any) -> list[audit.AuditLine]:
        directory.authorize(session, ctx.actor, "admin", "audit")
        target = None
        if cmd.subject is not None:
            subject = directory.get(session, cmd.subject)
            target = f"{subject.kind}:{subject.name}"
        return audit.recent(session, target, cmd.count)

    out = ctx.run("audit.view", str(cmd.subject or "all"), work)
    return _or_error(out, lambda rows: messages.audit_reply(rows, ctx.services.tz))


def do_digest(ctx: Ctx, cmd: cmds.Command) -> Reply:
    """Post the digest now (admin; checked in the job), even if today's is already out."""
    out = daily_digest.run(ctx.services, force=True, actor=ctx.actor)
    if not out.ok or out.value is None:
        return messages.error_reply(out.message)
    return messages.text_reply(f"✅ Digest for {out.value.day} posted to <#{out.value.channel}> "
                               f"(chart: {out.value.chart}).")


HANDLERS: dict[str, Handler] = {
    "help": do_help, "usage": do_usage, "provision": do_provision, "profiles": do_profiles,
    "link": do_link, "team": do_team, "admins": do_admins, "limit": do_limit, "limits": do_limits,
    "unlimit": do_unlimit, "revoke": do_revoke, "restore": do_restore, "meter": do_meter,
    "audit": do_audit, "digest": do_digest,
}


def answer(services: Services, client: WebClient, user_id: str, text: str) -> Reply:
    """Everything after the ack: one reply, whatever happens (never a stack trace)."""
    ctx = Ctx(services, client, user_id)
    try:
        cmd = cmds.parse(text)
    except BadInput as exc:
        _audit_refusal(services, ctx.actor, exc)
        return messages.error_reply(Outcome(error=exc).message)
    handler = HANDLERS.get(cmd.name)
    if handler is None:
        return messages.error_reply(f"`{cmd.name}` is not available in this version yet.")
    try:
        return handler(ctx, cmd)
    except DBAPIError:
        log.exception("/bedrock %s: database error", cmd.name)
        return messages.error_reply("the bot's database is not answering right now; nothing was "
                                    "changed. Please try again in a minute.")
    except Exception:
        log.exception("/bedrock %s failed", cmd.name)
        return messages.error_reply("something went wrong on our side; nothing was changed and it "
                                    "has been logged. Please try again in a minute.")


def _audit_refusal(services: Services, actor: Actor, exc: BadInput) -> None:
    """Unparseable text is a refusal too: audited (best effort: the database may be down)."""
    try:
        with services.db.session_scope() as session:
            audit.record(session, services.clock, actor.label, "command.parse", "slack",
                         {"reason": str(exc)[:300]}, outcome="denied")
    except DBAPIError:
        log.warning("could not audit a refused command")


def register(app: App, services: Services) -> None:
    @app.command("/bedrock")
    def bedrock(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        text, blocks = answer(services, client, str(body.get("user_id", "")),
                              str(body.get("text", "")))
        respond(text=text, blocks=blocks, response_type="ephemeral")
