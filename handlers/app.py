"""The Bolt app, built on demand (no work at import time)."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.config import Settings
from bot.runtime import Services
from bot.slack.notifier import NullNotifier, SlackNotifier
from bot.slack.outbox import OutboxNotifier
from handlers import approvals, errors, raises, slash
from handlers.answer_procs import AnswerProcesses
from handlers.answers_pool import answer_pool


def slack_client(settings: Settings) -> WebClient:
    """A WebClient that honours Retry-After on 429 and retries 5xx and dropped connections."""
    client = WebClient(token=settings.slack.bot_token or None, base_url=settings.slack.api_url)
    client.retry_handlers.extend([RateLimitErrorRetryHandler(max_retry_count=2),
                                  ServerErrorRetryHandler(max_retry_count=2),
                                  ConnectionErrorRetryHandler(max_retry_count=2)])
    return client


def listener_pool() -> ThreadPoolExecutor:
    """Bolt's executor for lazy listeners (the bot has none: listeners run in the request thread,
    see `create_app`); small, since nothing queues on it."""
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="bolt")


def create_app(settings: Settings, services: Services, client: WebClient | None = None,
               listener_executor: Executor | None = None,
               answer_executor: Executor | None = None,
               answer_workers: AnswerProcesses | None = None) -> App:
    """The Bolt app with every listener and the one error handler behind them.

    Every listener acks and hands its work to `answer_executor` (tests pass executors they can
    wait on), so it returns within a millisecond: Bolt runs it in the request thread and sends
    the 200 when it returns (`process_before_response=True`). With False, Bolt ran the listener on
    another thread and the request thread polled for the ack every 10 ms, waking on a GIL shared
    with the answers (slack_bolt/listener/thread_runner.py): 5 ms and a thread hop per ack."""
    client = client or slack_client(settings)
    if isinstance(services.notifier, NullNotifier):
        services.notifier = OutboxNotifier(SlackNotifier(client), services.db, services.clock)
    app = App(client=client, signing_secret=settings.slack.signing_secret or "unset",
              token_verification_enabled=False, process_before_response=True,
              ignoring_self_events_enabled=False,
              listener_executor=listener_executor or listener_pool())
    errors.register(app, services)
    answers = answer_executor or answer_pool()
    slash.register(app, services, answers, answer_workers)
    approvals.register(app, services, answers)
    raises.register(app, services, answers)
    return app
