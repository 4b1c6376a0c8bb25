"""A running bot for tests: Bolt app + services + fake Slack, driven with signed requests."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from slack_bolt import App
from slack_bolt.request import BoltRequest

from bot.clock import FixedClock
from bot.config import Settings, load_settings
from bot.db import Database
from bot.runtime import Services
from bot.services import directory
from handlers.app import create_app, slack_client
from tests.fakes.signing import interactive_body, signed_headers, slash_command_body
from tests.fakes.slack_api import FakeSlack

SECRET = "test-signing-secret"
ADMIN, ALICE, BOB = "UADMIN01", "UALICE01", "UBOB0001"
ALERTS = "CALERTS01"


class ListenerPool(ThreadPoolExecutor):
    """Bolt's listener pool and the answer pool (the harness passes it as both), remembering what
    it ran: a test waits until every listener and answer has finished (`settle`) instead of
    sleeping to prove that something did not happen."""

    def __init__(self) -> None:
        super().__init__(max_workers=32, thread_name_prefix="bolt")
        self._lock = threading.Lock()
        self._futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._lock:
            self._futures.append(future)
        return future

    def settle(self, timeout: float = 10.0) -> None:
        """Return once every listener submitted so far (and any it submitted) has finished."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
                self._futures = pending
            if not pending:
                return
            _, late = wait(pending, timeout=max(0.0, deadline - time.monotonic()))
            if late:
                raise TimeoutError(f"{len(late)} listener(s) still running after {timeout}s")


def make_settings(db_url: str, slack_url: str, **extra: str) -> Settings:
    env = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": SECRET,
           "SLACK_API_URL": slack_url, "DATABASE_URL": db_url, "BOT_ADMINS": ADMIN,
           "BOT_PROFILES_BACKEND": "local", "BOT_ALERT_CHANNEL": ALERTS,
           "BOT_TIMEZONE": "UTC", **extra}
    return load_settings(None, **env)


@dataclass
class Harness:
    settings: Settings
    services: Services
    app: App
    slack: FakeSlack
    listeners: ListenerPool
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def dispatch(self, body: str, timestamp: int | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        hdrs = headers if headers is not None else signed_headers(SECRET, body, timestamp)
        return self.app.dispatch(BoltRequest(body=body, headers=hdrs))

    def command(self, text: str, user: str = ADMIN) -> dict[str, Any]:
        """Send a signed `/bedrock` command; return the JSON posted to its response_url."""
        name = f"r{next(self._seq)}"
        body = slash_command_body(text, user_id=user, user_name=user.lower(),
                                  response_url=self.slack.response_url(name))
        started = time.monotonic()
        resp = self.dispatch(body)
        assert resp.status == 200, resp.body
        assert time.monotonic() - started < 3.0  # Slack's limit; normally milliseconds
        return self.slack.wait_for(f"response_url:{name}", timeout=10)[0].args

    def action(self, payload: dict[str, Any]) -> Any:
        return self.dispatch(interactive_body(payload))

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until every listener started so far has finished (its Slack calls are recorded)."""
        self.listeners.settle(timeout)


def reply_text(reply: dict[str, Any]) -> str:
    """Everything a person would read in a reply: fallback text plus block text."""
    parts = [str(reply.get("text", ""))]
    for block in reply.get("blocks") or []:
        parts.append(_block_text(block))
    return "\n".join(parts)


def _block_text(obj: Any) -> str:
    if isinstance(obj, dict):
        return " ".join(_block_text(v) for k, v in obj.items() if k not in ("type", "block_id"))
    if isinstance(obj, list):
        return " ".join(_block_text(v) for v in obj)
    return str(obj)


@contextmanager
def running_bot(db: Database, clock: FixedClock, **extra: str) -> Iterator[Harness]:
    with FakeSlack() as slack:
        settings = make_settings(db.url, slack.url, **extra)
        services = Services(settings, db, clock, overrides={"account_id": "123456789012"})
        with db.session_scope() as session:
            directory.bootstrap_admins(session, clock, settings.bot.admins)
        listeners = ListenerPool()
        app = create_app(settings, services, slack_client(settings), listener_executor=listeners,
                         answer_executor=listeners)
        try:
            yield Harness(settings, services, app, slack, listeners)
        finally:
            listeners.shutdown(wait=False)


@contextmanager
def waitress_serving(app: Any) -> Iterator[int]:
    """`app` behind a real waitress server on a free loopback port (yielded), stopped from the
    server's own thread: closed from another, its socket can vanish under the loop's select()
    (EBADF in the server thread)."""
    import waitress

    srv = waitress.create_server(app, host="127.0.0.1", port=0)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        yield int(srv.socket.getsockname()[1])  # type: ignore[attr-defined]
    finally:
        srv.trigger.pull_trigger(srv.close)  # type: ignore[attr-defined]
        thread.join(timeout=5)
