"""Every table, as typed SQLAlchemy 2 models. Schema changes go through Alembic.

Conventions:
- times are stored as UTC (`UTCDateTime` gives aware datetimes back on every dialect);
- money is stored as integer micro-dollars (exact on SQLite and PostgreSQL alike);
- a limit's `amount` is tokens/requests, or micro-dollars for `cost_usd`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def naive_utc(at: datetime) -> datetime:
    """What a UTC column stores: naive UTC. A naive input is refused, so no local time sneaks in."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return at.astimezone(UTC).replace(tzinfo=None)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC; refuses naive input so no local time sneaks in."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else naive_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[int]: JSON,
                           list[str]: JSON}


class Subject(Base):
    __tablename__ = "subjects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # user | team
    name: Mapped[str] = mapped_column(String(64), unique=True)
    slack_user_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class TeamMember(Base):
    __tablename__ = "team_members"
    team_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True)
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[datetime]


class Principal(Base):
    __tablename__ = "principals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    # user | apikey | role | session | sso (bot/aws/principals.py): decides how it is blocked
    kind: Mapped[str] = mapped_column(String(8), default="user")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]


class Profile(Base):
    """An Application Inference Profile. `profile_id` is what CloudWatch calls ModelId."""

    __tablename__ = "profiles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arn: Mapped[str] = mapped_column(String(2048), unique=True)
    profile_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    model_source: Mapped[str] = mapped_column(String(2048))
    model_id: Mapped[str] = mapped_column(String(256))  # for pricing
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id", ondelete="SET NULL"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="ACTIVE")
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    backfilled_at: Mapped[datetime | None]


