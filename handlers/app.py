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


def slack_client(settings: Settings) -> WebClient:
    """A WebClient that honours Retry-After on 429 and retries 5xx and dropped connections."""
    client = WebClient(token=settings.slack.bot_token or None, base_url=settings.slack.api_url)
    client.retry_handlers.extend([RateLimitErrorRetryHandler(max_retry_count=2),
                                  ServerErrorRetryHandler(max_retry_count=2),
                                  ConnectionErrorRetryHandler(max_retry_count=2)])
    return client


def listener_pool() -> ThreadPoolExecutor:
    """Bolt acks from the listener's thread; with its default pool of 5, an ack queues behind
    other commands' answers. A wider pool keeps acks in milliseconds under bursts."""
    return ThreadPoolExecutor(max_workers=32, thread_name_prefix="bolt")


def create_app(settings: Settings, services: Services, client: WebClient | None = None,
               listener_executor: Executor | None = None) -> App:
    """The Bolt app with every listener and the one error handler behind them.

    `listener_executor` runs the listeners (tests pass one they can wait on)."""
    client = client or slack_client(settings)
    if isinstance(services.notifier, NullNotifier):
        services.notifier = OutboxNotifier(SlackNotifier(client), services.db, services.clock)
    app = App(client=client, signing_secret=settings.slack.signing_secret or "unset",
              token_verification_enabled=False, process_before_response=False,
              ignoring_self_events_enabled=False,
              listener_executor=listener_executor or listener_pool())
    errors.register(app, services)
    slash.register(app, services)
    approvals.register(app, services)
    raises.register(app, services)
    return app
