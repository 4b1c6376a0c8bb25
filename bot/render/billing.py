"""Estimate vs bill, and unpriced usage, as text (pure): for `/bedrock usage`, the digest and alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

from bot.quantities import format_tokens, format_usd
from bot.render.text import escape
from bot.services.billing import BillComparison

if TYPE_CHECKING:
    from bot.flows.bill_reconcile import Divergence


def bill_line(b: BillComparison) -> str:
    """"AWS billed $12.40 (estimate $11.90, +4%)" with the days it covers."""
    pct = b.divergence_pct
    delta = "no estimate" if pct is None else f"{pct:+.0f}%"
    span = (b.first_day.isoformat() if b.days == 1
            else f"{b.first_day.isoformat()} → {b.last_day.isoformat()}")
    return (f"AWS billed {format_usd(b.billed_micro_usd)} (estimate "
            f"{format_usd(b.estimate_micro_usd)}, {delta}) for {span} UTC")


def unpriced_line(tokens: int, requests: int, models: Sequence[str] = ()) -> str | None:
    """The flag for calls to models without a price: never a silent $0."""
    if tokens <= 0 and requests <= 0:
        return None
    which = f" ({escape(', '.join(models[:5]))}{' …' if len(models) > 5 else ''})" if models else ""
    plural = "" if requests == 1 else "s"
    return (f"⚠️ {format_tokens(tokens)} tokens in {format_tokens(requests)} request{plural} went to "
            f"models without a price{which}: counted in tokens, not in the cost. "
            "`bedrock-bot prices refresh` or BOT_PRICING_FILE prices them.")


def divergence_alert(divergences: Sequence[Divergence], threshold_pct: float) -> str | None:
    """The alert-channel text for closed days whose bill and estimate part by > threshold."""
    if not divergences:
        return None
    lines = [f"💸 *AWS bill vs the bot's estimate*: {len(divergences)} off by more than "
             f"{threshold_pct:g}%"]
    for d in divergences[:20]:
        who = f"*{escape(d.subject)}* ({d.kind}, {d.bill.basis})" if d.subject else "*the account*"
        lines.append(f"• {who}: {bill_line(d.bill)}\n    likely: " + "; ".join(d.causes))
    if len(divergences) > 20:
        lines.append(f"… and {len(divergences) - 20} more")
    return "\n".join(lines)[:3000]


def inactive_tags_note(keys: Sequence[str]) -> str | None:
    if not keys:
        return None
    return ("No Bedrock cost in Cost Explorer carries the tag(s) " + ", ".join(f"`{k}`" for k in keys)
            + ": activate them as cost-allocation tags, or bills cannot be matched to subjects.")


def estimated_note(divergences: Sequence[Divergence], estimated_days: Sequence[date]) -> str | None:
    """Cost Explorer still refines these days: a divergence on them may shrink tomorrow."""
    days = sorted({d.bill.first_day for d in divergences} & set(estimated_days))
    if not days:
        return None
    return ("AWS still marks " + ", ".join(d.isoformat() for d in days)
            + " as Estimated: the bill may change; the bot reads it again tomorrow.")
