"""A profile created today is read even before ListMetrics lists it (it can lag 15 minutes)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import select

from bot.aws.metrics import HourlyUsage
from bot.aws.profiles import LocalProfiles
from bot.clock import FixedClock
from bot.db import Database
from bot.flows.usage_sync import sync_usage
from bot.models import Usage
from bot.pricing import PriceTable
from bot.services.directory import Actor, SubjectRef
from tests.aips import provision_aip


class UnlistedMetrics:
    """CloudWatch whose ListMetrics has not caught up yet: nothing is 'recently active'."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.metrics_requested = 0
        self.asked: list[set[str]] = []
        self.metrics: list[set[str]] = []

    def active_model_ids(self, recently_active: bool = True) -> dict[str, frozenset[str]]:
        self.calls["ListMetrics"] += 1
        return {}

    def hourly(self, wanted: Mapping[str, Iterable[str]], start: datetime,
               end: datetime) -> list[HourlyUsage]:
        self.calls["GetMetricData"] += 1
        self.metrics_requested += sum(len(set(names)) for names in wanted.values())
        self.asked.append(set(wanted))
        self.metrics.append({name for names in wanted.values() for name in names})
        hour = end.replace(minute=0, second=0, microsecond=0)
        return [HourlyUsage(pid, hour, input_tokens=500, output_tokens=50, invocations=2) for pid in wanted]


def test_new_profile_is_read_before_list_metrics_lists_it(db: Database, clock: FixedClock) -> None:
    backend = LocalProfiles(db, "us-east-1", "123456789012", clock)
    metrics, prices = UnlistedMetrics(), PriceTable.load()
    p = provision_aip(db, clock, backend, "us-east-1", Actor.system("test"), SubjectRef(name="alice"),
                      "anthropic.claude-3-haiku-20240307-v1:0")
    sync_usage(db, clock, metrics, backend, prices)  # first sight: the backfill
    clock.advance(minutes=5)
    sync_usage(db, clock, metrics, backend, prices)
    assert metrics.asked[-1] == {p.profile_id}
    # `tokens` counts cache tokens: a new profile is read with the cache metrics too.
    assert metrics.metrics[-1] == {"InputTokenCount", "OutputTokenCount", "Invocations",
                                   "CacheReadInputTokenCount", "CacheWriteInputTokenCount"}
    clock.advance(days=2)  # no longer new: only what ListMetrics lists is read
    sync_usage(db, clock, metrics, backend, prices)
    assert len(metrics.asked) == 2  # nothing listed, nothing new: no GetMetricData at all
    with db.session_scope() as s:
        assert s.scalars(select(Usage.input_tokens)).all() == [500]
