"""Fault injection for AWS calls made through the bot's own boto3 clients.

Retries cannot be seen through botocore's Stubber (it answers before the retry loop), so a
`before-send` hook on a client built by `bot.aws.clients.client` answers the attempts; moto
answers whatever the hook lets through. botocore calls every `before-send` handler and takes
the first answer, so moto's handler is told to leave alone the attempts the hook answered
(otherwise moto would apply a call the bot saw fail).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.retries import standard
from moto.core.botocore_stubber import BotocoreStubber

from bot.aws import clients
from bot.config import load_settings

IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"


class _Raw(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        chunk = self.read()
        while chunk:
            yield chunk
            chunk = self.read()


def iam_error(code: str, message: str, status: int = 400) -> AWSResponse:
    body = (f'<ErrorResponse xmlns="{IAM_NS}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{message}</Message></Error><RequestId>hardening</RequestId></ErrorResponse>")
    headers: Any = {"Content-Type": "text/xml"}
    return AWSResponse("https://iam.amazonaws.com/", status, headers, _Raw(body.encode()))


@dataclass
class Faults:
    """Answers the first `times` attempts of `operation` with `fail` (a response or an
    exception), counting every attempt; later attempts reach moto."""

    operation: str
    fail: Callable[[], AWSResponse | Exception]
    times: int = 1_000
    attempts: int = 0
    delays: list[float] = field(default_factory=list)

    def __call__(self, request: Any = None, **_: Any) -> AWSResponse | None:
        self.attempts += 1
        if self.attempts > self.times:
            return None
        if request is not None:
            request.hardening_answered = True
        answer = self.fail()
        if isinstance(answer, Exception):
            raise answer
        return answer


def bot_iam_client(region: str = "us-east-1") -> Any:
    """The IAM client exactly as the bot builds it (standard retries, max 5 attempts)."""
    return clients.client("iam", load_settings(None, AWS_REGION=region).aws)


def _moto_skips_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    real = BotocoreStubber.__call__

    def guarded(self: Any, event_name: str, request: Any, **kwargs: Any) -> Any:
        if getattr(request, "hardening_answered", False):
            return None
        return real(self, event_name, request, **kwargs)

    monkeypatch.setattr(BotocoreStubber, "__call__", guarded)


def inject(client: Any, faults: Faults, monkeypatch: pytest.MonkeyPatch) -> Faults:
    _moto_skips_answered(monkeypatch)
    client.meta.events.register_first(f"before-send.iam.{faults.operation}", faults)
    real = standard.ExponentialBackoff.delay_amount

    def no_wait(self: Any, context: Any) -> float:  # record the backoff botocore asked for
        faults.delays.append(real(self, context))
        return 0.0

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", no_wait)
    return faults
