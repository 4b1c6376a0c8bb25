"""SNS in: a verified message is stored once (dedupe on MessageId) and acted on.

CloudWatch alarms and AWS Budgets the bot created are named `bedrock-bot-limit-<id>`, so
they map back to their limit: ALARM (or a Budgets ACTUAL alert at 100%) applies the
limit's action; OK posts a recovery note and does not restore. Anything else is posted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import String, bindparam, delete, select, text, update
from sqlalchemy.orm import Session

from bot.aws.alarms import parse_alarm_name
from bot.aws.budgets import parse_budget_name
from bot.aws.notifications import AlarmEvent, BudgetEvent, UnrecognisedMessage, parse_any
from bot.aws.sns import SnsEnvelope
from bot.clock import Clock
from bot.models import Limit, Revocation, SnsMessage, Subject, UTCDateTime, naive_utc
from bot.quantities import Window
from bot.services import access, audit, budget_window
from bot.services.access import RevocationView
from bot.services.directory import SubjectInfo, info
from bot.services.enforce import suspended
from bot.services.limit_usage import LimitStatus, limit_status

if TYPE_CHECKING:
    from bot.db import Pipelined

Confirm = Callable[[str, str], None]  # (topic ARN, token) → ConfirmSubscription


def limit_id_from_name(name: str) -> int | None:
    """The limit an alarm or budget the bot created belongs to (by its name)."""
    alarm = parse_alarm_name(name.strip())
    return alarm[0] if alarm else parse_budget_name(name.strip())


@dataclass
class EventOutcome:
    # duplicate | confirmed | unsubscribed | revoked | warned | recovered | posted | stale |
    # unrecognised
    outcome: str
    message_id: str
    topic: str
    event: AlarmEvent | BudgetEvent | None = None
    subject: SubjectInfo | None = None
    status: LimitStatus | None = None
    revocation: RevocationView | None = None
    raw: str = ""
    users: tuple[str, ...] = field(default_factory=tuple)


def claim(session: Session, clock: Clock, env: SnsEnvelope, final: EventOutcome | None = None) -> bool:
    """Insert the MessageId once; False when it was already there (a duplicate delivery).

    With `final` (an outcome that needs no AWS call) the row is stored finished, in the same
    statement: no UPDATE follows."""
    return env.message_id in claim_many(session, clock, [(env, final)])


def claim_many(session: Session, clock: Clock, items: Sequence[tuple[SnsEnvelope, EventOutcome | None]],
               lock_chain: bool = False) -> set[str]:
    """One INSERT … ON CONFLICT DO NOTHING RETURNING for several messages (distinct MessageIds):
    the ids this call claimed; the others were there already. The rows go in as one JSON
    parameter of a statement compiled once (a multi-row VALUES was compiled anew per batch).

    `lock_chain` (audit rows will follow): on PostgreSQL the audit chain's lock and head are
    taken in the same pipeline as the claim (`audit.lock_after`), one round trip for the lot."""
    if not items:
        return set()
    rows = _claim_rows(items)
    raw = audit.pipelined(session) if lock_chain else None
    if raw is not None:
        params = {"rows": rows, "now": naive_utc(clock())}  # naive UTC, as stored
        return {r[0] for r in audit.lock_after(session, raw, _CLAIM_RAW, params)}
    # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT.
    return set(session.scalars(_CLAIM[session.get_bind().dialect.name], {"rows": rows, "now": clock()}))


def _claim_rows(items: Sequence[tuple[SnsEnvelope, EventOutcome | None]]) -> str:
    """The claim's rows as one JSON parameter."""
    return json.dumps([{"message_id": env.message_id, "topic_arn": env.topic_arn[:512], "type": env.type,
                        "outcome": final.outcome if final else "received", "final": final is not None,
                        "body": env.message[:20000].replace("\x00", "")} for env, final in items],
                      ensure_ascii=False)  # a lone surrogate fails to encode, before anything is sent


_CLAIM_INTO = ("INSERT INTO sns_messages (message_id, topic_arn, type, received_at, outcome, "
               "processed_at, body) ")
