"""SNS events → Block Kit (pure): alarms, budgets, recoveries, unrecognised messages."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import ContextBlock, MarkdownTextObject

from bot.aws.notifications import AlarmEvent, BudgetEvent
from bot.render.blocks import Reply, finish, section
from bot.render.enforcement import restore_button
from bot.render.text import METRIC_LABEL, bar, escape, metric_value, when
from bot.services.events import EventOutcome


def _context(text: str) -> dict[str, Any]:
    return ContextBlock(elements=[MarkdownTextObject(text=text[:2900])]).to_dict()


def describe_alarm(e: AlarmEvent) -> str:
    lines = [f"*CloudWatch alarm* `{escape(e.name)}` is *{escape(e.state)}*"
             + (f" (was {escape(e.old_state)})" if e.old_state else "")]
    if e.metric:
        threshold = f" {escape(e.comparison or '')} {e.threshold:g}" if e.threshold is not None else ""
        lines.append(f"Metric: {escape(e.metric)}{threshold}")
    if e.reason:
        lines.append(f"Reason: {escape(e.reason[:600])}")
    return "\n".join(lines)


def describe_budget(e: BudgetEvent) -> str:
    cur = e.currency or "USD"
    amount = f"{e.amount:,.2f} {cur}" if e.amount is not None else "?"
    budgeted = f"{e.budgeted:,.2f} {cur}" if e.budgeted is not None else "?"
    return (f"*AWS Budget* `{escape(e.budget_name)}`: {e.kind.lower()} {e.period or ''} spend "
            f"{amount} of {budgeted}" + (f" (threshold {escape(e.threshold)})" if e.threshold else ""))


def _describe(e: AlarmEvent | BudgetEvent | None) -> str:
    if isinstance(e, AlarmEvent):
        return describe_alarm(e)
    if isinstance(e, BudgetEvent):
        return describe_budget(e)
    return ""


def event_message(o: EventOutcome, tz: ZoneInfo) -> Reply | None:
    if o.outcome == "duplicate":
        return None
    if o.outcome in ("confirmed", "unsubscribed"):
        verb = "Subscribed to" if o.outcome == "confirmed" else "Unsubscribed from"
        return f"{verb} {o.topic}", finish([section(f"📬 {verb} SNS topic `{escape(o.topic)}`.")])
    if o.outcome == "unrecognised":
        body = escape(o.raw[:1500]).replace("```", "ʼʼʼ")
        head = section(f"❓ Unrecognised SNS message on `{escape(o.topic)}`")
        return "Unrecognised SNS message", finish([head, section(f"```{body}```")])
    blocks: list[Any] = [section(_head(o) + "\n" + _describe(o.event))]
    if o.status is not None:
        s = o.status
        blocks.append(_context(f"`{bar(s.percent)}` the bot's own count: {metric_value(s.metric, s.used)} "
                               f"of {metric_value(s.metric, s.amount)} {METRIC_LABEL[s.metric]}/{s.window}; "
                               f"window ends {when(s.window_end, tz)}"))
    if o.revocation is not None:
        blocks.append(restore_button(o.revocation.id).to_dict())
    return f"{_head(o)}", finish(blocks)


def _head(o: EventOutcome) -> str:
    who = o.subject.mention if o.subject else ""
    return {"revoked": f"⛔ *Access revoked* for {who}",
            "warned": f"⚠️ Limit alert for {who}",
            "recovered": f"✅ Recovered for {who} (access is not restored automatically)",
            "stale": f"🕰️ Late AWS Budget alert for {who}: about a window that has ended, not enforced",
            }.get(o.outcome, "🔔 AWS notification")
