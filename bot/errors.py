"""Outcomes that end an action early. Each carries a one-line, user-facing reason."""

from __future__ import annotations


class BotError(Exception):
    """Base: `str(exc)` is safe to show to the person who asked."""

    outcome = "error"


class BadInput(BotError):
    """Unparseable or invalid input; `usage` is the usage line to show with it."""

    outcome = "denied"

    def __init__(self, reason: str, usage: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage


class NotFound(BadInput):
    """A named thing (subject, profile, request) does not exist."""


class Denied(BotError):
    """The actor is not allowed to do this (checked against `admins` at action time)."""

    outcome = "denied"


class AwsError(BotError):
    """An AWS call failed after retries; the message names the AWS error code."""

    outcome = "error"

    def __init__(self, operation: str, code: str, message: str) -> None:
        super().__init__(f"AWS {operation} failed: {code}: {message}")
        self.operation = operation
        self.code = code
