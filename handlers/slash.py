"""`/bedrock`: ack at once in Bolt's listener thread, then parse → flow → render
(bot.slash.registry) → respond() on the answer pool (handlers/answers_pool.py)."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.flows.runner import audit_refusal
from bot.render import messages
from bot.render.blocks import Reply
from bot.runtime import Services
from bot.services.directory import Actor
from bot.slash import registry
from bot.slash.answers import Request
from handlers.answers_pool import hand_off
from handlers.replies import answering


def handle_lookup(client: WebClient) -> Any:
    """A mention without a name (`<@U123>`): ask Slack for the handle; None when it won't say."""
    def handle_of(user_id: str) -> str | None:
        try:
            user = client.users_info(user=user_id)["user"]
            return str(user.get("name") or "") or None
        except (SlackApiError, KeyError, TypeError):
            return None
    return handle_of


def answer(services: Services, client: WebClient, user_id: str, text: str) -> Reply:
    """Everything after the ack: one reply, whatever happens (never a stack trace)."""
    replies: list[str] = []
    actor = Actor.slack(user_id)
    with answering(replies.append, lambda reason: audit_refusal(
            services.db, services.clock, actor, "command", "slack", reason, "error")):
        return registry.answer(Request(services, actor, handle_lookup(client)), text)
    return messages.text_reply(replies[0])


def register(app: App, services: Services, answers: Executor) -> None:
    @app.command("/bedrock")
    def bedrock(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        user, text = str(body.get("user_id", "")), str(body.get("text", ""))

        def work() -> None:
            reply, blocks = answer(services, client, user, text)
            respond(text=reply, blocks=blocks, response_type="ephemeral")

        hand_off(answers, work, "/bedrock")
