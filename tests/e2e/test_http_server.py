"""The WSGI app behind `serve`, over real HTTP (waitress), with signed Slack requests."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import waitress

from bot.clock import FixedClock
from bot.db import Database
from handlers.http import MAX_BODY, WsgiApp
from tests.fakes.signing import signed_headers, slash_command_body
from tests.harness import ADMIN, SECRET, Harness, running_bot


@pytest.fixture
def server(sqlite_db: Database, clock: FixedClock) -> Iterator[tuple[str, Harness]]:
    with running_bot(sqlite_db, clock) as bot:
        srv = waitress.create_server(WsgiApp(bot.services, bot.app), host="127.0.0.1", port=0)
        port = srv.socket.getsockname()[1]  # type: ignore[attr-defined]
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}", bot
        finally:
            srv.close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_healthz_and_metrics(server: tuple[str, Harness]) -> None:
    base, _ = server
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
        assert resp.status == 200 and b'"ok"' in resp.read()
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        assert b"bedrock_bot_http_requests_total" in resp.read()


def test_signed_command_over_http(server: tuple[str, Harness]) -> None:
    base, bot = server
    body = slash_command_body("help", user_id=ADMIN, response_url=bot.slack.response_url("h"))
    assert _post(f"{base}/slack/events", body.encode(), signed_headers(SECRET, body)) == 200
    reply = bot.slack.wait_for("response_url:h")[0].args
    assert "/bedrock commands" in reply["text"]


def test_forged_and_oversized_requests(server: tuple[str, Harness]) -> None:
    base, bot = server
    body = slash_command_body("help", user_id=ADMIN)
    assert _post(f"{base}/slack/events", body.encode(), signed_headers("nope", body)) == 401
    big = b"x" * (MAX_BODY + 1)
    assert _post(f"{base}/slack/events", big, signed_headers(SECRET, big)) == 413
    assert _post(f"{base}/elsewhere", b"", {}) == 404
    assert bot.slack.calls("response_url:h") == []