_CLAIM_PG = _CLAIM_INTO + """SELECT r.message_id, r.topic_arn, r.type, :now, r.outcome,
  CASE WHEN r.final THEN :now END, r.body
FROM json_to_recordset(CAST(:rows AS json))
  AS r(message_id text, topic_arn text, type text, outcome text, final boolean, body text)
ON CONFLICT DO NOTHING RETURNING message_id"""
# WHERE true: SQLite's parser needs it between a SELECT and ON CONFLICT.
_CLAIM_SQLITE = _CLAIM_INTO + """SELECT json_extract(j.value, '$.message_id'),
  json_extract(j.value, '$.topic_arn'), json_extract(j.value, '$.type'), :now,
  json_extract(j.value, '$.outcome'), CASE WHEN json_extract(j.value, '$.final') THEN :now END,
  json_extract(j.value, '$.body')
FROM json_each(:rows) AS j WHERE true
ON CONFLICT DO NOTHING RETURNING message_id"""
_CLAIM = {dialect: text(sql).bindparams(bindparam("now", type_=UTCDateTime())).columns(message_id=String())
          for dialect, sql in (("postgresql", _CLAIM_PG), ("sqlite", _CLAIM_SQLITE))}
_CLAIM_RAW = _CLAIM_PG.replace(":now", "%(now)s").replace(":rows", "%(rows)s")  # psycopg's placeholders


def store(session: Session, clock: Clock,
          items: Sequence[tuple[SnsEnvelope, EventOutcome]]) -> list[EventOutcome]:
    """Messages whose outcome needs no AWS call (see `classify`), stored finished and audited in
    the caller's transaction; one outcome per item, `duplicate` for a MessageId already stored
    (or earlier in `items`)."""
    first = _first(items)
    claimed = claim_many(session, clock, first, lock_chain=True)
    out = _outcomes(items, first, claimed)
    for (env, result), answer in zip(items, out, strict=True):
        if answer is result:
            record_outcome(session, clock, env, result)
    return out


def store_pipelined(tx: Pipelined, clock: Clock, keyring: audit.Keyring,
                    items: Sequence[tuple[SnsEnvelope, EventOutcome]]) -> list[EventOutcome]:
    """`store` in a pipelined PostgreSQL transaction (`bot.db.Pipelined`), no session: BEGIN, the
    claim, the chain lock and the head in one round trip; the audit rows go with COMMIT."""
    first = _first(items)
    params = {"rows": _claim_rows(first), "now": naive_utc(clock())}
    rows, head = audit.locked_head_after(tx, _CLAIM_RAW, params)
    out = _outcomes(items, first, {r[0] for r in rows})
    audit.append_at_commit(tx, keyring, [outcome_event(clock, env, result) for (env, result), answer
                                         in zip(items, out, strict=True) if answer is result], head)
    return out


def _first(items: Sequence[tuple[SnsEnvelope, EventOutcome]]) -> list[tuple[SnsEnvelope, EventOutcome]]:
    """Each MessageId's first item."""
    first: dict[str, tuple[SnsEnvelope, EventOutcome]] = {}
    for env, result in items:
        first.setdefault(env.message_id, (env, result))
    return list(first.values())


Item = tuple[SnsEnvelope, EventOutcome]


def _outcomes(items: Sequence[Item], first: list[Item], claimed: set[str]) -> list[EventOutcome]:
    """Each item's outcome: its own for a MessageId's first item that this call claimed, else
    `duplicate`."""
    stored = {env.message_id: result for env, result in first if env.message_id in claimed}
    return [result if stored.get(env.message_id) is result
            else EventOutcome("duplicate", env.message_id, env.topic_arn) for env, result in items]


@dataclass(frozen=True)
class RevokePlan:
    """An alarm or budget of a revoking limit fired: the flow revokes after this commits."""

    limit_id: int
    subject_id: int
    reason: str  # alarm | budget
    note: str
    window: tuple[datetime, datetime]


def decide(session: Session, clock: Clock, env: SnsEnvelope, tz: ZoneInfo,
           week_start: int) -> tuple[EventOutcome, RevokePlan | None]:
    """What a claimed message means, database only (confirmation and revocation are AWS
    calls the flow makes after this transaction)."""
    if env.type == "SubscriptionConfirmation":
        return EventOutcome("confirmed", env.message_id, env.topic_arn), None
    if env.type == "UnsubscribeConfirmation":
        return EventOutcome("unsubscribed", env.message_id, env.topic_arn), None
    return _notification(session, clock, env, tz, week_start)


def finish(session: Session, clock: Clock, env: SnsEnvelope, result: EventOutcome) -> None:
    """The message was acted on: its outcome, stored and audited."""
    session.execute(update(SnsMessage).where(SnsMessage.message_id == env.message_id)
                    .values(outcome=result.outcome, processed_at=clock()))
    record_outcome(session, clock, env, result)


def record_outcome(session: Session, clock: Clock, env: SnsEnvelope, result: EventOutcome) -> None:
    audit.enqueue(session, outcome_event(clock, env, result))


