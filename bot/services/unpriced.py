"""Calls to models without a price: counted in tokens, flagged, never a silent $0.

The ledger keeps `unpriced_tokens` / `unpriced_requests` per (meter, hour) (set by the usage
sync and the invocation-log sync when the price table has no entry for the model). This
module says which models they were, for the usage report and the digest: the source model
of each AIP meter with unpriced usage. Log meters (principals, metadata) do not keep their
model per hour, so their share is counted but unnamed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from bot.models import Meter, Profile, Usage
from bot.services import ledger


@dataclass(frozen=True)
class UnpricedSummary:
    tokens: int
    requests: int
    models: tuple[str, ...]  # AIP source models; () when only log meters were unpriced

    def __bool__(self) -> bool:
        return self.tokens > 0 or self.requests > 0


def models(session: Session, subject_ids: Iterable[int] | None, start: datetime,
           end: datetime) -> list[str]:
    """Source models of the AIP meters (of these subjects; None = all) with unpriced usage."""
    q = (select(Profile.model_id).distinct()
         .join(Meter, (Meter.key == Profile.profile_id) & (Meter.kind == "profile"))
         .join(Usage, Usage.meter_id == Meter.id)
         .where(Usage.hour >= start, Usage.hour < end, Usage.unpriced_tokens + Usage.unpriced_requests > 0))
    if subject_ids is not None:
        q = q.where(Meter.subject_id.in_(list(subject_ids)))
    return sorted(session.scalars(q))


def summary(session: Session, start: datetime, end: datetime) -> UnpricedSummary:
    """Every meter's unpriced usage over [start, end) (the digest's day), from whole UTC days
    of the rollup and hour edges (`ledger.spans`): a local day is ~3 rows a meter, not 24."""
    selects = [ledger.span_select(p, lambda m: [m.unpriced_tokens.expression, m.unpriced_requests.expression])
               for p in ledger.spans(start, end)]
    if not selects:
        return UnpricedSummary(0, 0, ())
    rows = (union_all(*selects) if len(selects) > 1 else selects[0]).subquery()
    tokens, requests = session.execute(
        select(func.coalesce(func.sum(rows.c.v0), 0), func.coalesce(func.sum(rows.c.v1), 0))).one()
    found = models(session, None, start, end) if tokens or requests else []
    return UnpricedSummary(int(tokens), int(requests), tuple(found))
