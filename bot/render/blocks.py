"""The Block Kit pieces every renderer shares: the reply type, a section, the block cap."""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import SectionBlock
from slack_sdk.models.blocks.basic_components import MarkdownTextObject

Reply = tuple[str, list[dict[str, Any]]]  # (notification fallback text, blocks)
MAX_BLOCKS = 50  # Slack refuses a message with more
SECTION_LIMIT = 3000  # characters in one section's text


def section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=text[:SECTION_LIMIT]))


def finish(blocks: list[Any]) -> list[dict[str, Any]]:
    """Block objects → dicts, never more than Slack accepts."""
    return [b if isinstance(b, dict) else b.to_dict() for b in blocks[:MAX_BLOCKS]]