def outcome_event(clock: Clock, env: SnsEnvelope, result: EventOutcome) -> audit.Pending:
    """The audit event of a message's outcome."""
    name = getattr(result.event, "name", None) or getattr(result.event, "budget_name", None)
    return audit.pending(clock, f"sns:{env.topic_arn}", f"sns.{result.outcome}", env.topic_arn,
                         {"message_id": env.message_id, "type": env.type, "name": name,
                          "subject": result.subject.name if result.subject else None})


def unclaim(session: Session, message_id: str) -> None:
    """Acting failed: forget the message so SNS's (or SQS's) next delivery is acted on."""
    session.execute(delete(SnsMessage).where(SnsMessage.message_id == message_id))


def _notification(session: Session, clock: Clock, env: SnsEnvelope, tz: ZoneInfo,
                  week_start: int) -> tuple[EventOutcome, RevokePlan | None]:
    event, limit_id, quick = _parse(env)
    if quick is not None:
        return quick, None
    assert event is not None
    name = event.name if isinstance(event, AlarmEvent) else event.budget_name
    limit = session.get(Limit, limit_id) if limit_id else None
    subject = session.get(Subject, limit.subject_id) if limit else None
    if limit is None or subject is None:
        return EventOutcome("posted", env.message_id, env.topic_arn, event), None
    status = limit_status(session, limit, subject, clock(), tz, week_start)
    base = EventOutcome("posted", env.message_id, env.topic_arn, event, info(subject), status,
                        users=tuple(access.affected_users(session, subject)))
    if not _breached(event):
        base.outcome = "recovered" if isinstance(event, AlarmEvent) and event.state == "OK" else "warned"
        return base, None
    if not should_revoke(session, clock, limit):
        base.outcome = "warned"
        return base, None
    if isinstance(event, BudgetEvent) and not budget_window.is_current(
            event, env.timestamp, status.window_start, status.window_end):
        base.outcome = "stale"  # about a window that has ended: posted, never enforced
        return base, None
    reason = "alarm" if isinstance(event, AlarmEvent) else "budget"
    window = Window(limit.window)
    end = clock() + window.length if window.length else status.window_end  # rolling: a full window
    base.outcome = "revoked"
    return base, RevokePlan(limit.id, subject.id, reason, f"{reason} {name}", (status.window_start, end))


def classify(env: SnsEnvelope) -> EventOutcome | None:
    """The outcome of a notification that needs neither the database nor AWS to decide: an
    unrecognised body, or an alarm or budget that is not the bot's (`posted`). None: `decide`."""
    return _parse(env)[2] if env.type == "Notification" else None


def _parse(env: SnsEnvelope) -> tuple[AlarmEvent | BudgetEvent | None, int | None, EventOutcome | None]:
    """(event, the bot's limit id it names, the outcome when that is already known)."""
    try:
        event = parse_any(env.message)
    except UnrecognisedMessage:
        return None, None, EventOutcome("unrecognised", env.message_id, env.topic_arn,
                                        raw=env.message[:2000])
    limit_id = limit_id_from_name(event.name if isinstance(event, AlarmEvent) else event.budget_name)
    if limit_id is None:
        return event, None, EventOutcome("posted", env.message_id, env.topic_arn, event)
    return event, limit_id, None


def should_revoke(session: Session, clock: Clock, limit: Limit) -> bool:
    """A revoking limit, not revoked yet, with no approved exception ("Approve for 24h"
    holds against alarms and budgets too). Asked again when the revocation is recorded."""
    return (limit.action != "notify" and not _already_revoked(session, limit.id)
            and not suspended(session, limit.id, clock()))


def _breached(event: AlarmEvent | BudgetEvent) -> bool:
    if isinstance(event, AlarmEvent):
        return event.state == "ALARM"
    if event.kind != "ACTUAL":
        return False  # a forecast warns; only spend that happened revokes
    if event.threshold and event.threshold.endswith("%"):
        try:
            return float(event.threshold.rstrip("%")) >= 100
        except ValueError:
            return False
    return event.amount is not None and event.budgeted is not None and event.amount >= event.budgeted


def _already_revoked(session: Session, limit_id: int) -> bool:
    return session.scalar(select(Revocation.id).where(
        Revocation.limit_id == limit_id, Revocation.state == "active")) is not None


def describe(result: EventOutcome) -> dict[str, Any]:
    """A compact record for logs and tests."""
    return {"outcome": result.outcome, "message_id": result.message_id,
            "subject": result.subject.name if result.subject else None}
