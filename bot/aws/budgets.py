"""AWS Budgets that back up a $ limit (DESIGN §4 "Alarms/budgets for limits").

One COST budget per limit, named ``bedrock-bot-limit-<limit id>`` (`parse_budget_name` maps a
notification back), filtered by the cost-allocation tags the subject's AIPs carry, and notifying
the bot's topic at each warning threshold and at 100% of actual spend, plus 100% of forecast.

What AWS Budgets can express:

- Periods are DAILY, MONTHLY, QUARTERLY, ANNUALLY (or a fixed CUSTOM range), in UTC. So a ``day``
  limit gets a DAILY budget and a ``month`` limit a MONTHLY one; ``week`` and the rolling windows
  (``24h``, ``7d``, ``30d``) get none. The budget's day and month are UTC's: with another
  ``BOT_TIMEZONE`` they are offset from the bot's own calendar windows.
- Tag filters use the legacy ``CostFilters`` form ``{"TagKeyValue": ["user:<key>$<value>"]}``;
  ``user:`` marks a user-defined cost-allocation tag (AWS-generated ones start ``aws:``), and the
  values of one filter are OR-ed. A ``Service`` filter (AND-ed with the tags) keeps the budget
  to Bedrock: ``Amazon Bedrock``, plus the Marketplace service name of each third-party model
  the subject's AIPs use (``Claude Sonnet 4.5 (Amazon Bedrock Edition)``: such models bill
  under their own service name, see docs/billing.md). Without it any cost carrying a generic
  ``user``/``team`` tag (an EC2 instance) counted against a Bedrock limit. The ``user`` /
  ``team`` tags must be *activated* as cost-allocation tags in the Billing console, or the
  budget sees nothing.
- A budget holds at most 5 notifications, each with one SNS subscriber. FORECASTED notifications
  are not available on DAILY budgets. 100% ACTUAL is always kept, then 100% FORECASTED (monthly),
  then the highest warning thresholds that still fit; the others are left to the bot (noted).
- Cost data reaches Budgets several times a day (hours behind), so a budget is a slow backstop.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.clients import aws_error, call
from bot.quantities import MICRO

PREFIX = "bedrock-bot-limit-"
MANAGED_BY_KEY, MANAGED_BY_VALUE = "managed-by", "bedrock-bot"
LIMIT_ID_KEY = "limit-id"
USER_TAG_PREFIX = "user:"  # user-defined cost-allocation tags, as Budgets' TagKeyValue wants them
BEDROCK_SERVICE = "Amazon Bedrock"  # the SERVICE name Cost Explorer and Budgets use
MAX_NOTIFICATIONS = 5
TIME_UNITS: dict[str, str] = {"day": "DAILY", "month": "MONTHLY"}
# Costs the bot counts are list prices: credits and refunds would hide usage from the budget.
COST_TYPES: dict[str, bool] = {"IncludeCredit": False, "IncludeRefund": False}

_NAME_RE = re.compile(r"bedrock-bot-limit-([1-9][0-9]{0,17})", re.ASCII)

T = TypeVar("T")


# ---------------------------------------------------------------- names


def budget_name(limit_id: int) -> str:
    if limit_id < 1:
        raise ValueError("limit_id must be >= 1")
    return f"{PREFIX}{limit_id}"


def parse_budget_name(name: str) -> int | None:
    m = _NAME_RE.fullmatch(name)
    return int(m[1]) if m else None


# ---------------------------------------------------------------- specs (pure)


def budget_time_unit(window: str) -> str | None:
    """DAILY / MONTHLY for the calendar day and month; None where Budgets has no such period."""
    return TIME_UNITS.get(window)


def usd(amount_micro_usd: int) -> str:
    """Micro-dollars as the exact decimal string Budgets takes: 200000000 -> "200", 1500000 -> "1.5"."""
    if amount_micro_usd < 1:
        raise ValueError("amount must be >= 1 micro-dollar")
    return f"{(Decimal(amount_micro_usd) / MICRO).normalize():f}"


def tag_filter(pairs: Iterable[tuple[str, str]]) -> list[str]:
    """``user:<key>$<value>`` for each (tag key, tag value), sorted and de-duplicated."""
    return sorted({f"{USER_TAG_PREFIX}{key}${value}" for key, value in pairs})


def service_filter(services: Iterable[str] = ()) -> list[str]:
    """``Amazon Bedrock`` and the given (Marketplace model) service names, sorted, de-duplicated."""
    return sorted({BEDROCK_SERVICE, *(s for s in services if s)})


def _notification(kind: str, threshold: int, topic_arn: str) -> dict[str, Any]:
    return {
        "Notification": {"NotificationType": kind, "ComparisonOperator": "GREATER_THAN",
                         "Threshold": float(threshold), "ThresholdType": "PERCENTAGE"},
        "Subscribers": [{"SubscriptionType": "SNS", "Address": topic_arn}],
    }


def plan_notifications(warn: Sequence[int], time_unit: str,
                       topic_arn: str) -> tuple[list[dict[str, Any]], list[int]]:
    """(notifications, warning thresholds left out because a budget holds only five)."""
    fixed = [_notification("ACTUAL", 100, topic_arn)]
    if time_unit != "DAILY":  # Budgets offers no forecast on daily budgets
        fixed.append(_notification("FORECASTED", 100, topic_arn))
    thresholds = sorted({int(w) for w in warn if 0 < int(w) < 100})
    cut = max(0, len(thresholds) - (MAX_NOTIFICATIONS - len(fixed)))  # keep the highest ones
    kept, dropped = thresholds[cut:], thresholds[:cut]
    out = [_notification("ACTUAL", w, topic_arn) for w in kept] + fixed
    return out, dropped


def build_budget(account_id: str, limit_id: int, subject_kind: str, subject_name: str,
                 amount_micro_usd: int, window: str, warn: Sequence[int], topic_arn: str, *,
                 tags: Sequence[tuple[str, str]] | None = None,
                 services: Iterable[str] = ()) -> dict[str, Any]:
    """CreateBudget keyword arguments. `tags` are the (key, value) cost-allocation tags to count
    (default: the subject's own ``<kind>=<name>``), `services` extra Bedrock service names (see
    `service_filter`). Raises ValueError when the window has no Budgets period (use
    `plan_budget`, which says why instead)."""
    time_unit = budget_time_unit(window)
    if time_unit is None:
        raise ValueError(f"no AWS Budgets period for window {window!r}")
    if subject_kind not in ("user", "team"):
        raise ValueError(f"unknown subject kind {subject_kind!r}")
    notifications, _ = plan_notifications(warn, time_unit, topic_arn)
    return {
        "AccountId": account_id,
        "Budget": {
            "BudgetName": budget_name(limit_id),
            "BudgetLimit": {"Amount": usd(amount_micro_usd), "Unit": "USD"},
            "CostFilters": {"TagKeyValue": tag_filter(tags or [(subject_kind, subject_name)]),
                            "Service": service_filter(services)},
            "CostTypes": dict(COST_TYPES),
            "TimeUnit": time_unit,
            "BudgetType": "COST",
        },
        "NotificationsWithSubscribers": notifications,
        "ResourceTags": [{"Key": MANAGED_BY_KEY, "Value": MANAGED_BY_VALUE},
                         {"Key": LIMIT_ID_KEY, "Value": str(limit_id)}],
    }


def plan_budget(account_id: str, limit_id: int, subject_kind: str, subject_name: str,
                amount_micro_usd: int, window: str, warn: Sequence[int], topic_arn: str, *,
                tags: Sequence[tuple[str, str]] | None = None,
                services: Iterable[str] = ()) -> tuple[dict[str, Any] | None, list[str]]:
    """The budget spec for a $ limit (or None) and notes on what it leaves to the bot."""
    time_unit = budget_time_unit(window)
    if time_unit is None:
        kind = "rolling" if window in ("24h", "7d", "30d") else "calendar"
        return None, [f"no AWS Budget: Budgets has no {kind} {window} period (only daily, monthly, "
                      "quarterly, yearly); the bot's own evaluation enforces this limit"]
    spec = build_budget(account_id, limit_id, subject_kind, subject_name, amount_micro_usd, window,
                        warn, topic_arn, tags=tags, services=services)
    _, dropped = plan_notifications(warn, time_unit, topic_arn)
    notes = []
    if dropped:
        shown = ", ".join(f"{w}%" for w in dropped)
        notes.append(f"AWS Budget warns at fewer thresholds (a budget holds {MAX_NOTIFICATIONS} "
                     f"notifications): {shown} come from the bot only")
    return spec, notes


# ---------------------------------------------------------------- adapter


def _notification_key(n: dict[str, Any]) -> tuple[str, str, float, str]:
    return (str(n["NotificationType"]), str(n["ComparisonOperator"]), float(n["Threshold"]),
            str(n.get("ThresholdType") or "PERCENTAGE"))


class Budgets:
    """CreateBudget / UpdateBudget / DeleteBudget and notifications for the bot's own budgets."""

    def __init__(self, budgets_client: Any, account_id: str) -> None:
        self._b = budgets_client
        self.account_id = account_id

    def put(self, spec: dict[str, Any]) -> str:
        """Create the budget, or make an existing one match `spec`: "created", "updated" or
        "unchanged". An update rewrites the budget only when it differs, and replaces only the
        notifications that differ (so one that already fired is not re-armed for nothing)."""
        budget = spec["Budget"]
        name = budget["BudgetName"]
        try:
            self._b.create_budget(**spec)
            return "created"
        except ClientError as exc:
            if _code(exc) != "DuplicateRecordException":
                raise aws_error("CreateBudget", exc) from exc
        except BotoCoreError as exc:
            raise aws_error("CreateBudget", exc) from exc
        changed = False
        current = call("DescribeBudget", self._b.describe_budget, AccountId=self.account_id,
                             BudgetName=name)["Budget"]
        if not _same_budget(current, budget):
            call("UpdateBudget", self._b.update_budget, AccountId=self.account_id,
                       NewBudget=budget)
            changed = True
        if self._sync_notifications(name, spec.get("NotificationsWithSubscribers", [])):
            changed = True
        return "updated" if changed else "unchanged"

    def delete(self, name: str) -> bool:
        """Delete the budget (its notifications go with it); False when there was none."""
        try:
            self._b.delete_budget(AccountId=self.account_id, BudgetName=name)
            return True
        except ClientError as exc:
            if _code(exc) == "NotFoundException":
                return False
            raise aws_error("DeleteBudget", exc) from exc
        except BotoCoreError as exc:
            raise aws_error("DeleteBudget", exc) from exc

    def list_ours(self, prefix: str = PREFIX) -> list[str]:
        """Names of the account's budgets starting with `prefix` that `parse_budget_name` accepts."""
        request: dict[str, Any] = {"AccountId": self.account_id}
        found: list[str] = []
        while True:
            page: dict[str, Any] = call("DescribeBudgets", self._b.describe_budgets, **request)
            found.extend(b["BudgetName"] for b in page.get("Budgets", [])
                         if b.get("BudgetName", "").startswith(prefix)
                         and parse_budget_name(b["BudgetName"]) is not None)
            token = page.get("NextToken")
            if not token:
                return sorted(found)
            request = {**request, "NextToken": token}

    def _sync_notifications(self, name: str, wanted: Sequence[dict[str, Any]]) -> bool:
        want = {_notification_key(w["Notification"]): w for w in wanted}
        have: list[dict[str, Any]] = []
        request: dict[str, Any] = {"AccountId": self.account_id, "BudgetName": name}
        while True:
            page: dict[str, Any] = call("DescribeNotificationsForBudget",
                                              self._b.describe_notifications_for_budget, **request)
            have.extend(page.get("Notifications", []))
            token = page.get("NextToken")
            if not token:
                break
            request = {**request, "NextToken": token}
        changed = False
        for notification in have:
            key = _notification_key(notification)
            target = want.get(key)
            if target is not None and self._subscribers(name, notification) == _subscriber_set(
                    target["Subscribers"]):
                want.pop(key)  # already right: keep it (and its state)
                continue
            plain = {k: notification[k] for k in ("NotificationType", "ComparisonOperator", "Threshold",
                                                  "ThresholdType") if k in notification}
            call("DeleteNotification", self._b.delete_notification, AccountId=self.account_id,
                       BudgetName=name, Notification=plain)
            changed = True
        for w in want.values():
            call("CreateNotification", self._b.create_notification, AccountId=self.account_id,
                       BudgetName=name, Notification=w["Notification"], Subscribers=w["Subscribers"])
            changed = True
        return changed

    def _subscribers(self, name: str, notification: dict[str, Any]) -> set[tuple[str, str]]:
        plain = {k: notification[k] for k in ("NotificationType", "ComparisonOperator", "Threshold",
                                              "ThresholdType") if k in notification}
        found: list[dict[str, Any]] = []
        request: dict[str, Any] = {"AccountId": self.account_id, "BudgetName": name, "Notification": plain}
        while True:
            page: dict[str, Any] = call("DescribeSubscribersForNotification",
                                              self._b.describe_subscribers_for_notification, **request)
            found.extend(page.get("Subscribers", []))
            token = page.get("NextToken")
            if not token:
                return _subscriber_set(found)
            request = {**request, "NextToken": token}



def _subscriber_set(subscribers: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(str(s["SubscriptionType"]), str(s["Address"])) for s in subscribers}


def _same_budget(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Does the budget AWS has match the one wanted, in every field the bot sets?"""
    cur_limit, want_limit = current.get("BudgetLimit") or {}, wanted["BudgetLimit"]
    try:
        same_amount = Decimal(str(cur_limit.get("Amount"))) == Decimal(want_limit["Amount"])
    except ArithmeticError:
        same_amount = False
    cur_types = current.get("CostTypes") or {}
    return (same_amount and cur_limit.get("Unit") == want_limit["Unit"]
            and current.get("TimeUnit") == wanted["TimeUnit"]
            and current.get("BudgetType") == wanted["BudgetType"]
            and _filters(current.get("CostFilters")) == _filters(wanted.get("CostFilters"))
            and all(cur_types.get(k) == v for k, v in (wanted.get("CostTypes") or {}).items()))


def _filters(filters: dict[str, Any] | None) -> dict[str, list[str]]:
    return {k: sorted(v) for k, v in (filters or {}).items() if v}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
