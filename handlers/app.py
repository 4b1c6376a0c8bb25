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
from handlers.answers_pool import answer_pool


def slack_client(settings: Settings) -> WebClient:
    """A WebClient that honours Retry-After on 429 and retries 5xx and dropped connections."""
    client = WebClient(token=settings.slack.bot_token or None, base_url=settings.slack.api_url)
    client.retry_handlers.extend([RateLimitErrorRetryHandler(max_retry_count=2),
                                  ServerErrorRetryHandler(max_retry_count=2),
                                  ConnectionErrorRetryHandler(max_retry_count=2)])
    return client


def listener_pool() -> ThreadPoolExecutor:
    """Bolt acks from the listener's thread. Listeners only ack and hand their work to the answer
    pool, so they hold a thread for well under a millisecond; 16 (serve's request threads) is
    enough that an ack never queues for one."""
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="bolt")


def create_app(settings: Settings, services: Services, client: WebClient | None = None,
               listener_executor: Executor | None = None,
               answer_executor: Executor | None = None) -> App:
    """The Bolt app with every listener and the one error handler behind them.

    `listener_executor` runs the listeners up to their ack, `answer_executor` the work after it
    (tests pass executors they can wait on)."""
    client = client or slack_client(settings)
    if isinstance(services.notifier, NullNotifier):
        services.notifier = OutboxNotifier(SlackNotifier(client), services.db, services.clock)
    app = App(client=client, signing_secret=settings.slack.signing_secret or "unset",
              token_verification_enabled=False, process_before_response=False,
              ignoring_self_events_enabled=False,
              listener_executor=listener_executor or listener_pool())
    errors.register(app, services)
    answers = answer_executor or answer_pool()
    slash.register(app, services, answers)
    approvals.register(app, services, answers)
    raises.register(app, services, answers)
    return app
