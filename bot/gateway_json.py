"""The gateway API's JSON in and out (docs/gateway.md, docs/gateway-openapi.yaml). Pure.

Every body is validated here before anything is looked up or counted: a bad one raises
BadInput whose text is the one-line reason the caller gets with its 400.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bot.errors import BadInput

MAX_BODY = 16 * 1024  # a check or a usage report is a few hundred bytes
# One call's tokens: no model reads or writes anywhere near this; more is a bug or an attack.
MAX_CALL_TOKENS = 50_000_000
REQUEST_ID = re.compile(r"^[!-~]{1,128}\Z")  # printable ASCII, no spaces
RESERVATION_ID = re.compile(r"^[0-9a-f]{32}\Z")
MODEL = re.compile(r"^[!-~]{1,256}\Z")
SUBJECT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}\Z")
SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,31}\Z")
PRINCIPAL = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:[!-~]{1,1900}\Z")
_WHO = ("subject", "principal_arn", "slack_user_id")
_CHECK_KEYS = frozenset({*_WHO, "model", "estimated_tokens"})
_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
_USAGE_KEYS = frozenset({*_WHO, "request_id", "model", *_TOKEN_FIELDS, "reservation"})


@dataclass(frozen=True)
class Who:
    """How the caller named the subject: exactly one of the three."""

    subject: str | None = None
    principal_arn: str | None = None
    slack_user_id: str | None = None

    def __str__(self) -> str:
        return self.subject or self.principal_arn or self.slack_user_id or "?"


@dataclass(frozen=True)
class CheckRequest:
    who: Who
    model: str | None
    estimated_tokens: int  # 0: no reservation asked for


@dataclass(frozen=True)
class UsageRequest:
    who: Who
    request_id: str
    model: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reservation: str | None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens


def _object(body: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise BadInput(f"body over {MAX_BODY} bytes")
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadInput(f"body is not JSON: {str(exc).splitlines()[0][:80]}") from None
    if not isinstance(doc, dict):
        raise BadInput("body must be a JSON object")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise BadInput(f"unknown field {unknown[0][:40]!r}")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _text(doc: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.match(value):
        raise BadInput(f"{key} must be {what}")
    return value


def _count(doc: dict[str, Any], key: str) -> int:
    """A token count: a JSON integer 0..MAX_CALL_TOKENS (absent is 0)."""
    value = doc.get(key, 0)
    if value is None:
        return 0
    # bool is an int in Python, and 1.0 is a float in JSON: neither is a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{key} must be a whole number")
    if value < 0:
        raise BadInput(f"{key} must not be negative")
    if value > MAX_CALL_TOKENS:
        raise BadInput(f"{key} over {MAX_CALL_TOKENS:,} for one call is not believable")
    return value


def _who(doc: dict[str, Any]) -> Who:
    given = [k for k in _WHO if doc.get(k) is not None]
    if len(given) != 1:
        raise BadInput("name the subject with exactly one of subject, principal_arn, slack_user_id")
    subject = _text(doc, "subject", SUBJECT, "a subject name (a-z, 0-9, . _ -; up to 64)")
    arn = _text(doc, "principal_arn", PRINCIPAL, "an IAM user, role or STS session ARN")
    slack = _text(doc, "slack_user_id", SLACK_ID, "a Slack user id like U012ABC")
    return Who(subject, arn, slack)


def parse_check(body: bytes) -> CheckRequest:
    doc = _object(body, _CHECK_KEYS)
    who = _who(doc)
    model = _text(doc, "model", MODEL, "a model id or ARN (printable, up to 256)")
    return CheckRequest(who, model, _count(doc, "estimated_tokens"))


def parse_usage(body: bytes) -> UsageRequest:
    doc = _object(body, _USAGE_KEYS)
    who = _who(doc)
    request_id = _text(doc, "request_id", REQUEST_ID, "1-128 printable characters without spaces")
    if request_id is None:
        raise BadInput("request_id is required (it makes a repeated report count once)")
    model = _text(doc, "model", MODEL, "a model id or ARN (printable, up to 256)") or ""
    reservation = _text(doc, "reservation", RESERVATION_ID, "the id a check returned (32 hex digits)")
    inp, out, cache_read, cache_write = (_count(doc, k) for k in _TOKEN_FIELDS)
    return UsageRequest(who, request_id, model, inp, out, cache_read, cache_write, reservation)


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def error(reason: str) -> bytes:
    return dumps({"error": reason})
