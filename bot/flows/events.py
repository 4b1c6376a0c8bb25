"""SNS in (HTTP `/sns` and the SQS poller): claim once, decide, act on AWS, record, tell.

The claim (`sns_messages` row keyed by MessageId) commits first, so a concurrent or later
duplicate delivery does nothing. Confirming a subscription and revoking are AWS calls made
after that commit; when one fails the claim is dropped again, so SNS (or SQS) redelivers
and the next delivery acts.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from bot.aws.clients import aws_error
from bot.aws.sns import SnsEnvelope
from bot.flows import access as access_flow
from bot.flows.runner import step
from bot.models import Limit
from bot.render.events import event_message
from bot.runtime import Services
from bot.services import events
from bot.services.directory import Actor
from bot.services.events import EventOutcome, RevokePlan
from bot.slack.notifier import safe

log = logging.getLogger(__name__)


def receive(s: Services, env: SnsEnvelope) -> EventOutcome:
    actor = Actor(f"sns:{env.topic_arn}")

    def claim_and_decide(session: Session) -> tuple[EventOutcome, RevokePlan | None]:
        if not events.claim(session, s.clock, env):
            return EventOutcome("duplicate", env.message_id, env.topic_arn), None
        result, plan = events.decide(session, s.clock, env, s.tz, s.week_start)
        if env.type == "Notification" and plan is None:
            events.finish(session, s.clock, env, result)
        return result, plan

    result, plan = step(s.db, s.clock, actor, "sns.receive", env.topic_arn, claim_and_decide)
    if result.outcome == "duplicate":
        return result
    if env.type != "Notification" or plan is not None:
        try:
            _act(s, actor, env, result, plan)
        except Exception:
            with s.db.session_scope() as session:
                events.unclaim(session, env.message_id)
            raise
        with s.db.session_scope() as session:
            events.finish(session, s.clock, env, result)
    announce(s, result)
    return result


def _act(s: Services, actor: Actor, env: SnsEnvelope, result: EventOutcome,
         plan: RevokePlan | None) -> None:
    if env.type == "SubscriptionConfirmation":
        confirm(s, env.topic_arn, env.token or "")
    if plan is None:
        return
    view = access_flow.revoke_automatic(
        s, actor, plan.subject_id, plan.reason, plan.note, plan.limit_id, plan.window,
        still_wanted=lambda session: _still(s, session, plan.limit_id))
    if view is None:  # revoked or excepted meanwhile (enforce, another replica)
        result.outcome = "warned"
    result.revocation = view


def _still(s: Services, session: Session, limit_id: int) -> bool:
    limit = session.get(Limit, limit_id)
    return limit is not None and events.should_revoke(session, s.clock, limit)


def confirm(s: Services, topic_arn: str, token: str) -> None:
    try:
        s.aws_client("sns").confirm_subscription(
            TopicArn=topic_arn, Token=token, AuthenticateOnUnsubscribe="true")
    except Exception as exc:
        raise aws_error("ConfirmSubscription", exc) from exc


def announce(s: Services, result: EventOutcome) -> None:
    msg = event_message(result, s.tz)
    channel = s.settings.bot.alert_channel
    if msg is None:
        return
    if channel:
        safe(s.notifier.post, channel, msg[0], msg[1])
    if result.outcome == "revoked":
        for user in result.users:
            safe(s.notifier.dm, user, msg[0], msg[1])
