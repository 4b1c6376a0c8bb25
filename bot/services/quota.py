"""The gateway's quota brain: may this subject make a call now, and what did its calls use.

Two kinds of state, kept apart on purpose:

- **What changes rarely** — who the subject is, its teams, limits, revocations, exceptions, and
  the ledger's usage per limit window — is loaded into a `View` per subject and kept in memory,
  stamped with the audit head and ledger version it was read at. Every check's one statement
  (`bot/services/quota_sql.py`) also asks whether a governance audit row (limit change, revoke,
  restore, exception, membership…) was written since, or a usage sync moved the ledger: then
  the view is reloaded before answering. So a change from Slack, on any replica, reaches the
  next check. A view is also reloaded when a calendar window it counted ends.
- **What must not overshoot** — headroom held by checks in flight, and the usage the gateway
  itself settled — lives in `gateway_counters`, one row per limit owner (a user, or a team for
  all its members). A check with `estimated_tokens` locks its owners' rows in id order, adds to
  `reserved_*` only if every owner stays under its caps, and inserts the reservation, in one
  statement on PostgreSQL (`FOR UPDATE` sees the newest row after a wait) and under SQLite's
  single write lock: concurrent checks in one process or on several replicas cannot pass a cap
  together.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db import Database
from bot.errors import BadInput, NotFound
from bot.gateway_json import CheckRequest, UsageRequest, Who
from bot.models import (
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
)
from bot.pricing import PriceTable
from bot.quantities import Amount, Window, format_amount
from bot.services import directory, quota_sql
from bot.services.ledger import floor_hour
from bot.services.limit_usage import limit_statuses
from bot.services.logs_usage import session_user
from bot.services.quota_sql import COLS, CheckSql, Stamp, stamp_now

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
_COUNTER_COLS = COLS


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


def _asks(ask: Ask) -> dict[str, int]:
    """What the call adds per metric, and per counter (`tokens`, `requests`, `cost_usd`)."""
    return {m: ask.of(m) for m in ("tokens", "input_tokens", "output_tokens", "requests", "cost_usd")}


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
    stamp: Stamp  # the audit head and ledger version it was loaded at (every check compares)
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


def load_view(session: Session, subject: Subject, now: datetime, tz: ZoneInfo, week_start: int) -> View:
    """Everything `check` needs about `subject`, read in the caller's (one) snapshot."""
    stamp = stamp_now(session)
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
                stamp, min(ends))


# ---- reservations and settlement (one transaction each, in the caller's session) ------------


def _unreserve(session: Session, owners: Sequence[int], tokens: int, requests: int, cost: int) -> None:
    c = GatewayCounter
    if owners:
        session.execute(update(c).where(c.subject_id.in_(list(owners))).values(
            reserved_tokens=c.reserved_tokens - tokens, reserved_requests=c.reserved_requests - requests,
            reserved_cost=c.reserved_cost - cost).execution_options(synchronize_session=False))


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


def usage_row(view: View, req: UsageRequest, cost: int, through_aip: bool, priced: bool, meter: int | None,
              now: datetime) -> quota_sql.Usage:
    """What one /v1/usage writes (pure). A call to a model without a price is counted in tokens
    and flagged unpriced (never a silent $0), as the other meters do."""
    counted = "profile" if through_aip else ("gateway" if req.tokens else "none")
    tokens = req.input_tokens + req.output_tokens + req.cache_read_tokens + req.cache_write_tokens
    mine = counted == "gateway"
    return quota_sql.Usage(
        req.request_id, view.subject_id, req.reservation, req.model or "", req.input_tokens,
        req.output_tokens, req.cache_read_tokens, req.cache_write_tokens, cost, counted,
        meter if mine else None, tuple(sorted(view.owners)) if mine else (),
        0 if priced else tokens, 0 if priced else 1, now, floor_hour(now))


def settled(u: quota_sql.Usage, done: quota_sql.Done) -> Settled:
    """The answer to a /v1/usage from what its statement did; another subject's reservation is
    refused (nothing was written)."""
    if done.other is not None and done.other[0] != u.subject:
        raise BadInput("that reservation belongs to another subject")
    if not done.inserted:
        return Settled(u.request_id, True, u.counted, None)
    if u.reservation is None:
        outcome = None
    elif done.released:
        outcome = "released"
    else:
        outcome = done.other[1] if done.other is not None else "unknown"
    return Settled(u.request_id, False, u.counted, outcome)


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
    stale: int = 0  # checks that found their view stale (a governance or ledger change)
    swept: int = 0
    full_retries: int = 0


def _sweep_may_help(counters: Mapping[int, tuple[int, ...]], owner_caps: Mapping[int, Mapping[str, int]],
                    ask: Mapping[str, int]) -> bool:
    """Whether expiring reservations could make a denied reservation fit: only when an owner
    that does not fit holds something reserved (a sweep only lowers `reserved_*`). Without this,
    every check of a subject over its limit swept, a transaction of its own on the main pool:
    most of PostgreSQL's checks over 4 ms in the 1-client bench (issue 18)."""
    return any(o in counters and not quota_sql.fits(counters[o], cap, ask) and any(counters[o][:3])
               for o, cap in owner_caps.items())


