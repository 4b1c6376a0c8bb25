"""Cost Explorer `GetCostAndUsage`: AWS's billed Bedrock cost per day and tag value.

One DAILY query per tag key, `UnblendedCost`, grouped by SERVICE and the tag. Bedrock's cost is
the ``Amazon Bedrock`` service plus each Marketplace model's own service
(``Claude Sonnet 4.5 (Amazon Bedrock Edition)``), so the filter is SERVICE = Amazon Bedrock OR
BILLING_ENTITY = AWS Marketplace, and the groups are kept by service name. A tag group key is
``<key>$<value>``; ``<key>$`` collects the cost without that tag. Days are UTC, `End` exclusive.
Results are paginated (`NextPageToken`). Each request costs $0.01 (docs/billing.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.aws.budgets import BEDROCK_SERVICE
from bot.aws.clients import call
from bot.quantities import MICRO

EDITION_SUFFIX = "(Amazon Bedrock Edition)"
METRIC = "UnblendedCost"
MAX_PAGES = 50


def is_bedrock_service(service: str) -> bool:
    return service == BEDROCK_SERVICE or service.endswith(EDITION_SUFFIX)


@dataclass
class DailyCosts:
    """micro-USD per (UTC day, tag value); "" is the cost without the tag."""

    key: str
    by_value: dict[tuple[date, str], int] = field(default_factory=dict)
    estimated_days: set[date] = field(default_factory=set)  # AWS still marks them Estimated
    services: set[str] = field(default_factory=set)

    def total(self, day: date) -> int:
        return sum(v for (d, _), v in self.by_value.items() if d == day)

    def tagged_values(self) -> set[str]:
        return {value for (_, value), v in self.by_value.items() if value and v}


def request(start: date, end: date, tag_key: str) -> dict[str, Any]:
    return {
        "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
        "Granularity": "DAILY",
        "Metrics": [METRIC],
        "Filter": {"Or": [
            {"Dimensions": {"Key": "SERVICE", "Values": [BEDROCK_SERVICE]}},
            {"Dimensions": {"Key": "BILLING_ENTITY", "Values": ["AWS Marketplace"]}},
        ]},
        "GroupBy": [{"Type": "DIMENSION", "Key": "SERVICE"}, {"Type": "TAG", "Key": tag_key}],
    }


def parse_results(pages: Iterable[dict[str, Any]], tag_key: str) -> DailyCosts:
    """The Bedrock groups of GetCostAndUsage pages (pure). Malformed groups are skipped."""
    out = DailyCosts(tag_key)
    sums: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    prefix = f"{tag_key}$"
    for page in pages:
        for result in _list(page.get("ResultsByTime") if isinstance(page, dict) else None):
            try:
                day = date.fromisoformat(str(result["TimePeriod"]["Start"])[:10])
            except (KeyError, TypeError, ValueError):
                continue
            if result.get("Estimated") is True:
                out.estimated_days.add(day)
            for group in _list(result.get("Groups")):
                keys = group.get("Keys")
                if not isinstance(keys, list) or len(keys) != 2 or not is_bedrock_service(str(keys[0])):
                    continue
                value = str(keys[1])
                value = value[len(prefix):] if value.startswith(prefix) else value
                amount = _amount(group)
                if amount is None:
                    continue
                sums[(day, value)] += amount
                out.services.add(str(keys[0]))
    out.by_value = {k: int((v * MICRO).to_integral_value()) for k, v in sums.items()}
    return out


def _list(value: Any) -> list[dict[str, Any]]:
    """The dicts of a JSON list; anything else is empty (a malformed page reads as no data)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _amount(group: dict[str, Any]) -> Decimal | None:
    try:
        metric = group["Metrics"][METRIC]
        if metric.get("Unit", "USD") != "USD":
            return None
        value = Decimal(str(metric["Amount"]))
    except (KeyError, TypeError, AttributeError, InvalidOperation):
        return None
    return value if value.is_finite() else None


class CostExplorer:
    def __init__(self, ce_client: Any) -> None:
        self._c = ce_client
        self.calls = 0

    def daily_bedrock_costs(self, start: date, end: date, tag_key: str) -> DailyCosts:
        req = request(start, end, tag_key)
        pages = []
        for _ in range(MAX_PAGES):
            self.calls += 1
            page: dict[str, Any] = call("GetCostAndUsage", self._c.get_cost_and_usage, **req)
            pages.append(page)
            token = page.get("NextPageToken")
            if not token:
                break
            req = {**req, "NextPageToken": token}
        return parse_results(pages, tag_key)
