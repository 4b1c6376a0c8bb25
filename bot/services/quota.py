"""The gateway's quota brain: may this subject make a call now, and what did its calls use.

Two kinds of state, kept apart on purpose:

- **What changes rarely** — who the subject is, its teams, limits, revocations, exceptions, and
  the ledger's usage per limit window — is loaded into a `View` per subject and answered from
  memory. A view is dropped when the governance version moves (the audit log's head: every
  limit change, revoke, restore, exception and membership change writes an audit row) or the
  ledger version moves (a usage sync's cursor), both polled at most every `refresh` seconds,
  and when a calendar window it counted ends.
- **What must not overshoot** — headroom held by checks in flight, and the usage the gateway
  itself settled — lives in `gateway_counters`, one row per limit owner (a user, or a team for
  all its members). A check with `estimated_tokens` reserves with one conditional `UPDATE … SET
  reserved = reserved + n WHERE reserved + settled + n <= cap` per owner: PostgreSQL re-checks
  the `WHERE` after waiting on a concurrent update of the row, SQLite runs one writer at a time,
  so concurrent checks in one process or on several replicas cannot pass the cap together.

A view remembers the owners' `settled_*` counters read in the *same snapshot* as its ledger
sums (REPEATABLE READ on PostgreSQL). `/v1/usage` adds to the ledger and to `settled_*` in one
transaction, so usage = ledger-at-snapshot + (settled now − settled at snapshot) counts every
settled call exactly once, whether or not the view has seen the ledger row yet.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db import Database
from bot.errors import BadInput, NotFound
from bot.gateway_json import CheckRequest, UsageRequest, Who
from bot.models import (
    AuditEvent,
    GatewayCounter,
    GatewayRequest,
    GatewayReservation,
    Limit,
    LimitException,
    Meter,
    Principal,
    Profile,
    Revocation,
    Subject,
    SyncCursor,
)
from bot.pricing import PriceTable
from bot.quantities import Amount, Window, format_amount
from bot.services import directory, ledger
from bot.services.ledger import LedgerRow, floor_hour
from bot.services.limit_usage import limit_statuses
from bot.services.logs_usage import session_user

log = logging.getLogger(__name__)

METER_KIND = "gateway"
UNITS = {"tokens": "tokens", "input_tokens": "tokens", "output_tokens": "tokens",
         "requests": "requests", "cost_usd": "micro_usd"}
VIEW_MAX_AGE = timedelta(minutes=5)  # a safety net; versions and window ends drop views sooner
IDEMPOTENCY = timedelta(days=7)  # how long a request_id is remembered
SWEEP_EVERY = 10.0  # seconds between sweeps of expired reservations
_IAM = re.compile(
    r"^arn:aws[a-z-]*:iam::(?P<account>\d{12}):(?P<kind>user|role)/(?:[^/]*/)*(?P<name>[^/]+)\Z")
_SESSION = re.compile(
    r"^arn:aws[a-z-]*:sts::(?P<account>\d{12}):assumed-role/(?P<role>[^/]+)/(?P<session>[^/]+)\Z")
_COUNTER_COLS = ("reserved_tokens", "reserved_requests", "reserved_cost", "settled_input",
                 "settled_output", "settled_requests", "settled_cost")


# ---- pure: counters, rules and decisions ----------------------------------------------------


@dataclass(frozen=True)
class Counters:
    reserved_tokens: int = 0
    reserved_requests: int = 0
    reserved_cost: int = 0
    settled_input: int = 0
    settled_output: int = 0
    settled_requests: int = 0
    settled_cost: int = 0

    def settled(self, metric: str) -> int:
        return {"tokens": self.settled_input + self.settled_output, "input_tokens": self.settled_input,
                "output_tokens": self.settled_output, "requests": self.settled_requests,
                "cost_usd": self.settled_cost}[metric]

    def reserved(self, metric: str) -> int:
        if metric == "requests":
            return self.reserved_requests
        return self.reserved_cost if metric == "cost_usd" else self.reserved_tokens


@dataclass(frozen=True)
class Rule:
    """A limit as the gateway applies it, with the ledger's usage in its window at snapshot."""

    limit_id: int
    owner_id: int
    owner: str
    metric: str
    window: str
    amount: int
    action: str
    resets_at: datetime | None  # None for rolling windows
    base: int
    suspended_until: datetime | None

    def enforced(self, now: datetime) -> bool:
        """Blocks calls: a revoking limit not suspended by an approved exception."""
        return self.action == "revoke" and not (self.suspended_until and self.suspended_until > now)


