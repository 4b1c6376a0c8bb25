"""Replies to commands → Block Kit (pure). Every builder returns (fallback text, blocks)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import ContextBlock, HeaderBlock, MarkdownTextObject

from bot.render.blocks import Reply, finish, section
from bot.render.text import escape, plain, when
from bot.services.audit import AuditLine
from bot.services.limits import LimitView
from bot.services.profiles import ProfileView
from bot.services.raises import RaiseView


def text_reply(text: str) -> Reply:
    return text, finish([section(text)])


def error_reply(message: str) -> Reply:
    return f"⚠️ {message}", finish([section(f"⚠️ {escape(message)}".replace("&lt;@", "<@"))])


def help_reply(entries: list[tuple[str, str]], topic: bool = False) -> Reply:
    """(usage line, help text) per subcommand; one entry with `topic` shows just that one."""
    if topic:
        text = f"*`{entries[0][0]}`*\n{entries[0][1]}"
        return text, finish([section(text)])
    lines = [f"`{usage}`\n    {text}" for usage, text in entries]
    blocks: list[Any] = [HeaderBlock(text="/bedrock commands")]
    chunk: list[str] = []
    for line in lines:  # sections are capped at 3,000 characters
        if sum(len(x) + 1 for x in chunk) + len(line) > 2800:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    blocks.append(section("\n".join(chunk)))
    names = ", ".join(usage.split()[1] for usage, _ in entries)
    return "/bedrock commands: " + names, finish(blocks)


def profiles_reply(profiles: list[ProfileView], title: str) -> Reply:
    if not profiles:
        return text_reply(f"No inference profiles for {title} yet.")
    blocks: list[Any] = [HeaderBlock(text=f"Inference profiles: {title}"[:150])]
    for p in profiles[:40]:
        blocks.append(section(
            f"*{p.name}* ({p.subject or 'unbound'}) · {p.model_id} · {p.status}"
            f"{'' if p.managed else ' · adopted'}\n`{p.arn}`"))
    if len(profiles) > 40:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(
            text=f"…and {len(profiles) - 40} more; name a subject to narrow it down")]))
    return f"{len(profiles)} inference profiles", finish(blocks)


def provisioned_reply(p: ProfileView, actor_id: str) -> Reply:
    text = (f"✅ <@{actor_id}> provisioned *{p.name}* for `{p.subject}` ({p.model_id}).\n"
            f"Call Bedrock with this model id:\n`{p.arn}`")
    return f"Provisioned {p.name}: {p.arn}", finish([section(text)])


def admins_reply(rows: list[tuple[str, str]]) -> Reply:
    if not rows:
        return text_reply("No admins yet: set BOT_ADMINS to bootstrap an owner.")
    return text_reply("*Admins*\n" + "\n".join(f"• <@{uid}>: {role}" for uid, role in rows))


def raise_note(r: RaiseView, tz: ZoneInfo) -> str:
    """`+1M until Thu 03 Dec 09:00 UTC, approved by @dana`."""
    return f"+{r.amount_text} until {when(r.expires_at, tz)}, approved by {who(r.granted_by)}"


def who(actor_label: str) -> str:
    """An actor label as a person reads it: a Slack mention, or the label itself."""
    kind, _, rest = actor_label.partition(":")
    return f"<@{rest}>" if kind == "slack" and rest else escape(actor_label)


def _limit_line(v: LimitView, tz: ZoneInfo) -> str:
    raised = "".join(f" ({raise_note(r, tz)})" for r in v.raises)
    grace = f" · grace {duration_text(v.grace_seconds)}" if v.grace_seconds else ""
    return (f"• `{v.subject}`: {v.amount_text} {v.metric}/{v.window}{raised} · warn at "
            f"{', '.join(f'{t}%' for t in v.warn) or 'never'} · {v.action}{grace}"
            + ("" if v.alarm else " · alarm off"))


def duration_text(seconds: int) -> str:
    """10m, 24h, 7d, 1h30m: the shortest exact form."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{n}{u}" for n, u in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return "".join(parts) or f"{seconds}s"


def limits_reply(limits: list[LimitView], title: str, tz: ZoneInfo) -> Reply:
    if not limits:
        return text_reply(f"No limits for {title}.")
    lines = [_limit_line(v, tz) for v in limits[:100]]
    return f"{len(limits)} limits", finish([section(f"*Limits: {title}*\n" + "\n".join(lines))])


def limit_set_reply(new: LimitView, before: LimitView | None) -> Reply:
    was = f" (was {before.amount_text})" if before else ""
    grace = (f" after a grace of {duration_text(new.grace_seconds)}"
             if new.grace_seconds and new.action == "revoke" else "")
    return text_reply(f"✅ Limit for `{new.subject}`: {new.amount_text} {new.metric}/{new.window}{was}, "
                      f"warn at {', '.join(f'{t}%' for t in new.warn) or 'never'}, then {new.action}{grace}.")


def audit_reply(rows: list[AuditLine], tz: ZoneInfo) -> Reply:
    if not rows:
        return text_reply("No audit events.")
    icon = {"ok": "•", "denied": "🚫", "error": "❗"}
    lines = [f"{icon.get(r.outcome, '•')} `{r.id}` {when(r.at, tz)} {escape(r.actor)} "
             f"*{escape(r.action)}* {plain(r.target)}" for r in rows]
    blocks: list[Any] = [HeaderBlock(text="Audit log (newest first)")]
    chunk: list[str] = []
    for line in lines:
        if sum(len(x) + 1 for x in chunk) + len(line) > 2800:
            blocks.append(section("\n".join(chunk)))
            chunk = []
        chunk.append(line)
    blocks.append(section("\n".join(chunk)))
    blocks.append(ContextBlock(elements=[MarkdownTextObject(
        text="Verify the whole chain with `bedrock-bot audit verify`.")]))
    return f"{len(rows)} audit events", finish(blocks)
