"""POST /sns (and the SQS poller): verify, store once, act, then tell Slack.

Refusals answer 403 and are audited; a duplicate answers 200 and changes nothing; a
verified message we cannot parse answers 200 too (SNS would otherwise retry it for an
hour), is recorded and posted as unrecognised. An AWS failure while acting answers 500 so
that SNS (or SQS) delivers it again; the transaction rolled back, so nothing is half done.
"""

from __future__ import annotations

import logging

from bot.aws.clients import aws_error
from bot.aws.sns import SnsRejected, SnsVerifier
from bot.execute import execute
from bot.render.events import event_message
from bot.runtime import Services
from bot.services import audit, events
from bot.services.directory import Actor
from bot.slack.notifier import safe

log = logging.getLogger(__name__)


class SnsEndpoint:
    def __init__(self, services: Services, verifier: SnsVerifier) -> None:
        self.s = services
        self.verifier = verifier

    def confirm(self, topic_arn: str, token: str) -> None:
        try:
            self.s.aws_client("sns").confirm_subscription(
                TopicArn=topic_arn, Token=token, AuthenticateOnUnsubscribe="true")
        except Exception as exc:
            raise aws_error("ConfirmSubscription", exc) from exc

    def __call__(self, body: bytes) -> tuple[int, str]:
        try:
            env = self.verifier.verify(body)
        except SnsRejected as exc:
            log.warning("SNS message refused: %s", exc.reason)
            with self.s.db.session_scope() as session:
                audit.record(session, self.s.clock, "sns:unverified", "sns.refuse", "sns",
                             {"reason": exc.reason}, outcome="denied")
            return 403, exc.reason
        s = self.s
        out = execute(s.db, s.clock, Actor(f"sns:{env.topic_arn}"), "sns.receive", env.topic_arn,
                      lambda session: events.receive(session, s.clock, env, s.access, self.confirm,
                                                     s.tz, s.week_start))
        if not out.ok or out.value is None:
            return 500, out.message
        self.announce(out.value)
        return 200, out.value.outcome

    def announce(self, result: events.EventOutcome) -> None:
        msg = event_message(result, self.s.tz)
        channel = self.s.settings.bot.alert_channel
        if msg is None:
            return
        if channel:
            safe(self.s.notifier.post, channel, msg[0], msg[1])
        if result.outcome == "revoked":
            for user in result.users:
                safe(self.s.notifier.dm, user, msg[0], msg[1])