@dataclass(frozen=True)
class Ask:
    """What one call may use, per metric: the estimate for every token metric (it may all be
    input or all output), one request, and the estimate's cost priced as output tokens."""

    tokens: int = 0
    cost: int = 0

    @property
    def requests(self) -> int:
        return 1 if self.tokens else 0

    def of(self, metric: str) -> int:
        if metric == "requests":
            return self.requests
        return self.cost if metric == "cost_usd" else self.tokens


@dataclass(frozen=True)
class LimitState:
    rule: Rule
    used: int  # ledger + settled gateway usage
    reserved: int  # in flight, this call's reservation included once made

    @property
    def remaining(self) -> int:
        return max(0, self.rule.amount - self.used - self.reserved)

    def breached_by(self, ask: Ask) -> bool:
        more = ask.of(self.rule.metric)
        total = self.used + self.reserved + more
        return total > self.rule.amount if more else total >= self.rule.amount


def limit_state(rule: Rule, snap: Counters, now: Counters) -> LimitState:
    m = rule.metric
    return LimitState(rule, rule.base + now.settled(m) - snap.settled(m), now.reserved(m))


def caps(rules: Iterable[Rule], snaps: Mapping[int, Counters], now: datetime) -> dict[int, dict[str, int]]:
    """Per owner and metric, the most `reserved + settled + ask` may reach (the tightest limit)."""
    out: dict[int, dict[str, int]] = {}
    for r in rules:
        if not r.enforced(now):
            continue
        cap = r.amount - r.base + snaps.get(r.owner_id, Counters()).settled(r.metric)
        per = out.setdefault(r.owner_id, {})
        per[r.metric] = min(cap, per.get(r.metric, cap))
    return out


def _amount(metric: str, n: int) -> str:
    return format_amount(Amount(n, metric == "cost_usd"))


def breach_reason(s: LimitState, ask: Ask) -> str:
    r = s.rule
    head = f"{r.owner}'s {r.metric.replace('_', ' ')}/{r.window} limit of {_amount(r.metric, r.amount)}"
    more = ask.of(r.metric)
    if not more:
        return f"{head} is reached ({_amount(r.metric, s.used + s.reserved)} used or in flight)"
    return (f"{head} would be exceeded: {_amount(r.metric, s.used)} used, "
            f"{_amount(r.metric, s.reserved)} in flight, {_amount(r.metric, more)} asked")


# ---- the view: one subject's slowly changing state ------------------------------------------


@dataclass(frozen=True)
class View:
    subject_id: int
    name: str
    owners: tuple[int, ...]  # the subject, then its teams
    rules: tuple[Rule, ...]
    snaps: Mapping[int, Counters]
    revoked: tuple[str, ...]
    meter_id: int | None
    versions: tuple[int, int]  # (governance, ledger) generation it was loaded under
    valid_until: datetime


def _counters(session: Session, owners: Sequence[int]) -> dict[int, Counters]:
    if not owners:
        return {}
    cols = [getattr(GatewayCounter, c) for c in _COUNTER_COLS]
    rows = session.execute(select(GatewayCounter.subject_id, *cols)
                           .where(GatewayCounter.subject_id.in_(owners)))
    return {row[0]: Counters(*row[1:]) for row in rows}


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def ensure_counters(session: Session, owners: Iterable[int]) -> None:
    ids = sorted(set(owners))
    if ids:
        stmt = _insert(session)(GatewayCounter).on_conflict_do_nothing()
        session.execute(stmt, [{"subject_id": o, **dict.fromkeys(_COUNTER_COLS, 0)} for o in ids])


