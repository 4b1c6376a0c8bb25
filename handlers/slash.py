"""`/bedrock`: ack at once in Bolt's listener thread, then parse → flow → render
(bot.slash.registry) → respond(): in a worker process for a command that only reads
(handlers/answer_procs.py), else on the answer pool (handlers/answers_pool.py)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_bolt.context.respond import Respond as ResponseUrl
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.flows.runner import audit_refusal
from bot.render import messages
from bot.render.blocks import Reply
from bot.runtime import Services
from bot.services.directory import Actor
from bot.slash import registry
from bot.slash.answers import Request
from handlers.answer_procs import AnswerProcesses, Job
from handlers.answers_pool import cores, hand_off
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


def run_in_worker(services: Services, client: WebClient) -> Callable[[Job], None]:
    """What a worker process does with a queued command: answer it, post to its response_url."""
    def run(job: Job) -> None:
        _, user, text, response_url = job
        reply, blocks = answer(services, client, user, text)
        ResponseUrl(response_url=response_url)(text=reply, blocks=blocks, response_type="ephemeral")
    return run


def worker_processes(services: Services, client: WebClient,
                     answers: Executor) -> AnswerProcesses | None:
    """The answer processes `serve` forks (BOT_ANSWER_PROCESSES; by default one per core but
    one, the core left to the acks: each costs 26-39 MB of its own); None when set to 0 or when
    the database lives in this process's memory. A dead worker's owed answers are given on
    `answers` instead."""
    count = services.settings.bot.answer_processes
    count = max(1, cores() - 1) if count is None else count
    if count < 1 or ":memory:" in services.db.url:
        return None
    run = run_in_worker(services, client)
    return AnswerProcesses(run, count, rescue=lambda job: hand_off(answers, lambda: run(job), "/bedrock"),
                           after_fork=services.db.after_fork)


def register(app: App, services: Services, answers: Executor,
             workers: AnswerProcesses | None = None) -> None:
    @app.command("/bedrock")
    def bedrock(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
        ack()
        user, text = str(body.get("user_id", "")), str(body.get("text", ""))
        url = body.get("response_url")
        if (workers is not None and isinstance(url, str) and registry.reads_only(text)
                and workers.submit(("slash", user, text, url))):
            return

        def work() -> None:
            reply, blocks = answer(services, client, user, text)
            respond(text=reply, blocks=blocks, response_type="ephemeral")

        hand_off(answers, work, "/bedrock")
