"""Slack down: alerts are kept and delivered later, not lost."""

from __future__ import annotations

from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import OutboxMessage
from jobs import flush_outbox
from tests.harness import ALERTS, running_bot


def test_post_while_slack_is_down_is_delivered_later(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock) as bot:
        bot.slack.down()
        assert bot.services.notifier.post(ALERTS, "limit reached for alice") is None
        with db.session_scope() as s:
            kept = s.scalars(select(OutboxMessage)).one()
            assert kept.target == ALERTS and kept.sent_at is None
        clock.advance(minutes=1)
        assert flush_outbox.run(bot.services).value.retry == 1  # still down: kept, backed off
        bot.slack.up()
        bot.slack.clear()
        assert flush_outbox.run(bot.services).value.sent == 0  # not due yet (backoff)
        clock.advance(minutes=5)
        assert flush_outbox.run(bot.services).value.sent == 1
        assert bot.slack.last("chat.postMessage").args["text"] == "limit reached for alice"
        assert flush_outbox.run(bot.services).value.sent == 0  # sent once


def test_permanent_errors_are_not_queued(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock) as bot:
        bot.slack.fail_always("chat.postMessage", "channel_not_found")
        assert bot.services.notifier.post("CNOPE", "x") is None
        with db.session_scope() as s:
            assert s.scalars(select(OutboxMessage)).all() == []