def load_view(session: Session, subject: Subject, now: datetime, tz: ZoneInfo, week_start: int,
              versions: tuple[int, int]) -> View:
    """Everything `check` needs about `subject`, read in the caller's (one) snapshot."""
    owners = [subject, *(directory.teams_of(session, subject) if subject.kind == "user" else [])]
    ids = [o.id for o in owners]
    limits = list(session.scalars(select(Limit).where(Limit.subject_id.in_(ids)).order_by(Limit.id)))
    suspended: dict[int, datetime] = dict(session.execute(
        select(LimitException.limit_id, func.max(LimitException.expires_at))
        .where(LimitException.limit_id.in_([lim.id for lim in limits]), LimitException.expires_at > now)
        .group_by(LimitException.limit_id)).tuples().all()) if limits else {}
    by_id = {o.id: o for o in owners}
    rules, ends = [], [now + VIEW_MAX_AGE]
    statuses = limit_statuses(session, [(lim, by_id[lim.subject_id]) for lim in limits], now, tz, week_start)
    for lim in limits:
        status = statuses[lim.id]
        rolling = Window(lim.window).rolling
        if not rolling:
            ends.append(status.window_end)
        rules.append(Rule(lim.id, lim.subject_id, by_id[lim.subject_id].name, lim.metric, lim.window,
                          lim.amount, lim.action, None if rolling else status.window_end, status.used,
                          suspended.get(lim.id)))
    revs = session.execute(select(Subject.name, Revocation.reason, Revocation.note)
                           .join(Subject, Subject.id == Revocation.subject_id)
                           .where(Revocation.subject_id.in_(ids), Revocation.state == "active")
                           .order_by(Revocation.id)).all()
    revoked = tuple(f"{name} is revoked ({reason}{': ' + note[:120] if note else ''})"
                    for name, reason, note in revs)
    meter_id = session.scalar(select(Meter.id).where(Meter.kind == METER_KIND,
                                                     Meter.subject_id == subject.id).limit(1))
    snaps = _counters(session, sorted({r.owner_id for r in rules}))
    return View(subject.id, subject.name, tuple(ids), tuple(rules), snaps, revoked, meter_id,
                versions, min(ends))


# ---- reservations and settlement (one transaction each, in the caller's session) ------------


class _Full(Exception):
    """A conditional reservation update matched no row: some cap would be passed."""


def _fits(cap: Mapping[str, int], ask: Ask) -> list[ColumnElement[bool]]:
    c = GatewayCounter
    exprs = {"tokens": c.reserved_tokens + c.settled_input + c.settled_output,
             "input_tokens": c.reserved_tokens + c.settled_input,
             "output_tokens": c.reserved_tokens + c.settled_output,
             "requests": c.reserved_requests + c.settled_requests,
             "cost_usd": c.reserved_cost + c.settled_cost}
    return [exprs[m] + ask.of(m) <= limit for m, limit in sorted(cap.items())]


def reserve(session: Session, subject_id: int, owner_caps: Mapping[int, Mapping[str, int]], ask: Ask,
            now: datetime, hold: timedelta) -> tuple[str, dict[int, Counters]]:
    """Add `ask` to every owner's `reserved_*` if it fits under its caps; raise _Full if not.

    Owners are updated in id order, so two checks of one team never wait on each other in a
    cycle. The caller rolls back on _Full (an owner updated before the full one is undone).
    """
    c = GatewayCounter
    cols = [getattr(c, name) for name in _COUNTER_COLS]
    after: dict[int, Counters] = {}
    for owner in sorted(owner_caps):
        stmt = (update(c).where(c.subject_id == owner, *_fits(owner_caps[owner], ask))
                .values(reserved_tokens=c.reserved_tokens + ask.tokens,
                        reserved_requests=c.reserved_requests + ask.requests,
                        reserved_cost=c.reserved_cost + ask.cost)
                .returning(*cols).execution_options(synchronize_session=False))
        row = session.execute(stmt).first()
        if row is None:
            raise _Full(owner)
        after[owner] = Counters(*row)
    rid = uuid.uuid4().hex
    session.execute(insert(GatewayReservation).values(
        id=rid, subject_id=subject_id, owners=sorted(owner_caps), tokens=ask.tokens,
        requests=ask.requests, cost=ask.cost, state="held", created_at=now, expires_at=now + hold))
    return rid, after


def _unreserve(session: Session, owners: Sequence[int], tokens: int, requests: int, cost: int) -> None:
    c = GatewayCounter
    if owners:
        session.execute(update(c).where(c.subject_id.in_(list(owners))).values(
            reserved_tokens=c.reserved_tokens - tokens, reserved_requests=c.reserved_requests - requests,
            reserved_cost=c.reserved_cost - cost).execution_options(synchronize_session=False))


def release(session: Session, reservation: str, subject_id: int, state: str = "settled") -> str:
    """Give a held reservation's headroom back. Returns `released`, `unknown`, or the state it
    already had (`settled`, `expired`); another subject's reservation is refused."""
    r = GatewayReservation
    row = session.execute(update(r).where(r.id == reservation, r.subject_id == subject_id, r.state == "held")
                          .values(state=state).returning(r.owners, r.tokens, r.requests, r.cost)
                          .execution_options(synchronize_session=False)).first()
    if row is not None:
        _unreserve(session, row[0], row[1], row[2], row[3])
        return "released"
    other = session.execute(select(r.subject_id, r.state).where(r.id == reservation)).first()
    if other is None:
        return "unknown"
    if other[0] != subject_id:
        raise BadInput("that reservation belongs to another subject")
    return str(other[1])


