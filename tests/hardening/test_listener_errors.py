"""The one Bolt error handler behind every listener: an exception that escapes is logged
without the request body, audited with outcome `error` and the user's id, and the person is
told one polite line on the response_url when there is one; never a stack trace in Slack."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import Ack
from sqlalchemy.exc import OperationalError

from bot.clock import FixedClock
from bot.db import Database
from handlers import errors
from handlers.http import WsgiApp
from tests.fakes.signing import event_body, interactive_body, slash_command_body
from tests.hardening.conftest import audit_events, last_audit_id, signed_post
from tests.hardening.payloads import ADMIN_USER, button
from tests.harness import ADMIN, ALICE, Harness, running_bot

SECRET_DETAIL = "secret-detail-7f3a"  # in the exception: the logs may show it, Slack must not
BODY_MARKER = "body-marker-91c2"  # in the request body only: nothing may log it


def _boom(message: str = SECRET_DETAIL) -> None:
    raise RuntimeError(message)


@pytest.fixture
def bot(db: Database, clock: FixedClock) -> Iterator[Harness]:
    with running_bot(db, clock) as bot:
        app = bot.app

        @app.action("boom_after_ack")
        def after_ack(ack: Ack) -> None:
            ack()
            _boom()

        @app.action("boom_before_ack")
        def before_ack(ack: Ack) -> None:
            _boom()

        @app.action("db_down")
        def db_down(ack: Ack) -> None:
            ack()
            raise OperationalError("select 1", {}, Exception("connection refused"))

        @app.command("/boom")
        def command(ack: Ack) -> None:
            ack()
            _boom()

        @app.event("app_mention")
        def mention(event: dict[str, Any]) -> None:
            _boom()

        yield bot


def _click(action_id: str, response_url: str) -> dict[str, Any]:
    return button(ADMIN_USER, [{"action_id": action_id, "block_id": "b", "value": BODY_MARKER,
                                "type": "button", "action_ts": "1.2"}], response_url)


def _told(bot: Harness, name: str) -> list[str]:
    bot.settle()
    return [str(c.args.get("text", "")) for c in bot.slack.calls(f"response_url:{name}")]


def _only_polite(told: list[str], expected: str = errors.POLITE) -> None:
    assert told == [expected]
    sent = json.dumps(told)
    for leak in (SECRET_DETAIL, "Traceback", "RuntimeError", "OperationalError", BODY_MARKER):
        assert leak not in sent


def test_a_listener_failing_after_ack_is_logged_audited_and_answered(
        bot: Harness, db: Database, caplog: pytest.LogCaptureFixture) -> None:
    mark = last_audit_id(db)
    with caplog.at_level(logging.DEBUG, logger="handlers.errors"):
        assert bot.action(_click("boom_after_ack", bot.slack.response_url("a"))).status == 200
        _only_polite(_told(bot, "a"))
    rows = audit_events(db, mark)
    assert [(e.actor, e.action, e.target, e.outcome, json.loads(e.details)) for e in rows] == [
        (f"slack:{ADMIN}", "slack.error", "block_actions:boom_after_ack", "error", {"error": "RuntimeError"})]
    logged = [r for r in caplog.records if r.name == "handlers.errors"]
    assert logged and logged[0].levelno == logging.ERROR and logged[0].exc_info is not None
    assert SECRET_DETAIL in caplog.text  # the operator sees what failed
    assert BODY_MARKER not in caplog.text  # but never the request body


def test_a_listener_failing_before_ack_over_http_is_400_not_500(bot: Harness, db: Database) -> None:
    """Bolt answers 500 when a listener raises before ack(); the router makes a signed one 400,
    and the person is still told."""
    mark = last_audit_id(db)
    app = WsgiApp(bot.services, bot.app)
    body = interactive_body(_click("boom_before_ack", bot.slack.response_url("b")))
    assert signed_post(app, body)[0] == 400
    _only_polite(_told(bot, "b"))
    assert [(e.actor, e.target, e.outcome) for e in audit_events(db, mark)] == [
        (f"slack:{ADMIN}", "block_actions:boom_before_ack", "error")]


def test_a_failing_slash_command_gets_one_polite_line(bot: Harness, db: Database) -> None:
    mark = last_audit_id(db)
    body = slash_command_body("anything at all", command="/boom", user_id=ALICE,
                              response_url=bot.slack.response_url("c"))
    assert bot.dispatch(body).status == 200
    _only_polite(_told(bot, "c"))
    assert [(e.actor, e.target, e.outcome) for e in audit_events(db, mark)] == [
        (f"slack:{ALICE}", "/boom", "error")]


def test_database_errors_say_so_and_an_audit_that_fails_does_not_stop_the_reply(
        bot: Harness, db: Database, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def down(*_: Any, **__: Any) -> None:
        raise OperationalError("insert", {}, Exception("database is gone"))

    monkeypatch.setattr(errors.audit, "record", down)
    mark = last_audit_id(db)
    with caplog.at_level(logging.WARNING, logger="handlers.errors"):
        assert bot.action(_click("db_down", bot.slack.response_url("d"))).status == 200
        _only_polite(_told(bot, "d"), errors.DB_DOWN)
    assert audit_events(db, mark) == []
    assert any("could not audit" in r.getMessage() for r in caplog.records)


def test_an_event_without_response_url_is_audited_and_answers_nobody(bot: Harness, db: Database) -> None:
    mark = last_audit_id(db)
    body = event_body({"type": "app_mention", "user": ALICE, "text": BODY_MARKER, "channel": "C1",
                       "ts": "1.1", "event_ts": "1.1"})
    assert bot.dispatch(body).status == 200
    bot.settle()
    assert [c.method for c in bot.slack.calls()] == ["auth.test"]  # Bolt's own check; nothing said
    assert [(e.actor, e.target, e.outcome) for e in audit_events(db, mark)] == [
        (f"slack:{ALICE}", "event:app_mention", "error")]


def test_the_handler_never_raises_even_when_the_reply_fails(bot: Harness, db: Database) -> None:
    def respond(**_: Any) -> None:
        raise ConnectionError("Slack is down")

    mark = last_audit_id(db)
    errors.handle(bot.services, RuntimeError("x"), {"user_id": ADMIN, "command": "/bedrock"}, respond)
    assert [(e.actor, e.target) for e in audit_events(db, mark)] == [(f"slack:{ADMIN}", "/bedrock")]


# ---- naming the user and the request from a body of any shape -------------------------------------

@pytest.mark.parametrize(("body", "user"), [
    ({"user_id": "U0ALICE1", "command": "/bedrock"}, "U0ALICE1"),
    ({"user": {"id": "W0ENTERPRISE"}}, "W0ENTERPRISE"),
    ({"event": {"type": "app_home_opened", "user": "U0BOB001"}}, "U0BOB001"),
    ({"user": "U0STRING1"}, "U0STRING1"),
    ({"user": {"id": "U1; DROP TABLE x"}}, None),
    ({"user_id": "<!channel>"}, None),
    ({"user": {"id": 42}}, None),
    ({"user": {}}, None),
    ([1, 2], None),
    (None, None),
])
def test_slack_user(body: Any, user: str | None) -> None:
    assert errors.slack_user(body) == user


@pytest.mark.parametrize(("body", "name"), [
    ({"command": "/bedrock", "text": "limit alice"}, "/bedrock"),
    ({"type": "block_actions", "actions": [{"action_id": "approve_request"}]},
     "block_actions:approve_request"),
    ({"type": "block_actions", "actions": []}, "block_actions"),
    ({"type": "block_actions", "actions": [{"action_id": "x" * 65}]}, "block_actions:unknown"),
    ({"type": "view_submission", "view": {"callback_id": "deny_request_modal"}},
     "view_submission:deny_request_modal"),
    ({"type": "view_submission", "view": "deny_request_modal"}, "view_submission"),
    ({"type": "event_callback", "event": {"type": "app_home_opened"}}, "event:app_home_opened"),
    ({"type": "event_callback", "event": [1]}, "event"),
    ({"type": "<!here> hi"}, "unknown"),
    ({"command": ["/bedrock"]}, "unknown"),
    ("payload", "unknown"),
])
def test_what_failed(body: Any, name: str) -> None:
    assert errors.what_failed(body) == name
