"""Small pure helpers shared by the Block Kit and terminal renderers."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from zoneinfo import ZoneInfo

from bot.quantities import format_tokens, format_usd

BAR_WIDTH = 10


def escape(text: str) -> str:
    """Slack's three control characters as entities: text cannot become a mention, a link or
    a broadcast (https://api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# Slack has no escape for its mrkdwn markers (the page above lists only & < >), so a
# marker in user text is swapped for a look-alike that Slack shows as a plain character.
_MARKERS = str.maketrans({"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"})
# Line-leading `>` is a block quote even as `&gt;`; the look-alike is not.
_QUOTE = re.compile(r"^([ \t]*)>", re.MULTILINE)


def _visible(ch: str) -> str:
    """Bidi overrides, zero-width and other invisible format/control characters → `[U+202E]`:
    they can reorder or hide what an admin reads, so they are shown, not kept or dropped."""
    if ch in "\n\t" or unicodedata.category(ch) not in ("Cf", "Cc", "Zl", "Zp"):
        return ch
    return f"[U+{ord(ch):04X}]"


def _reveal(text: str) -> str:
    return "".join(_visible(ch) for ch in text)


def plain(text: str) -> str:
    """User-typed text (a reason, a note, a metadata value) shown as prose in mrkdwn: read
    literally, whatever it holds — no mention, link, broadcast, bold/italic/strike/code,
    block quote or hidden bidi/zero-width character. Printable ASCII without & < > * _ ~ or a
    backtick comes out unchanged."""
    return escape(_QUOTE.sub("\\1\u203a", _reveal(text))).translate(_MARKERS)


def code(text: str) -> str:
    """User-typed text shown as a code span (an ARN, a key=value): markers are inert inside
    one, so only the backtick (which would end it) and invisible characters change, and the
    rest stays copyable. One line: a newline would end the span too."""
    flat = _reveal(text.replace("\r", " ").replace("\n", " "))
    return "`" + escape(flat).replace("`", "\u02cb") + "`"


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