def sweep(session: Session, now: datetime, batch: int = 500) -> int:
    """Expire held reservations past their time (their calls never reported): headroom back."""
    r = GatewayReservation
    q = select(r.id).where(r.state == "held", r.expires_at <= now).limit(batch)
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    expired = 0
    for rid in session.scalars(q).all():
        row = session.execute(update(r).where(r.id == rid, r.state == "held").values(state="expired")
                              .returning(r.owners, r.tokens, r.requests, r.cost)
                              .execution_options(synchronize_session=False)).first()
        if row is not None:
            _unreserve(session, row[0], row[1], row[2], row[3])
            expired += 1
    session.execute(delete(GatewayRequest).where(GatewayRequest.received_at < now - IDEMPOTENCY)
                    .execution_options(synchronize_session=False))
    return expired


@dataclass(frozen=True)
class Settled:
    request_id: str
    duplicate: bool
    counted_by: str  # gateway | profile | none
    reservation: str | None  # what became of it: released | settled | expired | unknown


def settle(session: Session, clock: Clock, view: View, req: UsageRequest, cost: int,
           through_aip: bool, priced: bool = True) -> Settled:
    """Count one call once: the request id row, the reservation, the ledger, the counters.
    A call to a model without a price is counted in tokens and flagged unpriced (never a
    silent $0), as the other meters do."""
    now = clock()
    counted = "profile" if through_aip else ("gateway" if req.tokens else "none")
    g = GatewayRequest
    ins = (_insert(session)(g).values(
        request_id=req.request_id, subject_id=view.subject_id, reservation_id=req.reservation,
        model=req.model, input_tokens=req.input_tokens, output_tokens=req.output_tokens,
        cache_read_tokens=req.cache_read_tokens, cache_write_tokens=req.cache_write_tokens,
        cost_micro_usd=cost, counted_by=counted, received_at=now)
        .on_conflict_do_nothing().returning(g.request_id))
    if session.execute(ins).first() is None:
        return Settled(req.request_id, True, counted, None)
    outcome = release(session, req.reservation, view.subject_id) if req.reservation else None
    if counted == "gateway":
        meter_id = view.meter_id or directory.ensure_meter(session, clock, METER_KIND, view.name,
                                                           view.subject_id).id
        unpriced = 0 if priced else (req.input_tokens + req.output_tokens + req.cache_read_tokens
                                     + req.cache_write_tokens)
        ledger.add(session, [LedgerRow(meter_id, floor_hour(now), req.input_tokens, req.output_tokens,
                                       req.cache_read_tokens, req.cache_write_tokens, 1, cost,
                                       unpriced, 0 if priced else 1)], now)
        c = GatewayCounter
        stmt = _insert(session)(c)
        add = {"settled_input": req.input_tokens, "settled_output": req.output_tokens,
               "settled_requests": 1, "settled_cost": cost}
        stmt = stmt.on_conflict_do_update(index_elements=["subject_id"], set_={
            k: getattr(c, k) + stmt.excluded[k] for k in add})
        session.execute(stmt, [{"subject_id": o, **dict.fromkeys(_COUNTER_COLS, 0), **add}
                               for o in sorted(view.owners)])
    return Settled(req.request_id, False, counted, outcome)


# ---- the book: views in memory, versions polled, decisions made -----------------------------


@dataclass(frozen=True)
class Decision:
    allowed: bool
    subject: str
    reason: str
    reservation: str | None
    limits: tuple[LimitState, ...]
    expires_at: datetime | None = None


@dataclass
class BookStats:
    loads: int = 0
    polls: int = 0
    invalidations: int = 0
    swept: int = 0
    full_retries: int = 0


