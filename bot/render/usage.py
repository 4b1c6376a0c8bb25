"""Usage report → Block Kit (pure)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.quantities import format_tokens, format_usd
from bot.render.billing import bill_line, unpriced_line
from bot.render.text import METRIC_LABEL, bar, metric_value, plain, trend, when
from bot.services.ledger import Totals
from bot.services.limit_usage import LimitStatus
from bot.services.usage import UsageReport


def tokens_in(t: Totals) -> str:
    """Input as limits count it: cache reads and writes included, and said so."""
    cached = t.cache_read_tokens + t.cache_write_tokens
    text = format_tokens(t.all_input_tokens)
    return f"{text} (incl. {format_tokens(cached)} cache)" if cached else text


def limit_line(s: LimitStatus, tz: ZoneInfo) -> str:
    pct = s.percent
    flag = " ⛔" if pct >= 100 else " ⚠️" if s.warn and pct >= min(s.warn) else ""
    unpriced = (f" · ⚠️ {format_tokens(s.unpriced_tokens)} unpriced tokens not in the cost"
                if s.unpriced_tokens else "")
    return (f"`{bar(pct)}` *{pct:.0f}%*{flag} {METRIC_LABEL[s.metric]}/{s.window} "
            f"({s.subject}): {metric_value(s.metric, s.used)} of {metric_value(s.metric, s.amount)}"
            f" · resets {when(s.window_end, tz)}" + (" · notify only" if s.action == "notify" else "")
            + unpriced)


def usage_blocks(r: UsageReport, tz: ZoneInfo) -> list[dict[str, Any]]:
    t, p = r.totals, r.previous
    fields = [
        MarkdownTextObject(text=f"*Tokens in*\n{tokens_in(t)}"),
        MarkdownTextObject(text=f"*Tokens out*\n{format_tokens(t.output_tokens)}"),
        MarkdownTextObject(text=f"*Requests*\n{format_tokens(t.requests)}"),
        MarkdownTextObject(text=f"*Est. cost*\n{format_usd(t.cost_micro_usd)}"),
        MarkdownTextObject(text=f"*vs previous*\n{trend(t.tokens, p.tokens)} tokens, "
                                f"{trend(t.cost_micro_usd, p.cost_micro_usd)} cost"),
    ]
    if r.forecast is not None:
        fields.append(MarkdownTextObject(
            text=f"*Forecast to period end*\n{format_tokens(r.forecast.tokens)} tokens, "
                 f"{format_usd(r.forecast.cost_micro_usd)}"))
    blocks: list[Any] = [
        HeaderBlock(text=f"Bedrock usage: {r.subject.name} ({r.label})"[:150]),
        SectionBlock(fields=fields),
    ]
    money = [line for line in (
        unpriced_line(t.unpriced_tokens, t.unpriced_requests, r.unpriced_models),
        bill_line(r.bill) if r.bill is not None else None) if line]
    if money:
        blocks.append(SectionBlock(text=MarkdownTextObject(text="\n".join(money)[:2900])))
    if r.limits:
        blocks += [DividerBlock(), SectionBlock(text=MarkdownTextObject(
            text="*Limits*\n" + "\n".join(limit_line(s, tz) for s in r.limits[:20])))]
    status = ("⛔ *Revoked*: " + plain("; ".join(r.revoked))) if r.revoked else "✅ *Active*"
    blocks.append(SectionBlock(text=MarkdownTextObject(text=status[:2900])))
    context = []
    if r.teams:
        context.append("teams: " + ", ".join(r.teams))
    if r.members:
        context.append(f"{len(r.members)} members: " + ", ".join(r.members[:20]))
    context.append(f"{when(r.start, tz)} → {when(r.end, tz)}; costs are estimates from list prices")
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=" · ".join(context)[:2900])]))
    return [b.to_dict() for b in blocks]


def usage_text(r: UsageReport) -> str:
    """The notification fallback text (and what a screen reader says)."""
    unpriced = (f" (+{format_tokens(r.totals.unpriced_tokens)} unpriced tokens)"
                if r.totals.unpriced_tokens else "")
    return (f"{r.subject.name} {r.label}: {format_tokens(r.totals.all_input_tokens)} in, "
            f"{format_tokens(r.totals.output_tokens)} out, {format_usd(r.totals.cost_micro_usd)}"
            + unpriced)
