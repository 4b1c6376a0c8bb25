"""One answer per subcommand: the parsed command → its flow → a rendered reply.

Each answer is a few lines; refusals are BotErrors raised by the flow (already audited) and
turned into the reply by the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.flows import access, approvals, digest, directory, limits, profiles, raises, reports
from bot.flows.digest import DigestError
from bot.render import enforcement as alerts
from bot.render import messages
from bot.render.blocks import Reply
from bot.render.text import code, when
from bot.render.usage import usage_blocks, usage_text
from bot.runtime import Services
from bot.services.directory import Actor, SubjectRef
from bot.slash import grammar as g


@dataclass(frozen=True)
class Request:
    """Who asked, and how to learn a Slack user's handle when a mention carried none."""

    services: Services
    actor: Actor
    handle_of: Callable[[str], str | None]

    def named(self, ref: SubjectRef) -> SubjectRef:
        if ref.slack_user_id is None or ref.name:
            return ref
        handle = self.handle_of(ref.slack_user_id)
        return SubjectRef(name=handle or ref.slack_user_id.lower(), slack_user_id=ref.slack_user_id)


def _cmd(cmd: g.Command, kind: type[Any]) -> Any:
    assert isinstance(cmd, kind), f"{cmd.name} parsed as {type(cmd).__name__}"
    return cmd


def usage(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.UsageQuery)
    r = reports.usage_report(req.services, req.actor, c.subject, c.period)
    return usage_text(r), usage_blocks(r, req.services.tz)


def provision(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.Provision)
    p = profiles.provision(req.services, req.actor, req.named(c.subject), c.model, c.tags)
    return messages.provisioned_reply(p, req.actor.slack_user_id or "")


def list_profiles(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.SubjectCommand)
    found = profiles.list_profiles(req.services, req.actor, c.subject)
    return messages.profiles_reply(found, str(c.subject or "everyone"))


def link(req: Request, cmd: g.Command) -> Reply:
    if isinstance(cmd, g.MantleLink):
        name = directory.link_mantle(req.services, req.actor, req.named(cmd.subject), cmd.project)
        return messages.text_reply(f"✅ bedrock-mantle project {code(cmd.project)} now counts for "
                                   f"`{name}` (AWS/BedrockMantle, read by the usage sync).")
    c = _cmd(cmd, g.Link)
    name = directory.link(req.services, req.actor, req.named(c.subject), c.arn)
    return messages.text_reply(f"✅ Linked {code(c.arn)} to `{name}`.")


def team(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.TeamChange)
    changed = directory.change_team(req.services, req.actor, c.team, c.op, [req.named(m) for m in c.members])
    verb = "added to" if c.op == "add" else "removed from"
    return messages.text_reply(f"✅ {', '.join(changed)} {verb} `{c.team}`." if changed
                               else f"Nothing changed in `{c.team}`.")


def admins(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.Admins)
    s, actor = req.services, req.actor
    if c.op is None:
        return messages.admins_reply(directory.list_admins(s, actor))
    done = (directory.set_admin(s, actor, c.user_id or "", c.role) if c.op == "add"
            else directory.remove_admin(s, actor, c.user_id or ""))
    return messages.text_reply(f"✅ {done}")


def limit(req: Request, cmd: g.Command) -> Reply:
    if isinstance(cmd, g.GrantRaise):
        return _grant(req, cmd)
    c = _cmd(cmd, g.SetLimit)
    change = limits.set_limit(req.services, req.actor, c.subject, c.amount, c.window, c.metric, c.warn,
                              c.action, c.alarm, c.grace)
    text, _ = messages.limit_set_reply(change.limit, change.before)
    return messages.text_reply(text + "".join(f"\n• {n}" for n in change.notes))


def _grant(req: Request, c: g.GrantRaise) -> Reply:
    out = limits.grant_raise(req.services, req.actor, req.named(c.subject), c.amount, c.window, c.metric,
                             c.duration, c.reason)
    g_ = out.grant
    lifted = " Access restored: usage is under the raised limit." if out.lifted else ""
    return messages.text_reply(f"✅ `{g_.subject}`'s {g_.metric}/{g_.window} limit is raised by "
                               f"{g_.amount_text} "
                               f"until {when(g_.expires_at, req.services.tz)}.{lifted}"
                               + "".join(f"\n• {n}" for n in out.notes))


def request_more(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.RequestMore)
    return messages.text_reply(raises.request_more(req.services, req.actor, c.amount, c.metric, c.window,
                                                   c.duration, c.reason))


def list_limits(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.SubjectCommand)
    found = reports.list_limits(req.services, req.actor, c.subject)
    return messages.limits_reply(found, str(c.subject or "everyone"), req.services.tz)


def unlimit(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.SubjectCommand)
    assert c.subject is not None
    out = limits.remove_limits(req.services, req.actor, c.subject, c.window, c.metric)
    gone = ", ".join(f"{v.metric}/{v.window}" for v in out.removed)
    return messages.text_reply(f"✅ Removed {gone} on `{c.subject}`. A revocation caused by a removed "
                               "limit is lifted at the next enforcement run."
                               + "".join(f"\n• {n}" for n in out.notes))


def revoke(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.SubjectCommand)
    assert c.subject is not None
    view = access.revoke_manual(req.services, req.actor, c.subject, c.reason)
    return messages.text_reply(alerts.block_summary(view))


def unlink(req: Request, cmd: g.Command) -> Reply:
    if isinstance(cmd, g.MantleLink):
        name = directory.unlink_mantle(req.services, req.actor, req.named(cmd.subject), cmd.project)
        return messages.text_reply(f"✅ bedrock-mantle project {code(cmd.project)} no longer counts "
                                   f"for `{name}`.")
    c = _cmd(cmd, g.Link)
    plan = access.unlink(req.services, req.actor, req.named(c.subject), c.arn)
    freed = f"; {', '.join(plan.held_by)}'s block taken off it" if plan.held_by else ""
    return messages.text_reply(f"✅ Unlinked {code(plan.arn)} from `{plan.subject_name}`{freed}.")


def check(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.SubjectCommand)
    return messages.text_reply(alerts.check_text(access.check(req.services, req.actor, req.named(c.subject))))


def restore(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.Restore)
    assert c.subject is not None
    out = approvals.restore(req.services, req.actor, c.subject, c.reason, c.break_glass)
    if out.request_note is not None:
        return messages.text_reply(out.request_note)
    return messages.text_reply(f"✅ Restored `{out.restored[0].subject.name}`.")


def meter(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.MeterMap)
    ref = req.named(c.subject)
    key = directory.map_meter(req.services, req.actor, c.key, c.value, ref)
    logs_off = "" if req.services.settings.aws.invocation_log_group else \
        " (BOT_INVOCATION_LOG_GROUP is not set, so no logs are read yet.)"
    return messages.text_reply(f"✅ Invocation-log usage with requestMetadata {code(key)} now counts for "
                               f"{code(str(ref))}.{logs_off}")


def audit(req: Request, cmd: g.Command) -> Reply:
    c = _cmd(cmd, g.SubjectCommand)
    rows = reports.audit_trail(req.services, req.actor, c.subject, c.count)
    return messages.audit_reply(rows, req.services.tz)


def post_digest(req: Request, cmd: g.Command) -> Reply:
    """Post the digest now (admin; checked in the flow), even if today's is already out."""
    out = digest.run(req.services, force=True, actor=req.actor)
    if not out.ok:
        raise out.error or DigestError("the digest was not posted")
    run = out.value
    return messages.text_reply(f"✅ Digest for {run.day} posted to <#{run.channel}> (chart: {run.chart}).")