class QuotaBook:
    """Answers checks and takes usage reports for one process (any number of replicas may
    run one each: what must be exact is in the database, see the module doc)."""

    def __init__(self, db: Database, clock: Clock, prices: PriceTable, tz: ZoneInfo, week_start: int,
                 hold: timedelta = timedelta(minutes=10), refresh: float = 0.1,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db, self.clock, self.prices, self.tz, self.week_start = db, clock, prices, tz, week_start
        self.hold, self.refresh, self.monotonic = hold, refresh, monotonic
        self.stats = BookStats()
        self._views: dict[int, View] = {}
        self._names: dict[tuple[str, str], int] = {}  # (kind, key) → subject id, per governance gen
        self._aips: frozenset[str] | None = None
        self._principals: dict[tuple[str, str, str], tuple[int, str]] | None = None
        self._seen: tuple[Any, Any] | None = None
        self._gen = [0, 0]
        self._polled = float("-inf")
        self._swept = self.monotonic()
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()

    # -- versions ----------------------------------------------------------------------------

    def poll(self, force: bool = False) -> None:
        """Read the two versions (one query) at most every `refresh` seconds; drop what moved."""
        if not force and self.monotonic() - self._polled < self.refresh:
            return
        with self._lock:
            if not force and self.monotonic() - self._polled < self.refresh:
                return
            started = self.monotonic()
            with self.db.session_scope() as s:
                seen = s.execute(select(select(func.max(AuditEvent.id)).scalar_subquery(),
                                        select(func.max(SyncCursor.updated_at)).scalar_subquery())).one()
            self.stats.polls += 1
            if self._seen is None or seen[0] != self._seen[0]:
                self._gen[0] += 1
                self._names, self._aips, self._principals = {}, None, None
            if self._seen is None or seen[1] != self._seen[1]:
                self._gen[1] += 1
            if self._seen is not None and tuple(seen) != self._seen:
                self.stats.invalidations += 1
            self._seen = (seen[0], seen[1])
            self._polled = started

    def _fresh(self, view: View | None) -> bool:
        return (view is not None and view.versions == (self._gen[0], self._gen[1])
                and self.clock() < view.valid_until)

    # -- who is asking -----------------------------------------------------------------------

    def resolve(self, session: Session, who: Who) -> Subject:
        if who.subject is not None:
            found = session.scalar(select(Subject).where(Subject.name == who.subject))
        elif who.slack_user_id is not None:
            found = session.scalar(select(Subject).where(Subject.slack_user_id == who.slack_user_id))
        else:
            sid = self._principal(session, who.principal_arn or "")
            found = session.get(Subject, sid) if sid is not None else None
        if found is None:
            raise NotFound(f"unknown subject {str(who)[:120]!r}: link it in Slack first")
        return found

    def _principal(self, session: Session, arn: str) -> int | None:
        """An IAM user/role by account and name (path ignored); an STS session by its role,
        or by the team member its session name names (as the invocation-log meter does)."""
        if self._principals is None:
            index: dict[tuple[str, str, str], tuple[int, str]] = {}
            for p_arn, sid, kind in session.execute(select(Principal.arn, Principal.subject_id, Subject.kind)
                                                    .join(Subject, Subject.id == Principal.subject_id)):
                m = _IAM.match(p_arn)
                if m:
                    index[(m["account"], m["kind"], m["name"].lower())] = (sid, kind)
            self._principals = index
        iam, sts = _IAM.match(arn), _SESSION.match(arn)
        if iam:
            hit = self._principals.get((iam["account"], iam["kind"], iam["name"].lower()))
            return hit[0] if hit else None
        if sts is None:
            return None
        role = self._principals.get((sts["account"], "role", sts["role"].lower()))
        if role is None:
            return None
        if role[1] == "team":
            team = session.get(Subject, role[0])
            member = next((m for m in directory.members_of(session, team)
                           if m.name == session_user(sts["session"])), None) if team else None
            if member is not None:
                return member.id
        return role[0]

    def _key(self, who: Who) -> tuple[str, str]:
        if who.subject is not None:
            return ("name", who.subject)
        if who.slack_user_id is not None:
            return ("slack", who.slack_user_id)
        return ("arn", who.principal_arn or "")

    def view(self, who: Who) -> View:
        """The subject's view, from memory when nothing it depends on has moved."""
        self.poll()
        versions = (self._gen[0], self._gen[1])
        sid = self._names.get(self._key(who))
        cached = self._views.get(sid) if sid is not None else None
        if cached is not None and self._fresh(cached):
            return cached
        with self.db.session_scope() as s:
            subject = self.resolve(s, who) if sid is None else s.get(Subject, sid)
            if subject is None:  # deleted since it was resolved
                raise NotFound(f"unknown subject {str(who)[:120]!r}")
            owners = [subject.id, *(t.id for t in directory.teams_of(s, subject))] \
                if subject.kind == "user" else [subject.id]
            ensure_counters(s, owners)
        with self.db.session_scope() as s:
            if self.db.dialect == "postgresql":  # ledger sums and counters from one snapshot
                s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            subject = s.get(Subject, subject.id)
            if subject is None:
                raise NotFound(f"unknown subject {str(who)[:120]!r}")
            view = load_view(s, subject, self.clock(), self.tz, self.week_start, versions)
        self.stats.loads += 1
        self._names[self._key(who)] = view.subject_id
        self._views[view.subject_id] = view
        return view

    def aips(self) -> frozenset[str]:
        if self._aips is None:
            with self.db.session_scope() as s:
                known: set[str] = set()
                for arn, pid in s.execute(select(Profile.arn, Profile.profile_id)):
                    known.update((arn, pid))
            self._aips = frozenset(known)
        return self._aips

    # -- the two calls -----------------------------------------------------------------------

    def ask_for(self, model: str | None, tokens: int) -> Ask:
        cost = self.prices.cost_micro_usd(model, 0, tokens) if (model and tokens) else 0
        return Ask(tokens, cost)

    def check(self, req: CheckRequest) -> Decision:
        self._maybe_sweep()
        view = self.view(req.who)
        now = self.clock()
        ask = self.ask_for(req.model, req.estimated_tokens)
        owners = sorted({r.owner_id for r in view.rules})
        if view.revoked:
            return Decision(False, view.name, "; ".join(view.revoked), None,
                            self._states(view, self._read(owners)))
        owner_caps = caps(view.rules, view.snaps, now)
        if not ask.tokens or not owner_caps:
            states = self._states(view, self._read(owners))
            return self._decide(view, states, ask, None)
        for attempt in (1, 2):
            try:
                with self.db.session_scope() as s:
                    if self.db.dialect == "postgresql":
                        # A reservation is worth no fsync: one lost with the server's last
                        # milliseconds gives back headroom only for calls already in flight.
                        s.execute(text("SET LOCAL synchronous_commit TO OFF"))
                    rid, after = reserve(s, view.subject_id, owner_caps, ask, now, self.hold)
                    rest = [o for o in owners if o not in after]
                    counters = {**_counters(s, rest), **after} if rest else after
                return Decision(True, view.name, "within limits", rid, self._states(view, counters),
                                now + self.hold)
            except _Full:
                if attempt == 1 and self._sweep_now():
                    self.stats.full_retries += 1
                    continue
                break
        states = self._states(view, self._read(owners))
        decision = self._decide(view, states, ask, None)
        if decision.allowed:  # the cap moved between the update and this read: say so plainly
            return replace(decision, allowed=False, reason="limits are being used concurrently; retry")
        return decision

    def usage(self, req: UsageRequest) -> Settled:
        view = self.view(req.who)
        through_aip = req.model in self.aips() if req.model else False
        cost = self.prices.cost_micro_usd(req.model, req.input_tokens, req.output_tokens,
                                          req.cache_read_tokens, req.cache_write_tokens) if req.model else 0
        priced = bool(req.model) and self.prices.known(req.model)
        with self.db.session_scope() as s:
            return settle(s, self.clock, view, req, cost, through_aip, priced)

    # -- helpers -----------------------------------------------------------------------------

    def _read(self, owners: Sequence[int]) -> dict[int, Counters]:
        if not owners:
            return {}
        with self.db.session_scope() as s:
            return _counters(s, owners)

    def _states(self, view: View, counters: Mapping[int, Counters]) -> tuple[LimitState, ...]:
        return tuple(limit_state(r, view.snaps.get(r.owner_id, Counters()),
                                 counters.get(r.owner_id, Counters())) for r in view.rules)

    def _decide(self, view: View, states: Sequence[LimitState], ask: Ask,
                rid: str | None) -> Decision:
        now = self.clock()
        for s in states:
            if s.rule.enforced(now) and s.breached_by(ask):
                return Decision(False, view.name, breach_reason(s, ask), None, tuple(states))
        reason = "within limits" if any(s.rule.enforced(now) for s in states) else "no enforced limit"
        return Decision(True, view.name, reason, rid, tuple(states))

    def _maybe_sweep(self) -> None:
        if self.monotonic() - self._swept >= SWEEP_EVERY:
            self._sweep_now()

    def _sweep_now(self) -> bool:
        """Expire overdue reservations; True when any headroom came back."""
        if not self._sweeping.acquire(blocking=False):
            return False
        try:
            self._swept = self.monotonic()
            with self.db.session_scope() as s:
                n = sweep(s, self.clock())
            self.stats.swept += n
            return n > 0
        finally:
            self._sweeping.release()
