"""The daily digest → Block Kit (pure): `digest_blocks(data, tz)` returns (fallback text, blocks).

Always the same shape (header, totals, then four titled sections, each saying "none" when
empty), at most 12 blocks; a long list is cut to fit a section's 3,000 characters and ends
with "…and N more". People are named by subject name, not mentioned, so the digest pings
nobody; the one exception is the requester of a pending restore request (a Slack id is all
the bot knows about them, and the request is theirs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar
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
from bot.render.blocks import SECTION_LIMIT, Reply, finish, section
from bot.render.text import METRIC_LABEL, bar, escape, metric_value, plain, trend, when
from bot.services.digest import OTHERS, AtRisk, DigestData, PendingLine, RevokedLine, SubjectDay

_BUDGET = SECTION_LIMIT - 100  # room for the "…and N more" line
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
T = TypeVar("T")


def _list_section(title: str, items: Sequence[T], line: Callable[[int, T], str], empty: str) -> SectionBlock:
    """A titled list cut to fit one section; says how many lines did not fit. `line(rank, item)`
    is called only for the lines shown (thousands of limits can be at risk)."""
    if not items:
        return section(f"*{title}*\n_{empty}_")
    text = f"*{title}*"
    for i, item in enumerate(items):
        shown = line(i + 1, item)
        if len(text) + 1 + len(shown) > _BUDGET:
            return section(f"{text}\n_…and {len(items) - i} more_")
        text += "\n" + shown
    return section(text)


def _who(name: str, kind: str) -> str:
    return f"*{escape(name)}*" + (" (team)" if kind == "team" else "")


def age(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def top_line(rank: int, s: SubjectDay) -> str:
    t, p = s.totals, s.previous
    return (f"{rank}. {_who(s.name, s.kind)}: {format_usd(t.cost_micro_usd)} "
            f"({trend(t.cost_micro_usd, p.cost_micro_usd)}) · {format_tokens(t.tokens)} tokens "
            f"({trend(t.tokens, p.tokens)})")


def risk_line(a: AtRisk, tz: ZoneInfo) -> str:
    s = a.status
    flag = " ⛔" if s.percent >= 100 else ""
    forecast = (f" · forecast {metric_value(s.metric, a.forecast)} by {when(s.window_end, tz)}"
                if a.forecast is not None else "")
    notify = " · notify only" if s.action == "notify" else ""
    return (f"`{bar(s.percent)}` *{s.percent:.0f}%*{flag} {_who(s.subject, a.kind)} "
            f"{METRIC_LABEL[s.metric]}/{s.window}: {metric_value(s.metric, s.used)} of "
            f"{metric_value(s.metric, s.amount)}{forecast}{notify}")


def revoked_line(r: RevokedLine, tz: ZoneInfo) -> str:
    note = f" ({plain(r.note[:200])})" if r.note else ""
    return (f"⛔ {_who(r.subject, r.kind)}: {plain(r.reason)}{note} · since {when(r.since, tz)} "
            f"by {escape(r.by)}")


def request_line(r: PendingLine) -> str:
    who = f"<@{r.requester}>" if _SLACK_ID.match(r.requester) else escape(r.requester)
    reason = f": “{plain(r.reason[:200])}”" if r.reason else ""
    return f"#{r.id} *{escape(r.subject)}*, asked by {who} {age(r.age)} ago{reason}"


def digest_text(d: DigestData) -> str:
    """The notification fallback text (and what a screen reader says)."""
    t, p = d.totals, d.previous
    return (f"Bedrock digest for {d.day.isoformat()}: {format_tokens(t.tokens)} tokens "
            f"({trend(t.tokens, p.tokens)}), {format_usd(t.cost_micro_usd)} "
            f"({trend(t.cost_micro_usd, p.cost_micro_usd)}); {len(d.at_risk)} near a limit, "
            f"{len(d.revocations)} revoked, {len(d.requests)} waiting for approval")


def digest_blocks(d: DigestData, tz: ZoneInfo) -> Reply:
    t, p = d.totals, d.previous
    fields = [
        MarkdownTextObject(text=f"*Tokens in*\n{format_tokens(t.all_input_tokens)}"),
        MarkdownTextObject(text=f"*Tokens out*\n{format_tokens(t.output_tokens)}"),
        MarkdownTextObject(text=f"*Est. cost*\n{format_usd(t.cost_micro_usd)}"),
        MarkdownTextObject(text=f"*Requests*\n{format_tokens(t.requests)}"),
        MarkdownTextObject(text=f"*vs day before*\n{trend(t.tokens, p.tokens)} tokens, "
                                f"{trend(t.cost_micro_usd, p.cost_micro_usd)} cost"),
        MarkdownTextObject(text=f"*Active users*\n{d.active_users}"),
    ]
    day = f"{_WEEKDAYS[d.day.weekday()]} {d.day.isoformat()}"
    blocks: list[Any] = [
        HeaderBlock(text=f"Bedrock usage digest: {day}"[:150]),
        SectionBlock(fields=fields),
        DividerBlock(),
        _list_section("Top subjects", d.top, top_line, "No usage."),
        _list_section("At or above 80% of a limit", d.at_risk, lambda _i, a: risk_line(a, tz), "Nobody."),
        _list_section("Revoked now", d.revocations, lambda _i, r: revoked_line(r, tz), "Nobody."),
        _list_section("Restore requests waiting", d.requests, lambda _i, r: request_line(r), "None."),
        *_raise_blocks(d, tz),
        *_money_blocks(d),
        ContextBlock(elements=[MarkdownTextObject(text=(
            f"Day = {when(d.start, tz)} → {when(d.end, tz)} · a team includes its members · "
            f"costs are estimates from list prices · chart of the last {len(d.chart.days)} days "
            f"in the thread")[:2000])]),
    ]
    return digest_text(d), finish(blocks)


def _raise_blocks(d: DigestData, tz: ZoneInfo) -> list[Any]:
    """Temporary raises granted that day: shown only when there were some."""
    if not d.raises:
        return []
    lines = [f"`{r.subject}` +{r.amount_text} {METRIC_LABEL[r.metric]}/{r.window} until "
             f"{when(r.expires_at, tz)}, {_granter(r.granted_by)}: {plain(r.reason[:200])}" for r in d.raises]
    return [_list_section("Raises granted", lines, lambda _i, line: line, "None.")]


def _granter(label: str) -> str:
    return f"<@{label.removeprefix('slack:')}>" if label.startswith("slack:") else label


def _money_blocks(d: DigestData) -> list[Any]:
    """Unpriced calls and the latest AWS bill: shown only when there is something to say."""
    lines = []
    if d.unpriced:
        line = unpriced_line(d.unpriced.tokens, d.unpriced.requests, d.unpriced.models)
        if line:
            lines.append(line)
    if d.bill is not None:
        lines.append("🧾 " + bill_line(d.bill.account))
        for name, b in d.bill.divergent[:10]:
            lines.append(f"• {escape(name)} ({b.basis}): {bill_line(b)}")
        if len(d.bill.divergent) > 10:
            lines.append(f"• … and {len(d.bill.divergent) - 10} more off the estimate")
    if not lines:
        return []
    return [SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:2900]))]


def chart_title(d: DigestData) -> str:
    days = d.chart.days
    span = f"{days[0].isoformat()} to {days[-1].isoformat()}" if days else d.day.isoformat()
    return f"Bedrock tokens per day, {span} ({d.tz_name})"


def digest_chart(d: DigestData) -> tuple[bytes, str, str]:
    """(PNG, file name, title) of the digest's chart."""
    from bot.render.chart import stacked_chart_png  # matplotlib only when a chart is drawn

    title = chart_title(d)
    png = stacked_chart_png(d.chart.days, d.chart.series, title, rest=OTHERS)
    return png, f"bedrock-usage-{d.day.isoformat()}.png", title


def chart_failed_text(day: str, problem: str) -> str:
    """Said in the digest channel when the chart did not arrive (files need the bot in the
    channel; ``chat:write.public`` only covers messages)."""
    text = f":warning: The usage chart for {day} could not be posted: {problem}."
    if "not_in_channel" in problem or "channel_not_found" in problem:
        text += " Files need the bot in this channel: type `/invite` followed by the bot's name here."
    return text
