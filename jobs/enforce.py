"""enforce: warnings, revocations and lifts for every limit (after each usage sync)."""

from __future__ import annotations

from bot.flows import enforce
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services
from bot.services.enforce import EnforceResult

NAME = "enforce"


def run(services: Services) -> Outcome[EnforceResult]:
    return attempt(lambda: enforce.run(services))
