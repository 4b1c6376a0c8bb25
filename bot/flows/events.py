"""SNS in (HTTP `/sns` and the SQS poller): claim once, decide, act on AWS, record, tell.

The claim (`sns_messages` row keyed by MessageId, inserted once with ON CONFLICT DO NOTHING)
decides who acts, so a concurrent or later duplicate delivery does nothing. Confirming a
subscription and revoking are AWS calls made after the claim commits; when one fails the claim
is dropped again, so SNS (or SQS) redelivers and the next delivery acts.

A message that needs no AWS call is stored finished in the claim's own INSERT, in the same
transaction as its decision and its audit row. Those that need no database read either
(unrecognised bodies, alarms and budgets that are not the bot's: most of the traffic) go
through a group commit (`store_group`): concurrent deliveries share one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session

from bot.aws.clients import aws_error
from bot.aws.sns import SnsEnvelope
from bot.flows import access as access_flow
from bot.flows.group_commit import GroupCommit
from bot.flows.runner import audited, step
from bot.models import Limit
from bot.render.events import event_message
from bot.runtime import Services
from bot.services import events
from bot.services.directory import Actor
from bot.services.events import EventOutcome, RevokePlan
from bot.slack.notifier import safe

log = logging.getLogger(__name__)


def receive(s: Services, env: SnsEnvelope) -> EventOutcome:
    quick = events.classify(env)
    if quick is not None:  # posted or unrecognised: no read, no AWS call
        result = s.sns_store.submit((env, quick))
        if result.outcome != "duplicate":
            announce(s, result)
        return result
    actor = Actor(f"sns:{env.topic_arn}")

    def claim_and_decide(session: Session) -> tuple[EventOutcome, RevokePlan | None]:
        result, plan = events.decide(session, s.clock, env, s.tz, s.week_start)
        final = env.type == "Notification" and plan is None
        if not events.claim(session, s.clock, env, result if final else None):
            return EventOutcome("duplicate", env.message_id, env.topic_arn), None
        if final:
            events.record_outcome(session, s.clock, env, result)
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


Stored = tuple[SnsEnvelope, EventOutcome]


def store_group(s: Services) -> GroupCommit[Stored, EventOutcome]:
    """Messages `events.classify` decided, stored with whoever else is storing at the moment:
    one transaction, one commit and one audit-chain lock for the lot (see group_commit)."""
    return GroupCommit(lambda items: store_together(s, items), lambda item: store_alone(s, item))


def store_together(s: Services, items: Sequence[Stored]) -> list[EventOutcome]:
    """A batch in one transaction (it fails, and rolls back, as a whole). On PostgreSQL the
    transaction is sent straight to the driver in two round trips (`Database.pipelined`)."""
    if s.db.can_pipeline():
        with s.db.pipelined() as tx:
            return events.store_pipelined(tx, s.clock, s.db.audit_keyring, items)
    with s.db.session_scope() as session:
        return events.store(session, s.clock, items)


def store_alone(s: Services, item: Stored) -> EventOutcome:
    """One message in its own transaction, audited as a failed step if it fails."""
    env = item[0]
    actor = Actor(f"sns:{env.topic_arn}")
    if s.db.can_pipeline():
        return audited(s.db, s.clock, actor, "sns.receive", env.topic_arn,
                       lambda: store_together(s, [item])[0])
    return step(s.db, s.clock, actor, "sns.receive", env.topic_arn,
                lambda session: events.store(session, s.clock, [item])[0])


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
    channel = s.settings.bot.alert_channel
    dms = result.outcome == "revoked" and bool(result.users)
    if not channel and not dms:
        return  # nobody to tell: render nothing (Block Kit is a large share of the CPU)
    msg = event_message(result, s.tz)
    if msg is None:
        return
    if channel:
        safe(s.notifier.post, channel, msg[0], msg[1])
    if dms:
        for user in result.users:
            safe(s.notifier.dm, user, msg[0], msg[1])
