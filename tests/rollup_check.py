"""The invariant every ledger writer keeps: `usage_daily` equals `usage` summed per UTC day."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.models import Usage, UsageDay
from bot.services.ledger import VALUE_COLS, floor_day


def hourly_by_day(s: Session) -> dict[tuple[int, datetime], tuple[int, ...]]:
    out: dict[tuple[int, datetime], list[int]] = {}
    for meter_id, hour, *v in s.execute(select(Usage.meter_id, Usage.hour,
                                               *(getattr(Usage, c) for c in VALUE_COLS))).tuples():
        acc = out.setdefault((meter_id, floor_day(hour)), [0] * len(VALUE_COLS))
        for i, x in enumerate(v):
            acc[i] += x
    return {k: tuple(v) for k, v in out.items() if any(v)}


def rollup(s: Session) -> dict[tuple[int, datetime], tuple[int, ...]]:
    q = select(UsageDay.meter_id, UsageDay.day, *(getattr(UsageDay, c) for c in VALUE_COLS))
    got = {(m, d): tuple(v) for m, d, *v in s.execute(q).tuples()}
    assert all(d == floor_day(d) for _m, d in got), "a day key that is not 00:00 UTC"
    return {k: v for k, v in got.items() if any(v)}


def assert_rollup_matches(s: Session) -> None:
    assert rollup(s) == hourly_by_day(s)
