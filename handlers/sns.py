"""POST /sns (and the SQS poller): verify, then hand the envelope to the events flow.

Refusals answer 403 and are audited, one row each here (the SQS poller's messages passed
AWS auth); `POST /sns` verifies itself and counts its refusals instead, one audit row per
reason and minute (handlers/http.py, handlers/refusals.py). A duplicate answers 200 and
changes nothing; a verified message we cannot parse answers 200 too (SNS would otherwise retry it for an
hour), is recorded and posted as unrecognised. An AWS failure while acting answers 500 so
that SNS (or SQS) delivers it again; the claim was dropped, so the redelivery acts.
"""

from __future__ import annotations

import logging

from bot.aws.sns import SnsEnvelope, SnsRejected, SnsVerifier
from bot.errors import BotError
from bot.flows import events
from bot.flows.runner import explain
from bot.runtime import Services
from bot.services import audit

log = logging.getLogger(__name__)


class SnsEndpoint:
    def __init__(self, services: Services, verifier: SnsVerifier) -> None:
        self.s = services
        self.verifier = verifier

    def __call__(self, body: bytes) -> tuple[int, str]:
        try:
            env = self.verifier.verify(body)
        except SnsRejected as exc:
            log.warning("SNS message refused: %s", exc.reason)
            with self.s.db.session_scope() as session:
                audit.record(session, self.s.clock, "sns:unverified", "sns.refuse", "sns",
                             {"reason": exc.reason}, outcome="denied")
            return 403, exc.reason
        return self.act(env)

    def act(self, env: SnsEnvelope) -> tuple[int, str]:
        """A verified envelope: hand it to the events flow."""
        try:
            return 200, events.receive(self.s, env).outcome
        except BotError as exc:
            return 500, explain(exc)