class Meter(Base):
    """What usage is measured by: an AIP id, an IAM principal ARN, or `key=value` metadata.

    Each meter belongs to one subject; the ledger is keyed by meter so that a subject's
    usage is one join, whatever produced it.
    """

    __tablename__ = "meters"
    __table_args__ = (UniqueConstraint("kind", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # profile | principal | metadata | gateway | mantle
    key: Mapped[str] = mapped_column(String(2048))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[datetime]


class LedgerValues:
    """The counted values of a ledger row: an hour of `usage`, or a day of `usage_daily`
    (`bot.services.ledger.VALUE_COLS` names them in this order)."""

    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    # Tokens (input+output+cache) and requests of calls to models without a price: counted in
    # tokens, never silently $0 (their cost is not in cost_micro_usd).
    unpriced_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_requests: Mapped[int] = mapped_column(BigInteger, default=0)


class Usage(LedgerValues, Base):
    __tablename__ = "usage"
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    updated_at: Mapped[datetime]


Index("ix_usage_hour", Usage.hour)


class UsageDay(LedgerValues, Base):
    """The hourly ledger summed per UTC day (`day` is 00:00 UTC): kept equal to `usage` by
    `bot.services.ledger`, the only writer of both, in the same transaction. Long windows read
    whole days here and only the partial-day edges from `usage` (docs/architecture.md)."""

    __tablename__ = "usage_daily"
    meter_id: Mapped[int] = mapped_column(ForeignKey("meters.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[datetime] = mapped_column(primary_key=True)


Index("ix_usage_daily_day", UsageDay.day)


class Limit(Base):
    __tablename__ = "limits"
    __table_args__ = (UniqueConstraint("subject_id", "metric", "window"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    window: Mapped[str] = mapped_column(String(8))
    warn: Mapped[list[int]] = mapped_column(default=lambda: [80, 90])
    action: Mapped[str] = mapped_column(String(8), default="revoke")
    alarm: Mapped[bool] = mapped_column(Boolean, default=True)
    # Seconds between a breach and the revocation (0: at once); a raise approved meanwhile
    # stops it. The breach time is the limit's 100% alert mark.
    grace_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


_ACTIVE_MANUAL = text("state = 'active' AND reason = 'manual'")
_ACTIVE_LIMIT = text("state = 'active' AND limit_id IS NOT NULL")


class Revocation(Base):
    __tablename__ = "revocations"
    # One active revocation per cause: per subject for manual ones, per limit otherwise.
    __table_args__ = (
        Index("uq_revocations_active_manual", "subject_id", unique=True, sqlite_where=_ACTIVE_MANUAL,
              postgresql_where=_ACTIVE_MANUAL),
        Index("uq_revocations_active_limit", "limit_id", unique=True, sqlite_where=_ACTIVE_LIMIT,
              postgresql_where=_ACTIVE_LIMIT),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), index=True)
    reason: Mapped[str] = mapped_column(String(8))  # limit | manual | alarm | budget
    note: Mapped[str] = mapped_column(Text, default="")
    limit_id: Mapped[int | None] = mapped_column(ForeignKey("limits.id", ondelete="SET NULL"))
    window_start: Mapped[datetime | None]
    window_end: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(12), default="active")  # active | restored
    revoked_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime]
    restored_by: Mapped[str | None] = mapped_column(String(128))
    restored_at: Mapped[datetime | None]
    # Every principal the deny was put on, so a lift also reaches one unbound meanwhile.
    principals: Mapped[list[str]] = mapped_column(default=list)
    # What took effect beyond the principals: per ARN its method, whether it blocked, and the
    # API keys the bot deactivated (reactivated exactly on restore).
    enforcement: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RestoreRequest(Base):
    __tablename__ = "restore_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revocation_id: Mapped[int] = mapped_column(ForeignKey("revocations.id", ondelete="CASCADE"), index=True)
    requester: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    decided_by: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[datetime | None]
    decision_note: Mapped[str] = mapped_column(Text, default="")
    channel: Mapped[str | None] = mapped_column(String(32))
    ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class LimitException(Base):
    __tablename__ = "exceptions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    limit_id: Mapped[int] = mapped_column(ForeignKey("limits.id", ondelete="CASCADE"), index=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("restore_requests.id", ondelete="SET NULL"))
    granted_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class RaiseRequest(Base):
    """A request for more on one limit: decided once (approve, approve half, deny) or expired."""

    __tablename__ = "raise_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    limit_id: Mapped[int] = mapped_column(ForeignKey("limits.id", ondelete="CASCADE"), index=True)
    requester: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)  # same unit as the limit's amount
    duration_seconds: Mapped[int | None] = mapped_column(Integer)  # None: until the window ends
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(10), default="pending")
    decision: Mapped[str | None] = mapped_column(String(16))  # approve | approve_half | deny
    decided_by: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[datetime | None]
    channel: Mapped[str | None] = mapped_column(String(32))
    ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class LimitRaise(Base):
    """A temporary raise: the limit's effective amount is its amount plus its active raises."""

    __tablename__ = "limit_raises"
    __table_args__ = (Index("ix_limit_raises_limit_id_expires_at", "limit_id", "expires_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    limit_id: Mapped[int] = mapped_column(ForeignKey("limits.id", ondelete="CASCADE"))
    amount: Mapped[int] = mapped_column(BigInteger)
    starts_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    granted_by: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("raise_requests.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    # Set by the expiry sweep once the raise has ended (audited; the backstop re-synced).
    closed_at: Mapped[datetime | None]


class AlertMark(Base):
    __tablename__ = "alert_marks"
    __table_args__ = (UniqueConstraint("limit_id", "window_start", "threshold"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    limit_id: Mapped[int] = mapped_column(ForeignKey("limits.id", ondelete="CASCADE"))
    window_start: Mapped[datetime]
    threshold: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class SnsMessage(Base):
    __tablename__ = "sns_messages"
    message_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic_arn: Mapped[str] = mapped_column(String(512))
    type: Mapped[str] = mapped_column(String(32))
    received_at: Mapped[datetime]
    processed_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(32), default="received")
    body: Mapped[str] = mapped_column(Text, default="")


class Admin(Base):
    __tablename__ = "admins"
    slack_user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(10))  # owner | admin | approver
    added_by: Mapped[str] = mapped_column(String(128))
    added_at: Mapped[datetime]


class AuditEvent(Base):
    """Append-only. `id` is assigned by the audit service (previous id + 1) under a lock."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(512))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly what was hashed
    outcome: Mapped[str] = mapped_column(String(8))  # ok | denied | error
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # sha256, or hmac-sha256:<key id> when BOT_AUDIT_KEY signed the row (services/audit.py)
    alg: Mapped[str] = mapped_column(String(32), server_default="sha256")


class Lease(Base):
    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]


class Digest(Base):
    __tablename__ = "digests"
    __table_args__ = (UniqueConstraint("channel", "day"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    day: Mapped[str] = mapped_column(String(10))  # ISO date in BOT_TIMEZONE
    posted_at: Mapped[datetime]
    ts: Mapped[str | None] = mapped_column(String(32))


class SyncCursor(Base):
    """How far a collector has read (usage sync, invocation logs), so a gap is re-read."""

    __tablename__ = "sync_cursors"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[datetime]
    updated_at: Mapped[datetime]


class PollMark(Base):
    """Where the CloudWatch sync last read one meter (an AIP or a mantle project): the next read
    starts at `position` (an hour), so a meter skipped by adaptive polling loses no hour."""

    __tablename__ = "poll_marks"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # profile | mantle
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    position: Mapped[datetime]
    read_at: Mapped[datetime]


class OutboxMessage(Base):
    """A Slack post that failed (Slack down, rate limited): retried by `flush_outbox`."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # post | dm | update
    target: Mapped[str] = mapped_column(String(64))  # channel or user id
    ts: Mapped[str | None] = mapped_column(String(32))  # message to update
    text: Mapped[str] = mapped_column(Text)
    blocks: Mapped[list[Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class ModelPrice(Base):
    """A price read from the AWS Price List API (`bedrock-bot prices refresh`), per region.

    Prices are exact decimal text in USD per 1,000 tokens (the unit of bot/pricing.json).
    """

    __tablename__ = "model_prices"
    __table_args__ = (UniqueConstraint("region", "model_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    region: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(256))
    input: Mapped[str] = mapped_column(String(40))
    output: Mapped[str] = mapped_column(String(40))
    cache_read: Mapped[str] = mapped_column(String(40))
    cache_write: Mapped[str] = mapped_column(String(40))
    source: Mapped[str] = mapped_column(String(256))  # "AmazonBedrock: Nova Pro"
    fetched_at: Mapped[datetime]


class BilledCost(Base):
    """What AWS billed for a subject's Bedrock use on one closed UTC day (Cost Explorer), beside
    the bot's own estimate for the same day. `basis` says how the cost was attributed:
    `tag:user`, `tag:team` (AIP cost-allocation tags) or `principal-tag:<key>`; a row without a
    subject (`account`) is the account's whole Bedrock bill for the day."""

    __tablename__ = "billed_costs"
    __table_args__ = (UniqueConstraint("subject_id", "day", "basis"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"),
                                                   index=True)
    day: Mapped[str] = mapped_column(String(10))  # ISO date, UTC (Cost Explorer's days)
    basis: Mapped[str] = mapped_column(String(80))
    billed_micro_usd: Mapped[int] = mapped_column(BigInteger)
    estimate_micro_usd: Mapped[int] = mapped_column(BigInteger)
    unpriced_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    fetched_at: Mapped[datetime]

# ---- Slack replay cache (issue 15 item 3) ----------------------------------------------------

class SlackSignature(Base):
    """A verified Slack request signature, kept while it could still verify, so that the
    same signed request sent again (a replay) is refused. Shared by replicas."""

    __tablename__ = "slack_signatures"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 hex of the header
    expires_at: Mapped[datetime] = mapped_column(index=True)  # request timestamp + 5 minutes


class GatewayCounter(Base):
    """Per limit owner (a user, or a team for its members): what the gateway has in flight and
    what it has settled since ever. A check reserves with one conditional UPDATE of this row, so
    concurrent checks on any replica see each other (bot/services/quota.py)."""

    __tablename__ = "gateway_counters"
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_cost: Mapped[int] = mapped_column(BigInteger, default=0)  # micro-USD
    settled_input: Mapped[int] = mapped_column(BigInteger, default=0)
    settled_output: Mapped[int] = mapped_column(BigInteger, default=0)
    settled_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    settled_cost: Mapped[int] = mapped_column(BigInteger, default=0)


class GatewayReservation(Base):
    """Headroom held by an allowed check until /v1/usage settles it or it expires."""

    __tablename__ = "gateway_reservations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    owners: Mapped[list[int]] = mapped_column(default=list)  # counters it was added to
    tokens: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(8), default="held")  # held | settled | expired
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


Index("ix_gateway_reservations_state_expires_at", GatewayReservation.state, GatewayReservation.expires_at)


class GatewayRequest(Base):
    """One row per /v1/usage request_id: the idempotency key, and what was counted for it."""

    __tablename__ = "gateway_requests"
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    reservation_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256), default="")
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micro_usd: Mapped[int] = mapped_column(BigInteger, default=0)
    counted_by: Mapped[str] = mapped_column(String(8))  # gateway | profile (its AIP meter counts it)
    received_at: Mapped[datetime] = mapped_column(index=True)


class StreamCheckpoint(Base):
    """How far the usage stream has been read, per shard: committed with the ledger rows it
    produced, so a record is counted exactly when its shard's checkpoint moves past it."""

    __tablename__ = "stream_checkpoints"
    stream: Mapped[str] = mapped_column(String(128), primary_key=True)  # the stream's name
    shard_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    sequence: Mapped[str | None] = mapped_column(String(128))  # last record applied; None: none yet
    finished: Mapped[bool] = mapped_column(Boolean, default=False)  # a closed shard read to its end
    updated_at: Mapped[datetime]


class StreamEvent(Base):
    """Log event ids already counted from the usage stream (CloudWatch Logs may deliver an event
    twice); kept for a retention window, then pruned."""

    __tablename__ = "stream_events"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(index=True)
