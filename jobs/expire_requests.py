"""expire_requests: pending restore requests past their time are closed and the message says so."""

from __future__ import annotations

from bot.flows import approvals
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services
from bot.services.restore_requests import RequestView

NAME = "expire_requests"


def run(services: Services) -> Outcome[list[RequestView]]:
    return attempt(lambda: approvals.expire(services))
