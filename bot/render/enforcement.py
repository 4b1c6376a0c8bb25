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

from bot.aws.principals import KIND_LABEL
from bot.quantities import format_duration
from bot.render.blocks import Reply, section
from bot.render.raises import request_more_button
from bot.render.text import METRIC_LABEL, bar, code, escape, metric_value, plain, when
from bot.services.access import RevocationView, SubjectCheck
from bot.services.enforce import Breach, GraceNotice, Warning
from bot.services.limit_usage import LimitStatus

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


def headline(r: RevocationView) -> str:
    """Never "revoked" when nothing was blocked (docs/enforcement.md, "Honest outcomes")."""
    if r.blocked:
        return "⛔ *Access revoked*"
    return "⚠️ *Revocation recorded, access NOT blocked*"


def not_blocked_lines(r: RevocationView) -> list[str]:
    """"⚠ alice: SSO session — no method configured; see docs/enforcement.md", one a principal."""
    lines = [f"⚠ {r.subject.name}: {b.label} {code(b.arn)} — {escape(b.reason)}" for b in r.not_blocked]
    if not r.blocks:
        lines.append(f"⚠ {r.subject.name}: no principal is linked — link one with `/bedrock link`")
    return lines


def block_summary(r: RevocationView) -> str:
    """The reply to `/bedrock revoke`: per principal the method, and what is left open."""
    done = [b for b in r.blocks if b.blocked]
    head = (f"⛔ Revoked `{r.subject.name}`" if r.blocked else
            f"⚠️ `{r.subject.name}` is NOT blocked (the revocation is recorded and retried each "
            "enforce run)")
    lines = [head + (f": {len(done)} principal(s) blocked" if done else ".")]
    lines += [f"• {b.label} {code(b.arn)}: {b.method}" for b in done]
    return "\n".join(lines + not_blocked_lines(r))


def breach_message(b: Breach, tz: ZoneInfo) -> Reply:
    r = b.revocation
    dry = " (dry run: IAM was not changed)" if r.dry_run else ""
    text = (f"{headline(r)}{dry}: {r.subject.mention}\n{_usage_line(b.status, tz)}\n"
            f"Access comes back automatically when the window ends, or an admin approves a "
            f"restore request.")
    blocks: list[Any] = [section(text), _principals(r), restore_button(r.id)]
    return f"Bedrock access revoked for {r.subject.name}: limit reached", [b_.to_dict() for b_ in blocks]


def manual_revoke_message(r: RevocationView, actor_id: str | None) -> Reply:
    by = f"<@{actor_id}>" if actor_id else r.revoked_by
    dry = " (dry run: IAM was not changed)" if r.dry_run else ""
    note = f"\nReason: {plain(r.note)}" if r.note else ""
    text = f"{headline(r)}{dry}: {r.subject.mention}, by {by}.{note}"
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
        done = [b for b in r.blocks if b.blocked] if r.blocks else []
        shown = ", ".join(f"{code(b.arn)} ({b.method})" for b in done[:10]) if r.blocks else \
            ", ".join(code(p) for p in r.principals[:10])
        count = len(done) if r.blocks else len(r.principals)
        more = f" and {count - 10} more" if count > 10 else ""
        text = f"Blocked: {shown}{more}" if shown else ""
        text = "\n".join([t for t in [text, *not_blocked_lines(r)] if t])
    return ContextBlock(elements=[MarkdownTextObject(text=text[:2900] or "—")])


def check_text(checks: list[SubjectCheck]) -> str:
    """`/bedrock check` / `bedrock-bot check-access`: principal, kind, method, blocks or not."""
    lines: list[str] = []
    for c in checks:
        verdict = "would be blocked" if c.blockable else "would NOT be fully blocked"
        lines.append(f"*{c.subject}*: {verdict}" if c.methods else f"*{c.subject}*: no principal linked")
        for arn, m in c.methods:
            ok = "✅" if m.would_block else "⚠"
            missing = f" — missing: {escape(m.missing)}" if m.missing else ""
            lines.append(f"  {ok} {code(arn)} {KIND_LABEL.get(m.kind, m.kind)} → {m.method}{missing}")
    return "\n".join(lines) or "no subjects"
