"""Block Kit → plain text for a terminal (the demo, the CLI). Pure."""

from __future__ import annotations

import re
from typing import Any

_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([A-Z0-9]+)(?:\|([^>]*))?>")
_LINK = re.compile(r"<(https?://[^|>]+)(?:\|([^>]*))?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


def mrkdwn_to_text(text: str, names: dict[str, str] | None = None) -> str:
    names = names or {}
    text = _MENTION.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text)
    text = _CHANNEL.sub(lambda m: "#" + (m.group(2) or names.get(m.group(1), m.group(1))), text)
    text = _LINK.sub(lambda m: m.group(2) or m.group(1), text)
    text = _BOLD.sub(r"\1", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text_of(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("text", ""))
    return str(obj or "")


def block_lines(block: dict[str, Any]) -> list[str]:
    kind = block.get("type")
    if kind == "header":
        title = _text_of(block.get("text"))
        return [title, "=" * len(title)]
    if kind == "divider":
        return ["-" * 40]
    lines: list[str] = []
    if block.get("text"):
        lines.append(_text_of(block["text"]))
    for field in block.get("fields") or []:
        lines.append("  " + _text_of(field).replace("\n", ": ", 1))
    for element in block.get("elements") or []:
        if element.get("type") == "button":
            lines.append(f"[ {_text_of(element.get('text'))} ]")
        elif element.get("type") != "image":
            lines.append(_text_of(element))
    if kind == "image":
        lines.append(f"(image: {block.get('alt_text', '')})")
    return lines


def blocks_to_text(blocks: list[dict[str, Any]] | None, fallback: str = "",
                   names: dict[str, str] | None = None) -> str:
    if not blocks:
        return mrkdwn_to_text(fallback, names)
    lines = [line for b in blocks for line in block_lines(b)]
    return mrkdwn_to_text("\n".join(lines), names)
