"""expire_requests: pending restore and raise requests past their time are closed (their
messages say so), and temporary raises that have ended are closed."""

from __future__ import annotations

from bot.flows import approvals, raises
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services
from bot.services.raise_requests import RaiseRequestView
from bot.services.restore_requests import RequestView

NAME = "expire_requests"


def run(services: Services) -> Outcome[list[RequestView | RaiseRequestView]]:
    return attempt(lambda: [*approvals.expire(services), *raises.expire(services)])
