"""Adaptive polling: how soon each subject's meters must be read again (docs/usage-sync.md).

A subject is read every sync while it could reach its next threshold (a warning, then 100 %) within
the enforcement target at the fastest plausible rate — the account's tokens-per-minute quota of
the models it calls (BOT_MODEL_TPM, else BOT_DEFAULT_TPM) — and at most every
BOT_SYNC_IDLE_SECONDS otherwise, limit or not. The read itself is the sync's: a meter skipped now
is read later from its own mark (`PollMark`), so no hour is lost.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import Limit, Meter, Profile, Subject, TeamMember
from bot.pricing import PriceTable, bare_id
from bot.services.limit_usage import limit_statuses


@dataclass(frozen=True)
class Cadence:
    """Adaptive polling settings (BOT_SYNC_* and BOT_*_TPM), read once per sync."""

    sync_seconds: int
    idle_seconds: int = 900
    target_seconds: int = 60
    default_tpm: int = 2_000_000
    model_tpm: Mapping[str, int] = field(default_factory=dict)
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    week_start: int = 0
    prices: PriceTable | None = None

    def tpm(self, model_id: str) -> int:
        """The account's tokens per minute for a model: BOT_MODEL_TPM by exact or bare id."""
        if model_id in self.model_tpm:
            return self.model_tpm[model_id]
        bare = bare_id(model_id)
        for key, value in self.model_tpm.items():
            if bare is not None and bare_id(key) == bare:
                return value
        return self.default_tpm


def interval_seconds(headroom: float, rate_per_minute: float | None, cadence: Cadence) -> float:
    """How long after a read the next one may wait: the time to use up `headroom` at
    `rate_per_minute`, minus the enforcement target, between 0 (every sync) and the idle cadence.
    A rate of None is unbounded (every sync)."""
    if rate_per_minute is None or headroom <= 0:
        return 0.0
    reach = 60.0 * headroom / rate_per_minute
    return max(0.0, min(float(cadence.idle_seconds), reach - cadence.target_seconds))


def headroom(amount: int, warn: Iterable[int], used: int) -> int:
    """Distance from `used` to the next threshold not yet reached (warnings, then 100 %)."""
    marks = sorted({amount * w // 100 for w in warn if 0 < w < 100} | {amount})
    return next((m - used for m in marks if m > used), 0)


def rate_per_minute(metric: str, models: Iterable[str], projects: int,
                    cadence: Cadence) -> float | None:
    """The fastest a limit's metric can grow, per minute; None when AWS sets no bound the bot
    knows (requests: AWS enforces no requests-per-minute quota; cost of an unpriced model)."""
    models = sorted(set(models))
    if metric == "requests":
        return None
    if metric != "cost_usd":
        total = sum(cadence.tpm(m) for m in models) + projects * cadence.default_tpm
        return float(total or cadence.default_tpm)
    if projects or not models or cadence.prices is None:
        return None
    micro = Decimal(0)
    for model in models:
        price = cadence.prices.price_of(model)
        if price is None:
            return None
        per_token = max(price.input, price.output, price.cache_read, price.cache_write) / 1000
        micro += per_token * 1_000_000 * cadence.tpm(model)
    return float(micro)


def subject_intervals(session: Session, now: datetime, cadence: Cadence) -> dict[int, float]:
    """subject id → seconds its meters may go unread (the idle cadence when absent). A limit's
    usage is enforce's own reading of it (`limit_usage.limit_statuses`: one grouped statement
    per window, whole days from the rollup), so the planner and enforce never disagree."""
    pairs = list(session.execute(select(Limit, Subject)
                                 .join(Subject, Subject.id == Limit.subject_id)).tuples())
    if not pairs:
        return {}
    members: defaultdict[int, set[int]] = defaultdict(set)
    for team_id, user_id in session.execute(select(TeamMember.team_id, TeamMember.user_id)):
        members[team_id].add(user_id)
    models: defaultdict[int, set[str]] = defaultdict(set)
    for sid, model in session.execute(select(Profile.subject_id, Profile.model_id)):
        if sid is not None:
            models[sid].add(model)
    projects: defaultdict[int, int] = defaultdict(int)
    for sid in session.scalars(select(Meter.subject_id).where(Meter.kind == "mantle")):
        if sid is not None:
            projects[sid] += 1
    statuses = limit_statuses(session, pairs, now, cadence.tz, cadence.week_start)
    out: dict[int, float] = {}
    for lim, owner in pairs:
        covered = {owner.id} | (members[owner.id] if owner.kind == "team" else set())
        status = statuses[lim.id]
        rate = rate_per_minute(lim.metric, (m for s in covered for m in models[s]),
                               sum(projects[s] for s in covered), cadence)
        wait = interval_seconds(headroom(status.amount, lim.warn or (), status.used), rate, cadence)
        for s in covered:
            out[s] = min(out.get(s, float(cadence.idle_seconds)), wait)
    return out


def is_due(read_at: datetime | None, wait: float, now: datetime) -> bool:
    """A meter never read is due; otherwise once `wait` seconds have passed since its read."""
    return read_at is None or (now - read_at).total_seconds() >= wait
