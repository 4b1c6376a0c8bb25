"""The tests' fake Slack Web API: the demo's stand-in (real HTTP, Slack-shaped answers, every
call recorded) plus what only tests need: injected failures, canned answers, assertions.

Usage::

    with FakeSlack() as fake:
        client = WebClient(token="xoxb-test", base_url=fake.url)
        client.chat_postMessage(channel="C1", text="hi")
        assert fake.last("chat.postMessage").args["text"] == "hi"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from demo.slack_standin import Answer, Call, SlackStandIn

__all__ = ["Call", "FakeSlack"]


@dataclass(frozen=True)
class _Failure:
    error: str
    status: int
    retry_after: int | None


class FakeSlack(SlackStandIn):
    """Failures (``fail_next``/``fail_always``) take a call's name (API method,
    ``response_url:<name>``, ``upload:<file_id>``); ``down()`` fails all of them. Failed calls
    are recorded too."""

    def __init__(self, on_call: Callable[[Call], None] | None = None) -> None:
        super().__init__(on_call)
        self._next_failures: dict[str, list[_Failure]] = {}
        self._always: dict[str, _Failure] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._down = False

    def last(self, method: str) -> Call:
        found = self.calls(method)
        if not found:
            raise AssertionError(f"no call to {method!r}; got {[c.method for c in self.calls()]}")
        return found[-1]

    def clear(self) -> None:
        with self._cond:
            self._calls.clear()
            self._uploads.clear()

    def fail_next(
        self, method: str, error: str = "ratelimited", status: int = 429, retry_after: int = 1
    ) -> None:
        with self._cond:
            failure = _Failure(error, status, retry_after if status == 429 else None)
            self._next_failures.setdefault(method, []).append(failure)

    def fail_always(self, method: str, error: str, status: int = 200) -> None:
        with self._cond:
            self._always[method] = _Failure(error, status, None)

    def heal(self, method: str) -> None:
        with self._cond:
            self._always.pop(method, None)
            self._next_failures.pop(method, None)

    def set_response(self, method: str, body: dict[str, Any]) -> None:
        """Answer ``method`` with ``body`` (HTTP 200) instead of the built-in response."""
        with self._cond:
            self._overrides[method] = body

    def down(self) -> None:
        with self._cond:
            self._down = True

    def up(self) -> None:
        with self._cond:
            self._down = False

    def _answer(self, kind: str, name: str, method: str, args: dict[str, Any],
                body: bytes) -> Answer:
        failure = self._failure_for(method)
        if failure is not None:
            extra = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            return self._json(failure.status, {"ok": False, "error": failure.error}, extra)
        if kind == "api" and method in self._overrides:
            return self._json(200, self._overrides[method])
        return super()._answer(kind, name, method, args, body)

    def _failure_for(self, method: str) -> _Failure | None:
        if self._down:
            return _Failure("service_unavailable", 503, None)
        queued = self._next_failures.get(method)
        if queued:
            return queued.pop(0)
        return self._always.get(method)
