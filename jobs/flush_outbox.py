"""flush_outbox: retry Slack posts that failed while Slack was unreachable."""

from __future__ import annotations

from bot.flows.runner import Outcome, execute
from bot.runtime import Services
from bot.services.directory import Actor
from bot.slack.notifier import NullNotifier
from bot.slack.outbox import FlushResult, OutboxNotifier, flush

NAME = "flush_outbox"


def run(services: Services) -> Outcome[FlushResult]:
    s = services
    inner = s.notifier.inner if isinstance(s.notifier, OutboxNotifier) else s.notifier
    if isinstance(inner, NullNotifier):  # no Slack connection here: leave the messages queued
        return Outcome(result=FlushResult(0, 0, 0))
    return execute(s.db, s.clock, Actor.system(NAME), NAME, "outbox",
                   lambda session: flush(session, s.clock, inner))
