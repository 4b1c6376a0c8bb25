"""Acks never wait for answers: listeners ack, then hand their work to the answer pool (issue 19)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from slack_bolt.request import BoltRequest

from bot.clock import FixedClock
from bot.db import Database
from bot.runtime import Services
from bot.services import directory
from handlers.answers_pool import answer_pool, cores, hand_off
from handlers.app import create_app, slack_client
from tests.fakes.signing import signed_headers, slash_command_body
from tests.fakes.slack_api import FakeSlack
from tests.harness import ADMIN, SECRET, ListenerPool, make_settings, reply_text


def test_ack_returns_while_every_answer_thread_is_busy(db: Database, clock: FixedClock) -> None:
    gate, busy = threading.Event(), threading.Event()
    answers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer")
    listeners = ListenerPool()
    with FakeSlack() as slack:
        settings = make_settings(db.url, slack.url)
        services = Services(settings, db, clock, overrides={"account_id": "123456789012"})
        with db.session_scope() as session:
            directory.bootstrap_admins(session, clock, settings.bot.admins)
        app = create_app(settings, services, slack_client(settings), listener_executor=listeners,
                         answer_executor=answers)

        def hog() -> None:
            busy.set()
            assert gate.wait(10)

        answers.submit(hog)  # the only answer thread is taken by someone else's heavy answer
        assert busy.wait(5)
        try:
            body = slash_command_body("help", user_id=ADMIN, user_name="admin",
                                      response_url=slack.response_url("r1"))
            resp = app.dispatch(BoltRequest(body=body, headers=signed_headers(SECRET, body)))
            assert resp.status == 200  # acked although no answer thread is free
            listeners.settle()  # the listener is done: it acked and queued its answer
            assert slack.calls("response_url:r1") == []  # …which has not run yet
        finally:
            gate.set()
        reply = slack.wait_for("response_url:r1", timeout=10)[0].args
        assert "usage" in reply_text(reply)
        answers.shutdown(wait=True)
        listeners.shutdown(wait=True)


def test_answer_pool_is_sized_to_the_cores() -> None:
    pool = answer_pool()
    try:
        assert pool._max_workers == max(2, cores())
    finally:
        pool.shutdown()
    assert cores() >= 1


def test_a_failing_answer_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        def boom() -> None:
            raise RuntimeError("kaput")
        assert hand_off(pool, boom, "test work").result(timeout=5) is None
    assert "test work failed after the ack" in caplog.text
