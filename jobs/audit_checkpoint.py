"""audit_checkpoint: check the audit chain against its last checkpoint and anchor the head
outside the database (the checkpoint file and/or channel); hourly."""

from __future__ import annotations

from bot.flows import audit_anchor
from bot.flows.audit_anchor import CheckpointResult
from bot.flows.runner import Outcome, attempt
from bot.runtime import Services

NAME = "audit_checkpoint"


def run(services: Services) -> Outcome[CheckpointResult]:
    return attempt(lambda: audit_anchor.checkpoint(services))
