"""Small pure helpers shared by the Block Kit and terminal renderers."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from bot.quantities import format_tokens, format_usd

BAR_WIDTH = 10


def escape(text: str) -> str:
    """Slack mrkdwn escaping: user text cannot become a mention, a link or a broadcast."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar(percent: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(percent / 100 * width)))
    return "█" * filled + "░" * (width - filled)


def trend(now: int, before: int) -> str:
    if before == 0:
        return "new" if now else "—"
    change = (now - before) * 100 / before
    arrow = "▲" if change > 0 else "▼" if change < 0 else "="
    return f"{arrow} {abs(change):.0f}%"


def metric_value(metric: str, value: int) -> str:
    return format_usd(value) if metric == "cost_usd" else format_tokens(value)


METRIC_LABEL = {"tokens": "tokens", "input_tokens": "input tokens",
                "output_tokens": "output tokens", "cost_usd": "cost", "requests": "requests"}


def when(at: datetime, tz: ZoneInfo) -> str:
    return at.astimezone(tz).strftime("%a %d %b %H:%M %Z")
