"""The database goes away under a running bot and comes back: /healthz answers 503 while it
is away, people get a polite reply (no stack trace), SNS gets a 5xx so it delivers again, the
scheduler keeps running, and everything works again without a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import time_machine
from moto import mock_aws
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot.aws.sns import SnsEnvelope
from bot.clock import FixedClock
from bot.db import Database
from bot.flows import events as flow_events
from bot.migrate import upgrade
from bot.models import SnsMessage
from bot.runtime import Services
from bot.services import events
from handlers.app import create_app, slack_client
from handlers.http import WsgiApp
from handlers.sns import SnsEndpoint
from jobs.scheduler import JobRunner
from tests.conftest import drop_pg_schema, new_pg_schema_url
from tests.fakes.services import make_services
from tests.fakes.signing import slash_command_body
from tests.fakes.slack_api import FakeSlack
from tests.fakes.sns_signing import make_notification, write_cert
from tests.hardening.conftest import assert_chain_intact, signed_post, wsgi_call
from tests.hardening.tcp_proxy import TcpProxy
from tests.harness import ADMIN, ALERTS, Harness, make_settings, reply_text, running_bot
from tests.stepped_scheduler import SteppedScheduler, stepped

TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"
UNREACHABLE = "postgresql+psycopg://bot:hunter2-db-password@127.0.0.1:1/bot"


def _health(app: WsgiApp) -> tuple[int, dict[str, Any]]:
    status, headers, body = wsgi_call(app, "GET", "/healthz")
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


def _polite(text: str) -> None:
    assert text.startswith("⚠️"), text
    for leak in ("Traceback", "OperationalError", "psycopg", "sqlalchemy", "connection", "SELECT"):
        assert leak not in text, text


# ---- a database that is not there at all ---------------------------------------------------------

def test_unreachable_database_healthz_503_and_polite_replies(clock: FixedClock) -> None:
    with FakeSlack() as slack:
        settings = make_settings(UNREACHABLE, slack.url)
        services = Services(settings, Database(UNREACHABLE), clock)
        app = WsgiApp(services, create_app(settings, services, slack_client(settings)))
        status, health = _health(app)
        assert status == 503 and health["status"] == "database unavailable"
        assert "hunter2" not in json.dumps(health)
        assert wsgi_call(app, "GET", "/metrics")[0] == 200  # metrics need no database
        body = slash_command_body("usage", user_id=ADMIN, response_url=slack.response_url("r"))
        assert signed_post(app, body)[0] == 200  # acked at once
        _polite(reply_text(slack.wait_for("response_url:r", timeout=10)[0].args))
        services.db.dispose()


# ---- a database that goes away and comes back ----------------------------------------------------

@pytest.fixture
def proxied_db(pg_url: str) -> Iterator[tuple[Database, TcpProxy]]:
    """A fresh, migrated PostgreSQL schema reached through a proxy the test can cut."""
    url, schema = new_pg_schema_url()
    upgrade(url)
    real = make_url(url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    via = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    db = Database(via)
    try:
        yield db, proxy
    finally:
        db.dispose()
        proxy.close()
        drop_pg_schema(schema)


def _wait_healthy(app: WsgiApp, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while _health(app)[0] != 200:
        assert time.monotonic() < deadline, "the bot did not recover by itself"
        time.sleep(0.1)


@pytest.fixture
def outage(proxied_db: tuple[Database, TcpProxy], clock: FixedClock, tmp_path: Path
           ) -> Iterator[tuple[Harness, WsgiApp, TcpProxy]]:
    db, proxy = proxied_db
    write_cert(tmp_path)
    with mock_aws(), running_bot(db, clock, BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=str(tmp_path)) as bot:
        app = WsgiApp(bot.services, bot.app, sns=SnsEndpoint(bot.services, bot.services.sns_verifier()))
        yield bot, app, proxy


def test_database_outage_and_recovery_without_restart(outage: tuple[Harness, WsgiApp, TcpProxy],
                                                      clock: FixedClock) -> None:
    bot, app, proxy = outage
    runner = JobRunner(bot.services, holder="replica-a", make_scheduler=SteppedScheduler)
    assert _health(app) == (200, {"status": "ok"})
    assert "No limits" in reply_text(bot.command("limits"))
    envelope = json.dumps(make_notification("not an alarm", TOPIC, timestamp=clock())).encode()

    proxy.down()
    status, health = _health(app)
    assert status == 503 and health == {"status": "database unavailable", "error": "OperationalError"}
    _polite(reply_text(bot.command("limits")))
    _polite(reply_text(bot.command("revoke alice")))
    sns_status, _, _ = wsgi_call(app, "POST", "/sns", envelope)
    assert sns_status >= 500  # SNS delivers it again later
    with time_machine.travel(clock(), tick=False):  # the scheduler's wall clock = the bot's
        runner.start()  # a heartbeat that cannot reach the database: no lease, no crash
        assert not runner.is_leader()
        assert stepped(runner).run_pending() == []  # no jobs

    proxy.up()
    _wait_healthy(app)
    assert "No limits" in reply_text(bot.command("limits"))
    assert wsgi_call(app, "POST", "/sns", envelope)[0] == 200  # the redelivery is processed
    clock.advance(seconds=runner.heartbeat_every.total_seconds())
    with time_machine.travel(clock(), tick=False):  # the next heartbeat takes the lease
        assert "usage_sync" in stepped(runner).run_pending()
    runner.shutdown()
    with bot.services.db.session_scope() as s:
        assert s.scalars(select(SnsMessage.outcome)).all() == ["unrecognised"]
    assert any(c.args["channel"] == ALERTS for c in bot.slack.calls("chat.postMessage"))
    assert_chain_intact(bot.services.db)


def test_down_and_up_repeatedly(outage: tuple[Harness, WsgiApp, TcpProxy]) -> None:
    bot, app, proxy = outage
    for _ in range(3):
        proxy.down()
        assert _health(app)[0] == 503
        proxy.up()
        _wait_healthy(app)
        assert "No limits" in reply_text(bot.command("limits"))


def test_database_down_reply_says_try_again(outage: tuple[Harness, WsgiApp, TcpProxy]) -> None:
    bot, _, proxy = outage
    proxy.down()
    assert "try again" in reply_text(bot.command("limits")).lower()


def test_database_down_button_click_gets_a_reply(outage: tuple[Harness, WsgiApp, TcpProxy]) -> None:
    bot, _, proxy = outage
    proxy.down()
    payload = {"type": "block_actions", "user": {"id": ADMIN, "username": "admin", "team_id": "T0001"},
               "api_app_id": "A0001", "token": "x", "trigger_id": "t1", "team": {"id": "T0001"},
               "channel": {"id": ALERTS}, "container": {"type": "message", "message_ts": "1.1"},
               "response_url": bot.slack.response_url("click"),
               "actions": [{"action_id": "approve_request", "block_id": "b", "value": "1",
                            "type": "button", "action_ts": "1.2"}]}
    assert bot.action(payload).status == 200
    told = reply_text(bot.slack.wait_for("response_url:click", timeout=3)[0].args)
    _polite(told)


def test_a_group_commit_on_a_dropped_connection_fails_then_the_pool_reconnects(
        proxied_db: tuple[Database, TcpProxy], clock: FixedClock) -> None:
    """The SNS group commit's pipelined transaction runs on the quick engine, which does not
    ping: a pooled connection the server dropped fails that batch (a DBAPIError, so each message
    is retried alone on the main engine), is discarded, and the next batch connects anew."""
    db, proxy = proxied_db
    services = make_services(db, clock)
    assert db.can_pipeline()

    def batch(*ids: str) -> list[str]:
        envs = [SnsEnvelope("Notification", i, TOPIC, "not an alarm", clock(), None, None, None, "2",
                            "https://sns.us-east-1.amazonaws.com/x.pem", {}) for i in ids]
        items = [(e, r) for e in envs if (r := events.classify(e)) is not None]
        return [r.outcome for r in flow_events.store_together(services, items)]

    assert batch("m-1", "m-2") == ["unrecognised", "unrecognised"]  # its connection stays pooled
    proxy.down()
    proxy.up()
    with pytest.raises(DBAPIError):
        batch("m-3", "m-4")
    assert batch("m-3", "m-4", "m-1") == ["unrecognised", "unrecognised", "duplicate"]
    with db.session_scope() as s:
        assert sorted(s.scalars(select(SnsMessage.message_id))) == ["m-1", "m-2", "m-3", "m-4"]
    assert_chain_intact(db)