STALE_RETRIES = 3  # reloads one check may do before it gives up (governance changing that fast)


class QuotaBook:
    """Answers checks and takes usage reports for one process (any number of replicas may
    run one each: what must be exact is in the database, see the module doc)."""

    def __init__(self, db: Database, clock: Clock, prices: PriceTable, tz: ZoneInfo, week_start: int,
                 hold: timedelta = timedelta(minutes=10),
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db, self.clock, self.prices, self.tz, self.week_start = db, clock, prices, tz, week_start
        self.hold, self.monotonic = hold, monotonic
        self.sql = CheckSql(db)
        self.stats = BookStats()
        self._views: dict[int, View] = {}
        self._meters: dict[int, int] = {}  # subject id → gateway meter id, made since its view loaded
        self._names: dict[tuple[str, str], int] = {}  # (kind, key) → subject id
        self._aips: frozenset[str] | None = None
        self._principals: dict[tuple[str, str, str], tuple[int, str]] | None = None
        self._directory_at = -1  # the audit head the three directory caches above were built at
        self._swept = self.monotonic()
        self._sweeping = threading.Lock()

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

    def view(self, who: Who, stale: bool = False) -> View:
        """The subject's view: from memory, or loaded when `stale` (a check found the database
        moved past it), unknown, or past a window end. Whether a view from memory is still
        fresh is asked by the check's own statement (`CheckSql`), never assumed."""
        key = self._key(who)
        if stale:
            self._names.pop(key, None)
        sid = self._names.get(key)
        cached = self._views.get(sid) if sid is not None else None
        if not stale and cached is not None and self.clock() < cached.valid_until:
            return cached
        with self.db.session_scope() as s:
            head = stamp_now(s).gov
            if head > self._directory_at:  # names, principals, AIPs may have moved: rebuild them
                self._names, self._aips, self._principals = {}, None, None
                self._directory_at, sid = head, None
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
            view = load_view(s, subject, self.clock(), self.tz, self.week_start)
        self.stats.loads += 1
        self._names[key] = view.subject_id
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
        """One statement per check when the view is in memory: its freshness and the owners'
        counters (`CheckSql.read`), or those and the reservation (`CheckSql.reserve`)."""
        self._maybe_sweep()
        view = self.view(req.who)
        ask = self.ask_for(req.model, req.estimated_tokens)
        swept, reloads = False, 0
        while True:
            now = self.clock()
            owners = sorted({r.owner_id for r in view.rules})
            owner_caps = {} if view.revoked or not ask.tokens else caps(view.rules, view.snaps, now)
            if owner_caps:
                out = self.sql.reserve(view.subject_id, owners, owner_caps, _asks(ask), now,
                                       now + self.hold, view.stamp)
            else:
                out = self.sql.read(owners, view.stamp)
            if out.stale:
                self.stats.stale += 1
                reloads += 1
                if reloads > STALE_RETRIES:
                    return Decision(False, view.name, "limits are changing right now; retry", None, ())
                view = self.view(req.who, stale=True)
                continue
            counters = {o: Counters(*row) for o, row in out.counters.items()}
            states = self._states(view, counters)
            if view.revoked:
                return Decision(False, view.name, "; ".join(view.revoked), None, states)
            if not owner_caps:
                return self._decide(view, states, ask, None)
            if out.reservation is not None:
                return Decision(True, view.name, "within limits", out.reservation, states, now + self.hold)
            if not swept and _sweep_may_help(out.counters, owner_caps, _asks(ask)) and self._sweep_now():
                # expired reservations gave headroom back: once more
                swept = True
                self.stats.full_retries += 1
                continue
            decision = self._decide(view, states, ask, None)
            if decision.allowed:  # it fits, yet nothing was reserved (a counter row went missing)
                return replace(decision, allowed=False, reason="limits are being used concurrently; retry")
            return decision

    def usage(self, req: UsageRequest) -> Settled:
        view = self.view(req.who)
        through_aip = req.model in self.aips() if req.model else False
        cost = self.prices.cost_micro_usd(req.model, req.input_tokens, req.output_tokens,
                                          req.cache_read_tokens, req.cache_write_tokens) if req.model else 0
        priced = bool(req.model) and self.prices.known(req.model)
        meter = self._meter(view) if req.tokens and not through_aip else None
        u = usage_row(view, req, cost, through_aip, priced, meter, self.clock())
        return settled(u, quota_sql.settle(self.sql, u))

    def _meter(self, view: View) -> int:
        """The subject's gateway meter, made on its first counted call (then remembered)."""
        known = view.meter_id or self._meters.get(view.subject_id)
        if known is None:
            known = quota_sql.ensure_meter(self.sql, METER_KIND, view.name, view.subject_id, self.clock())
            self._meters[view.subject_id] = known
        return known

    # -- helpers -----------------------------------------------------------------------------

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
