"""What a limit's current window holds: for one limit (`limit_status`), or for many at once
(`limit_statuses`, what `enforce` uses on every run).

A limit counts the hour buckets that start in its window (`limit_window`): a calendar
window's whole [start, end), a rolling window's (now - length, now] up to the bucket of
`now`. A user's limit sums its own meters; a team's sums its own and every member's. The
amount is the limit's plus its active temporary raises.

Both functions turn the totals into a `LimitStatus` the same way (`_status`); they differ in
how the totals are read. `limit_status` asks the ledger for one subject set. `limit_statuses`
groups the limits by window (every limit on the same window has the same bounds) and sums
each window's owners in one grouped statement (`ledger.metrics_by_group` over
`directory.coverage`: only the metrics that window's limits are on, whole UTC days read from
the day rollup as `ledger.totals` does), with the raises in one
more: at 2,000 limits on six windows, seven statements instead of 4,100 (docs/enforcement.md,
"How fast").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from bot.models import Limit, Subject
from bot.quantities import Window, window_bounds
from bot.services import directory, ledger, raises
from bot.services.ledger import HOUR

# Owners per grouped statement: each is bound twice (`directory.coverage`), and SQLite allows
# 32,766 parameters a statement.
OWNERS_PER_QUERY = 1_000


@dataclass(frozen=True)
class LimitStatus:
    limit_id: int
    subject: str
    metric: str
    amount: int
    window: str
    used: int
    window_start: datetime
    window_end: datetime
    action: str
    warn: tuple[int, ...]
    # for a cost_usd limit: tokens in the window that no price covers, so not in `used`
    unpriced_tokens: int = 0
    raised: int = 0  # active temporary raises, already included in `amount`

    @property
    def base_amount(self) -> int:
        return self.amount - self.raised

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.amount if self.amount else 0.0


def limit_window(window: str, now: datetime, tz: tzinfo, week_start: int
                 ) -> tuple[datetime, datetime, datetime]:
    """(start, end, end of the summed buckets): a window still running counts the bucket of
    `now` (a rolling window's `end` is `now` itself)."""
    start, end = window_bounds(Window(window), now, tz, week_start)
    return start, end, end if end > now else now + HOUR


def limit_status(session: Session, limit: Limit, subject: Subject, now: datetime, tz: ZoneInfo,
                 week_start: int) -> LimitStatus:
    """One limit, `subject` being its owner: one ledger query (for a team, one for its members)."""
    start, end, summed_to = limit_window(limit.window, now, tz, week_start)
    t = ledger.totals(session, directory.covered_subject_ids(session, subject), start, summed_to)
    return _status(limit, subject.name, t.metric(limit.metric), t.unpriced_tokens, start, end,
                   raises.raised(session, limit.id, now))


def limit_statuses(session: Session, limits: Sequence[tuple[Limit, Subject]], now: datetime,
                   tz: ZoneInfo, week_start: int, rollup: bool = True) -> dict[int, LimitStatus]:
    """`limit_status` of every (limit, owner) pair, by limit id: one grouped ledger statement
    per window (per OWNERS_PER_QUERY owners), one for the raises. `rollup` False sums the
    hourly rows alone (`ledger.metrics_by_group`)."""
    extra = raises.raised_by_limit(session, now) if limits else {}
    by_window: dict[str, list[tuple[Limit, Subject]]] = defaultdict(list)
    for limit, subject in limits:
        by_window[limit.window].append((limit, subject))
    out: dict[int, LimitStatus] = {}
    for window, pairs in by_window.items():
        start, end, summed_to = limit_window(window, now, tz, week_start)
        owners = sorted({subject.id for _, subject in pairs})
        metrics = {limit.metric for limit, _ in pairs}
        if "cost_usd" in metrics:
            metrics.add("unpriced_tokens")
        sums: dict[int, dict[str, int]] = {}
        for i in range(0, len(owners), OWNERS_PER_QUERY):
            chunk = directory.coverage(owners[i:i + OWNERS_PER_QUERY])
            sums.update(ledger.metrics_by_group(session, chunk, metrics, start, summed_to, rollup))
        for limit, subject in pairs:
            v = sums.get(subject.id, {})
            out[limit.id] = _status(limit, subject.name, v.get(limit.metric, 0), v.get("unpriced_tokens", 0),
                                    start, end, extra.get(limit.id, 0))
    return out


def _status(limit: Limit, owner: str, used: int, unpriced_tokens: int, start: datetime, end: datetime,
            extra: int) -> LimitStatus:
    """`used`: the window's value of the limit's metric (`Totals.metric`)."""
    return LimitStatus(limit.id, owner, limit.metric, limit.amount + extra, limit.window, used, start,
                       end, limit.action, tuple(limit.warn),
                       unpriced_tokens if limit.metric == "cost_usd" else 0, extra)
