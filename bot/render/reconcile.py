"""Reconcile report → Block Kit for the alert channel (pure). Nothing to say, no message."""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock

from bot.render.blocks import Reply
from bot.render.text import escape
from bot.services.reconcile import (
    DENY_ALTERED,
    DENY_MISSING,
    DENY_STALE,
    DENY_UNKNOWN,
    IAM_ERROR,
    KINDS,
    NOT_BLOCKABLE,
    PROFILE_FOUND,
    PROFILE_MISSING,
    PROFILE_UNRECORDED,
    PROFILES_ERROR,
    Drift,
    ReconcileReport,
)

TITLES = {
    DENY_MISSING: "Deny policy missing in IAM",
    DENY_ALTERED: "Deny policy changed outside the bot",
    DENY_STALE: "Deny policy without an active revocation",
    DENY_UNKNOWN: "Bot deny policy for a subject the database doesn't know",
    PROFILE_MISSING: "Recorded inference profile missing in AWS",
    PROFILE_FOUND: "Inference profile back in AWS",
    PROFILE_UNRECORDED: "Bot-managed inference profile not in the database",
    IAM_ERROR: "IAM could not be read",
    NOT_BLOCKABLE: "Revoked, but no configured method can block this principal (docs/enforcement.md)",
    PROFILES_ERROR: "Inference profiles could not be checked",
}
MAX_LINES = 15  # per kind; the rest are counted (every drift is in the audit log)
SECTION_CHARS = 2900  # Slack's limit is 3000
FALLBACK_ITEMS = 3


def _code(text: str) -> str:
    clean = escape(text.replace("`", "'"))
    return f"`{clean}`"


def _line(d: Drift) -> str:
    who = f"{_code(d.subject)} " if d.subject else ""
    action = f"⚠️ *{escape(d.action_taken)}*" if d.failed else f"*{escape(d.action_taken)}*"
    detail = f" — {escape(d.detail[:200])}" if d.detail else ""
    return f"• {who}{_code(d.target)} → {action}{detail}"


def _drift_section(kind: str, drifts: list[Drift]) -> SectionBlock:
    head = f"*{TITLES.get(kind, kind)}* ({len(drifts)})"
    lines: list[str] = []
    size = len(head)
    for d in drifts[:MAX_LINES]:
        line = _line(d)
        if size + len(line) + 1 > SECTION_CHARS - 60:
            break
        lines.append(line)
        size += len(line) + 1
    if len(lines) < len(drifts):
        lines.append(f"…and {len(drifts) - len(lines)} more (`/bedrock audit`)")
    return SectionBlock(text=MarkdownTextObject(text="\n".join([head, *lines])[:3000]))


def _fallback(report: ReconcileReport) -> str:
    n = len(report.drifts)
    items = [f"{TITLES.get(d.kind, d.kind).lower()}"
             f"{' for ' + d.subject if d.subject else ''} ({d.action_taken})"
             for d in report.drifts[:FALLBACK_ITEMS]]
    more = f" and {n - FALLBACK_ITEMS} more" if n > FALLBACK_ITEMS else ""
    text = f"Reconcile found {n} drift{'s' if n != 1 else ''} between the database and AWS: "
    return (text + "; ".join(items) + more)[:3000]


def reconcile_message(report: ReconcileReport) -> Reply | None:
    """None when the database and AWS agree; otherwise one message, at most 12 blocks."""
    if not report.drifts:
        return None
    n = len(report.drifts)
    title = f"🔧 Reconcile: {n} drift{'s' if n != 1 else ''} between the database and AWS"
    blocks: list[Any] = [HeaderBlock(text=title[:150])]
    order = list(KINDS) + sorted({d.kind for d in report.drifts} - set(KINDS))
    for kind in order:
        found = [d for d in report.drifts if d.kind == kind]
        if found:
            blocks.append(_drift_section(kind, found))
    notes = ["Each drift is in the audit log (`/bedrock audit`)."]
    if report.dry_run:
        notes.append("Dry run (`BOT_DRY_RUN=1`): IAM was not changed.")
    if report.failures:
        notes.append(f"{len(report.failures)} could not be fixed now; the next reconcile tries again.")
    notes.append("AIPs are never deleted by the bot.")
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=" ".join(notes))]))
    return _fallback(report), [b.to_dict() for b in blocks[:50]]
