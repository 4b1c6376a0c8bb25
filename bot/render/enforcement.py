"""Enforcement messages → Block Kit (pure): warnings, revocations, restorations."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextBlock,
    MarkdownTextObject,
)

from bot.quantities import format_duration
from bot.render.blocks import Reply, section
from bot.render.raises import request_more_button
from bot.render.text import METRIC_LABEL, bar, code, metric_value, plain, when
from bot.services.access import RevocationView
from bot.services.enforce import Breach, GraceNotice, Warning
from bot.services.usage import LimitStatus

REQUEST_RESTORE = "request_restore"


def _usage_line(s: LimitStatus, tz: ZoneInfo) -> str:
    return (f"`{bar(s.percent)}` {s.percent:.0f}% of the {METRIC_LABEL[s.metric]}/{s.window} "
            f"limit: {metric_value(s.metric, s.used)} of {metric_value(s.metric, s.amount)}; "
            f"the window ends {when(s.window_end, tz)}")


def restore_button(revocation_id: int) -> ActionsBlock:
    return ActionsBlock(block_id=f"revocation-{revocation_id}", elements=[ButtonElement(
        text="Request restore", action_id=REQUEST_RESTORE, value=str(revocation_id),
        style="primary")])


def _raised(s: LimitStatus) -> str:
    return f" (raised by {metric_value(s.metric, s.raised)})" if s.raised else ""


def warning_message(w: Warning, tz: ZoneInfo) -> Reply:
    """Posted and DMed at each threshold, with a Request more button (a raise request)."""
    head = "⛔ Limit reached (notify only)" if w.threshold >= 100 else f"⚠️ {w.threshold}% of a limit"
    text = f"{head}: {w.subject.mention}\n{_usage_line(w.status, tz)}{_raised(w.status)}"
    blocks = [section(text), request_more_button(w.status.limit_id)]
    return f"{w.subject.name} is at {w.status.percent:.0f}% of a limit", [b.to_dict() for b in blocks]


def grace_message(g: GraceNotice, tz: ZoneInfo) -> Reply:
    """A breach on a limit with a grace period: the revocation waits, a raise stops it."""
    left = format_duration(g.grace)
    text = (f"⏳ *Limit reached*: {g.subject.mention}: access ends in {_spelled(left)} "
            f"({when(g.ends, tz)}) unless a request is approved.\n{_usage_line(g.status, tz)}")
    blocks = [section(text), request_more_button(g.status.limit_id)]
    return f"{g.subject.name}: access ends in {_spelled(left)} unless a request is approved", \
        [b.to_dict() for b in blocks]


def _spelled(short: str) -> str:
    """"10m" → "10 minutes", "2h" → "2 hours", "1d" → "1 day"."""
    n, unit = int(short[:-1]), {"m": "minute", "h": "hour", "d": "day"}[short[-1]]
    return f"{n} {unit}{'' if n == 1 else 's'}"


def breach_message(b: Breach, tz: ZoneInfo) -> Reply:
    r = b.revocation
    dry = " (dry run: IAM was not changed)" if r.dry_run else ""
    text = (f"⛔ *Access revoked*{dry}: {r.subject.mention}\n{_usage_line(b.status, tz)}\n"
            f"Access comes back automatically when the window ends, or an admin approves a "
            f"restore request.")
    blocks: list[Any] = [section(text), _principals(r), restore_button(r.id)]
    return f"Bedrock access revoked for {r.subject.name}: limit reached", [b_.to_dict() for b_ in blocks]


def manual_revoke_message(r: RevocationView, actor_id: str | None) -> Reply:
    by = f"<@{actor_id}>" if actor_id else r.revoked_by
    dry = " (dry run: IAM was not changed)" if r.dry_run else ""
    note = f"\nReason: {plain(r.note)}" if r.note else ""
    text = f"⛔ *Access revoked*{dry}: {r.subject.mention}, by {by}.{note}"
    blocks: list[Any] = [section(text), _principals(r), restore_button(r.id)]
    return f"Bedrock access revoked for {r.subject.name}", [b.to_dict() for b in blocks]


def restored_message(revs: list[RevocationView], by: str, note: str = "") -> Reply:
    r = revs[0]
    still = r.principals == () and any(v.state == "active" for v in revs)
    why = f" ({plain(note)})" if note else ""
    text = f"✅ *Access restored*: {r.subject.mention}, by {by}{why}."
    if not r.principals and not still:
        text += " No IAM principals are linked to this subject."
    return f"Bedrock access restored for {r.subject.name}", [section(text).to_dict()]


def _principals(r: RevocationView) -> ContextBlock:
    if not r.principals:
        text = "No IAM principals are linked yet: link them with `/bedrock link`."
    else:
        shown = ", ".join(code(p) for p in r.principals[:10])
        more = f" and {len(r.principals) - 10} more" if len(r.principals) > 10 else ""
        text = f"Deny policy `bedrock-bot-deny-{r.subject.name}` on {shown}{more}"
    return ContextBlock(elements=[MarkdownTextObject(text=text[:2900])])
