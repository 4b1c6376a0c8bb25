"""Posting to Slack from the core. The interface is small so jobs and tests can swap it."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)


class Notifier(Protocol):
    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str | None: ...
    def dm(self, user_id: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str | None: ...
    def update(self, channel: str, ts: str, text: str,
               blocks: list[dict[str, Any]] | None = None) -> None: ...


class SlackNotifier:
    """Notifier over slack_sdk's WebClient (which carries the retry handlers)."""

    def __init__(self, client: WebClient) -> None:
        self.client = client

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str | None:
        resp = self.client.chat_postMessage(channel=channel, text=text, blocks=blocks,
                                            unfurl_links=False, unfurl_media=False)
        return str(resp.get("ts")) if resp.get("ts") else None

    def dm(self, user_id: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str | None:
        channel = self.client.conversations_open(users=user_id)["channel"]["id"]
        return self.post(channel, text, blocks)

    def update(self, channel: str, ts: str, text: str,
               blocks: list[dict[str, Any]] | None = None) -> None:
        self.client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)


class NullNotifier:
    """For CLI runs without a Slack token: says what it would have posted in the log."""

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str | None:
        log.info("would post to %s: %s", channel, text)
        return None

    def dm(self, user_id: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str | None:
        log.info("would DM %s: %s", user_id, text)
        return None

    def update(self, channel: str, ts: str, text: str,
               blocks: list[dict[str, Any]] | None = None) -> None:
        log.info("would update %s/%s: %s", channel, ts, text)


def safe(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a notifier call after a commit; a Slack failure is logged, never raised."""
    try:
        return call(*args, **kwargs)
    except (SlackApiError, OSError) as exc:
        log.warning("slack call failed: %s", type(exc).__name__)
        return None
