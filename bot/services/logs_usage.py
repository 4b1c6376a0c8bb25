"""Usage from Bedrock model-invocation logs (CloudWatch Logs), for callers without an AIP.

One Logs Insights query per sync reads the unsynced whole hours and sums tokens and requests
per (hour, identity.arn, modelId, requestMetadata values). Each result row is attributed to one
meter and lands in the same hourly ledger as the CloudWatch (AIP) usage:

1. a row whose modelId is an application inference profile is skipped: the AIP meter counts
   it from CloudWatch, so it is never counted twice;
2. a ``requestMetadata`` value mapped to a subject (``/bedrock meter userId=alice @alice``,
   meter kind ``metadata``, key ``userId=alice``) wins; with several configured keys, the first
   key in ``BOT_METADATA_KEYS`` order that has a mapped value;
3. else the caller's IAM identity, against the principals bound with ``/bedrock link``:
   an IAM user or role by account and name (an ARN's path is ignored); an STS assumed-role
   session ``arn:aws:sts::<acct>:assumed-role/<role>/<session>`` by its role. When that role is
   bound to a *team* and the session name (lower-cased; for ``alice@example.com`` the part
   before ``@``) is the name of a member of that team, the usage goes to that member, on a
   ``principal`` meter keyed by the session ARN; otherwise to the role's own meter;
4. anything else is unattributed: dropped, but counted in the result.

Calls made by the gateway's own principals (``BOT_GATEWAY_PRINCIPALS``: a LiteLLM proxy's
role, say) are skipped before any of this: the gateway reports them per subject through
``/v1/usage`` (meter kind ``gateway``), so counting them here too would count them twice.

Hours are re-read whole and overwrite what the ledger had for the log meters (``principal``
and ``metadata``) in those hours, so a re-run is idempotent and a changed mapping moves an
hour rather than counting it twice. See docs/invocation-logs.md.

A sync is three steps, run by `bot/flows/usage_sync.py`: `plan_logs` (a short transaction: the
cursor and the window), `query_logs` (the polled Logs Insights query, no session open) and
`record_logs` (a short transaction: attribution against the mappings and links as they are
then, the overwrite, the cursor).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws import logs as insights_query
from bot.aws.logs import LogsInsights, metadata_field
from bot.clock import Clock
from bot.errors import BadInput
from bot.models import Meter, Principal, Profile, Subject, SyncCursor, TeamMember
from bot.pricing import PriceTable
from bot.services import audit, directory, ledger
from bot.services.directory import Actor, SubjectRef
from bot.services.ledger import HOUR, LedgerRow, floor_hour
from bot.services.usage import backfill_start

log = logging.getLogger(__name__)

CURSOR = "invocation_logs"
LOG_METER_KINDS = ("principal", "metadata")
MAX_HOURS = 24  # a longer gap is caught up over several syncs, one bounded query each
METADATA_VALUE_MAX = 256  # Bedrock's own limit on a requestMetadata value
UNATTRIBUTED_SHOWN = 20
AIP_MARKER = ":application-inference-profile/"

_IAM = re.compile(
    r"^arn:aws[a-z-]*:iam::(?P<account>\d{12}):(?P<kind>user|role)/(?:[^/]*/)*(?P<name>[^/]+)\Z")
_SESSION = re.compile(
    r"^arn:aws[a-z-]*:sts::(?P<account>\d{12}):assumed-role/(?P<role>[^/]+)/(?P<session>[^/]+)\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class LogsSyncResult:
    """What one invocation-log sync did.

    status: ``complete`` (rows written, cursor advanced), ``pending`` (the query did not
    complete in time or Logs Insights was busy: nothing written, cursor untouched, the next
    sync re-reads the same hours) or ``skipped`` (ran less than `min_interval` ago).
    """

    status: str
    start: datetime
    end: datetime
    rows: int = 0  # result rows read
    ledger_rows: int = 0  # (meter, hour) rows written
    attributed_requests: int = 0
    skipped_aip_requests: int = 0  # through an AIP: counted by its CloudWatch meter instead
    skipped_gateway_requests: int = 0  # made by a gateway principal: counted by /v1/usage instead
    unattributed_requests: int = 0
    unattributed_tokens: int = 0
    unattributed_arns: tuple[str, ...] = ()  # the busiest callers nobody is bound to, for admins
    malformed_rows: int = 0
    truncated: bool = False  # the query hit the row limit; the rest is read next sync
    cursor: datetime | None = None  # where the next sync starts re-reading from (at the latest)
    bytes_scanned: float = 0.0  # what Logs Insights billed for this query
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "complete"


@dataclass
class _Sums:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    requests: int = 0
    cost_micro_usd: int = 0
    unpriced_tokens: int = 0
    unpriced_requests: int = 0


@dataclass(frozen=True)
class LogsPlan:
    """The hours one sync reads, decided in a short transaction (plain data)."""

    now: datetime
    start: datetime
    end: datetime  # the query's end: now, or `max_hours` after start
    read_end: datetime  # hours before this are re-read whole and overwritten
    keys: tuple[str, ...]
    cursor: datetime | None
    skip: bool = False  # ran less than `min_interval` ago, or nothing before the handover
    # BOT_GATEWAY_PRINCIPALS as (account, user|role, name): their calls are counted by /v1/usage
    gateway: frozenset[tuple[str, str, str]] = frozenset()

    def skipped(self) -> LogsSyncResult:
        return LogsSyncResult("skipped", self.start, self.end, cursor=self.cursor)


@dataclass(frozen=True)
class LogsRead:
    """What Logs Insights answered: rows, or None when the query did not complete in time."""

    rows: list[dict[str, str]] | None
    truncated: bool  # as many rows as one query returns: the last hour may be cut short
    calls: dict[str, int]
    bytes_scanned: float

    def pending(self, plan: LogsPlan) -> LogsSyncResult:
        """Nothing written, cursor untouched: the next sync re-reads the same hours."""
        return LogsSyncResult("pending", plan.start, plan.end, cursor=plan.cursor, calls=self.calls)


def plan_logs(session: Session, clock: Clock, metadata_keys: Sequence[str], *,
              min_interval: timedelta = timedelta(0), max_hours: int = MAX_HOURS,
              gateway_principals: Sequence[str] = (), until: datetime | None = None) -> LogsPlan:
    """The window: from the previous hour (or the cursor after a gap, never before the
    previous month) to now; a gap longer than `max_hours` is read `max_hours` at a time.
    `min_interval` lets a deployment run this collector less often than the CloudWatch sync
    (each run is billed per GB scanned). With `until` (the usage stream's handover hour) only
    hours before it are read: the stream counts the rest (docs/usage-stream.md).
    """
    keys = insights_query.validate_metadata_keys(metadata_keys)
    if max_hours < 2:
        raise ValueError("max_hours must be >= 2 (the previous and the current hour)")
    now = clock()
    this_hour = floor_hour(now)
    cur = session.get(SyncCursor, CURSOR)
    start = this_hour - HOUR
    if cur is not None and cur.position < start:
        start = max(cur.position, backfill_start(now))
    end, read_end = now, this_hour + HOUR
    if read_end - start > max_hours * HOUR:
        end = read_end = start + max_hours * HOUR
    if until is not None:
        if start >= until:
            return LogsPlan(now, start, end, read_end, tuple(keys), cur.position if cur else None, True)
        end, read_end = min(end, until), min(read_end, until)
    skip = bool(cur is not None and min_interval and now - cur.updated_at < min_interval)
    return LogsPlan(now, start, end, read_end, tuple(keys), cur.position if cur else None, skip,
                    gateway_identities(gateway_principals))


def query_logs(plan: LogsPlan, insights: LogsInsights, log_group: str) -> LogsRead:
    """The Logs Insights query (StartQuery, polled GetQueryResults): no session, no lock."""
    calls_before = Counter(insights.calls)
    scanned_before = insights.bytes_scanned
    rows = insights.run(log_group, plan.start, plan.end, insights_query.build_query(plan.keys))
    return LogsRead(rows, rows is not None and len(rows) >= insights.max_rows,
                    dict(Counter(insights.calls) - calls_before),
                    insights.bytes_scanned - scanned_before)


def record_logs(session: Session, clock: Clock, plan: LogsPlan, read: LogsRead,
                prices: PriceTable) -> LogsSyncResult:
    """Attribute the rows (mappings and links as they are now), overwrite the hours, advance
    the cursor (see the module doc)."""
    rows = read.rows or []
    start, read_end, keys = plan.start, plan.read_end, plan.keys
    parsed = [(_parse_hour(r.get(insights_query.HOUR_FIELD)), r) for r in rows]
    malformed = sum(1 for hour, _ in parsed if hour is None)
    if read.truncated:
        # Rows come sorted by hour: the last hour may be cut short, so it is left for the next
        # sync — unless it is the only one (more groups in one hour than one query returns).
        last = max((h for h, _ in parsed if h is not None), default=start)
        read_end = min(read_end, last if last > start else start + HOUR)
        log.warning("invocation-log query returned %d rows (the limit): read up to %s, the rest "
                    "next sync", len(rows), read_end.isoformat())

    attribution = Attribution(session, clock, keys)
    aips = _known_aips(session)
    gateway = plan.gateway
    per_model: dict[tuple[int, datetime, str], _Sums] = {}
    attributed = skipped_aip = skipped_gateway = unattributed = unattributed_tokens = 0
    strangers: Counter[str] = Counter()
    for hour, row in parsed:
        if hour is None or not start <= hour < read_end:
            continue
        model = row.get(insights_query.MODEL_FIELD, "")
        requests = _count(row.get(insights_query.REQUESTS_FIELD))
        if _is_aip(model, aips):
            skipped_aip += requests
            continue
        arn = row.get(insights_query.ARN_FIELD, "")
        if gateway and identity_of(arn) in gateway:
            skipped_gateway += requests
            continue
        inp, out = _count(row.get(insights_query.IN_FIELD)), _count(row.get(insights_query.OUT_FIELD))
        meter_id = attribution.meter_for(arn, {k: row.get(metadata_field(k)) for k in keys})
        if meter_id is None:
            unattributed += requests
            unattributed_tokens += inp + out
            strangers[arn or "(no identity)"] += inp + out
            continue
        attributed += requests
        cache_read = _count(row.get(insights_query.CACHE_READ_FIELD))
        cache_write = _count(row.get(insights_query.CACHE_WRITE_FIELD))
        acc = per_model.setdefault((meter_id, hour, model), _Sums())
        acc.input_tokens += inp
        acc.output_tokens += out
        acc.cache_read_tokens += cache_read
        acc.cache_write_tokens += cache_write
        acc.requests += requests

    ledger_rows = _ledger_rows(per_model, prices)
    # Whole hours were re-read: what the log meters had for them is replaced, not added to.
    log_meters = select(Meter.id).where(Meter.kind.in_(LOG_METER_KINDS))
    ledger.delete_hours(session, log_meters, start, read_end)
    ledger.upsert(session, ledger_rows, plan.now)
    position = min(floor_hour(plan.now), read_end)
    _advance(session, session.get(SyncCursor, CURSOR), position, plan.now)
    return LogsSyncResult(
        "complete", start, plan.end, rows=len(rows), ledger_rows=len(ledger_rows),
        attributed_requests=attributed, skipped_aip_requests=skipped_aip,
        skipped_gateway_requests=skipped_gateway,
        unattributed_requests=unattributed, unattributed_tokens=unattributed_tokens,
        unattributed_arns=tuple(a for a, _ in strangers.most_common(UNATTRIBUTED_SHOWN)),
        malformed_rows=malformed, truncated=read.truncated, cursor=position,
        bytes_scanned=read.bytes_scanned, calls=read.calls)


def _ledger_rows(per_model: dict[tuple[int, datetime, str], _Sums],
                 prices: PriceTable) -> list[LedgerRow]:
    """Several rows (callers, sessions, metadata values, models) can share a meter and hour:
    they are summed here, before the upsert; cost is rounded once per model."""
    sums: dict[tuple[int, datetime], _Sums] = {}
    for (meter_id, hour, model), t in per_model.items():
        acc = sums.setdefault((meter_id, hour), _Sums())
        acc.input_tokens += t.input_tokens
        acc.output_tokens += t.output_tokens
        acc.cache_read_tokens += t.cache_read_tokens
        acc.cache_write_tokens += t.cache_write_tokens
        acc.requests += t.requests
        acc.cost_micro_usd += prices.cost_micro_usd(model, t.input_tokens, t.output_tokens,
                                                    t.cache_read_tokens, t.cache_write_tokens)
        if not prices.known(model):  # counted in tokens, flagged: never a silent $0
            acc.unpriced_tokens += (t.input_tokens + t.output_tokens + t.cache_read_tokens
                                    + t.cache_write_tokens)
            acc.unpriced_requests += t.requests
    return [LedgerRow(m, h, t.input_tokens, t.output_tokens, t.cache_read_tokens,
                      t.cache_write_tokens, t.requests, t.cost_micro_usd,
                      t.unpriced_tokens, t.unpriced_requests)
            for (m, h), t in sorted(sums.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def _advance(session: Session, cur: SyncCursor | None, position: datetime, now: datetime) -> None:
    if cur is None:
        session.add(SyncCursor(name=CURSOR, position=position, updated_at=now))
    else:
        cur.position, cur.updated_at = position, now
    session.flush()


# ---- attribution ---------------------------------------------------------------------------


def identity_of(arn: str) -> tuple[str, str, str] | None:
    """(account, user|role, name) of an IAM user or role ARN, or of an STS session's role."""
    iam = _IAM.match(arn)
    if iam:
        return iam["account"], iam["kind"], iam["name"].lower()
    sts = _SESSION.match(arn)
    return (sts["account"], "role", sts["role"].lower()) if sts else None


def gateway_identities(arns: Sequence[str]) -> frozenset[tuple[str, str, str]]:
    return frozenset(i for i in (identity_of(a) for a in arns) if i is not None)


def _known_aips(session: Session) -> frozenset[str]:
    known: set[str] = set()
    for arn, profile_id in session.execute(select(Profile.arn, Profile.profile_id)):
        known.update((arn, profile_id))
    return frozenset(known)


def _is_aip(model_id: str, known: frozenset[str]) -> bool:
    """Known to the bot, or any AIP ARN: an AIP the bot adopts later is backfilled from
    CloudWatch, so counting its calls here too would count them twice."""
    return model_id in known or AIP_MARKER in model_id


@dataclass(frozen=True)
class _Linked:
    arn: str
    subject_id: int
    subject_kind: str


class Attribution:
    """Row → meter, per the precedence in the module doc. Loaded once per sync."""

    def __init__(self, session: Session, clock: Clock, keys: Sequence[str]) -> None:
        self.session = session
        self.clock = clock
        self.keys = list(keys)
        # Core rows, not ORM rows or objects: this runs once per stream batch too.
        session.flush()
        rows = session.connection().execute
        self.metadata: dict[str, int] = {key: meter_id for key, meter_id in rows(
            select(Meter.key, Meter.id).where(Meter.kind == "metadata", Meter.subject_id.is_not(None))).all()}
        self.linked: dict[tuple[str, str, str], _Linked] = {}
        q = select(Principal.arn, Principal.subject_id, Subject.kind).join(
            Subject, Subject.id == Principal.subject_id)
        for arn, subject_id, kind in rows(q).all():
            m = _IAM.match(arn)
            if m:
                self.linked[(m["account"], m["kind"], m["name"].lower())] = _Linked(arn, subject_id, kind)
        # Existing principal meters, so a hit costs no query (ensure_meter for the rest, which
        # also re-points a meter whose principal moved to another subject).
        self.meters: dict[tuple[str, int], int] = {
            (key, subject_id): meter_id for key, subject_id, meter_id in rows(
                select(Meter.key, Meter.subject_id, Meter.id).where(Meter.kind == "principal",
                                                                    Meter.subject_id.is_not(None))).all()}
        self.members: dict[int, dict[str, int]] = {}

    def meter_for(self, arn: str, metadata: Mapping[str, str | None]) -> int | None:
        for key in self.keys:
            value = metadata.get(key)
            if value is not None and f"{key}={value}" in self.metadata:
                return self.metadata[f"{key}={value}"]
        iam = _IAM.match(arn)
        if iam:
            linked = self.linked.get((iam["account"], iam["kind"], iam["name"].lower()))
            return self._meter(linked.arn, linked.subject_id) if linked else None
        sts = _SESSION.match(arn)
        if sts is None:
            return None
        role = self.linked.get((sts["account"], "role", sts["role"].lower()))
        if role is None:
            return None
        if role.subject_kind == "team":
            member = self._members(role.subject_id).get(session_user(sts["session"]))
            if member is not None:
                return self._meter(arn, member)
        return self._meter(role.arn, role.subject_id)

    def _meter(self, key: str, subject_id: int) -> int:
        found = self.meters.get((key, subject_id))
        if found is None:
            found = directory.ensure_meter(self.session, self.clock, "principal", key, subject_id).id
            self.meters[(key, subject_id)] = found
        return found

    def _members(self, team_id: int) -> dict[str, int]:
        if team_id not in self.members:
            q = (select(Subject.name, Subject.id).join(TeamMember, TeamMember.user_id == Subject.id)
                 .where(TeamMember.team_id == team_id))
            self.members[team_id] = {name: sid for name, sid in self.session.execute(q)}
        return self.members[team_id]


def session_user(session_name: str) -> str:
    """The user name a role session name stands for: lower-cased, e-mail domain dropped."""
    return session_name.strip().lower().partition("@")[0]


# ---- result parsing ----------------------------------------------------------------------


def _parse_hour(value: str | None) -> datetime | None:
    """Logs Insights prints bin(1h) as `2026-11-25 09:00:00.000` (UTC)."""
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return floor_hour(at)


def _count(value: str | None) -> int:
    """A sum or count from a result row; absent (no such field in any record) is 0."""
    if value is None or value == "":
        return 0
    try:
        number = Decimal(value)
    except InvalidOperation:
        return 0
    return max(0, int(number)) if number.is_finite() else 0


# ---- /bedrock meter <key>=<value> <subject> --------------------------------------------------


def parse_meter_spec(text: str) -> tuple[str, str]:
    """`userId=alice` → ("userId", "alice"); the value may itself contain `=`."""
    key, sep, value = text.strip().partition("=")
    if not sep or not key or not value:
        raise BadInput(f"{text[:80]!r} is not <requestMetadata-key>=<value>")
    return key, value


def map_metadata(session: Session, clock: Clock, actor: Actor, key: str, value: str,
                 ref: SubjectRef, allowed_keys: Iterable[str] | None = None) -> Meter:
    """Meter the invocation-log usage carrying requestMetadata `key`=`value` to a subject (admin).

    Creates the subject like other admin commands do; re-points an existing mapping (its
    history moves with it). With `allowed_keys` (BOT_METADATA_KEYS) a key the sync does not
    query is refused, since nothing would ever be metered by it.
    """
    directory.authorize(session, actor, "admin", "meter")
    key, value = key.strip(), value.strip()
    if not insights_query.METADATA_KEY_RE.fullmatch(key):
        raise BadInput(f"{key[:80]!r} is not a requestMetadata key the bot can query "
                       "(1-64 letters, digits or _)")
    if allowed_keys is not None:
        allowed = list(allowed_keys)
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none: set BOT_METADATA_KEYS"
            raise BadInput(f"{key!r} is not one of the metered requestMetadata keys ({known})")
    if not value or len(value) > METADATA_VALUE_MAX or _CONTROL.search(value):
        raise BadInput(f"a requestMetadata value is 1-{METADATA_VALUE_MAX} printable characters")
    subject = directory.ensure(session, clock, actor, ref)
    meter_key = f"{key}={value}"
    existing = session.scalar(select(Meter).where(Meter.kind == "metadata", Meter.key == meter_key))
    before = None
    if existing is not None and existing.subject_id is not None:
        previous = session.get(Subject, existing.subject_id)
        before = previous.name if previous else None
    meter = directory.ensure_meter(session, clock, "metadata", meter_key, subject.id)
    session.flush()
    audit.record(session, clock, actor.label, "meter.map", f"{subject.kind}:{subject.name}",
                 {"key": key, "value": value, "before": before})
    return meter
