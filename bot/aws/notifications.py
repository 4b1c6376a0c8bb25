"""What arrives in an SNS `Message`: CloudWatch alarm state changes (JSON) and AWS Budgets alerts (text).

Pure functions; anything they do not recognise raises `UnrecognisedMessage` (and nothing else).

CloudWatch: the classic alarm notification (`AlarmName`, `NewStateValue`, `Trigger` ...) for
single-metric alarms (`Trigger.MetricName/Namespace/Dimensions`, dimension keys `name`/`value` or
`Name`/`Value`), metric-math alarms (`Trigger.Metrics`) and composite alarms (no `Trigger`). Both
`TreatMissingData` forms ("missing" and the legacy "- TreatMissingData:   missing") are normalised.
`region` is the region code from `AlarmArn` when it has one, else the message's `Region` display name.

AWS Budgets: the plain-text notification. Periods are read from the wording AWS uses: "... for the
current month." (monthly) and "... per day. Yesterday, ..." (daily); "for the current quarter/year" and
"per quarter/year" are mapped too. The labelled lines (Budget Name, Budgeted Amount, Alert Type, Alert
Threshold, ACTUAL/FORECASTED Amount) win over the sentence, which is the fallback.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

ALARM_STATES = frozenset({"ALARM", "OK", "INSUFFICIENT_DATA"})
BUDGET_KINDS = frozenset({"ACTUAL", "FORECASTED"})
_PERIODS = {"day": "daily", "month": "monthly", "quarter": "quarterly", "year": "annually"}
_CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY"}


class UnrecognisedMessage(ValueError):
    """Neither a CloudWatch alarm state change nor an AWS Budgets notification."""


@dataclass(frozen=True)
class AlarmEvent:
    name: str
    description: str | None
    state: str  # ALARM | OK | INSUFFICIENT_DATA
    old_state: str | None
    reason: str
    changed_at: datetime | None  # aware, UTC
    region: str | None
    account_id: str | None
    alarm_arn: str | None
    metric: str | None  # "AWS/Bedrock InputTokenCount", "metric math: m1+m2", None for composite alarms
    threshold: float | None
    comparison: str | None  # GreaterThanThreshold ...
    dimensions: dict[str, str] = field(default_factory=dict, hash=False)
    treat_missing_data: str | None = None  # missing | notBreaching | breaching | ignore


@dataclass(frozen=True)
class BudgetEvent:
    budget_name: str
    kind: str  # ACTUAL | FORECASTED
    period: str | None  # daily | monthly | quarterly | annually
    budgeted: Decimal | None
    amount: Decimal | None  # the actual or forecasted amount
    threshold: str | None  # "$0.16", "80%"
    account_id: str | None
    currency: str | None  # ISO code, from the amounts' symbol
    raw: str = field(repr=False)
    # The date in the heading ("AWS Budget Notification March 05, 2023"), and whether the alert
    # speaks of "Yesterday" (what daily alerts say): which window it reports on.
    notified_on: date | None = field(default=None, compare=False)
    about_yesterday: bool = field(default=False, compare=False)


# --- CloudWatch alarms ---------------------------------------------------------------------------

_ALARM_ARN = re.compile(
    r"arn:aws[a-z-]*:cloudwatch:(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}):(?P<account>[0-9]{12}):alarm:.+")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _dimensions(items: Any, into: dict[str, list[str]]) -> None:
    """Collect `[{"name": k, "value": v}]` (either key case) into `into`, keeping every distinct value."""
    if not isinstance(items, list):
        return
    for item in items:
        if not isinstance(item, dict):
            continue
        key = _text(item.get("name", item.get("Name")))
        value = item.get("value", item.get("Value"))
        if key is not None and isinstance(value, str):
            values = into.setdefault(key, [])
            if value not in values:
                values.append(value)


def _metric_name(metric: Any) -> str | None:
    if not isinstance(metric, dict):
        return None
    name, namespace = _text(metric.get("MetricName")), _text(metric.get("Namespace"))
    if name is None:
        return None
    return f"{namespace} {name}" if namespace else name


def _metric_and_dimensions(trigger: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    found: dict[str, list[str]] = {}
    metrics = trigger.get("Metrics")
    if isinstance(metrics, list) and metrics:
        queries = [m for m in metrics if isinstance(m, dict)]
        returned = [m for m in queries if m.get("ReturnData") is True] or queries[:1]
        metric: str | None = None
        if returned:
            expression = _text(returned[0].get("Expression"))
            stat = returned[0].get("MetricStat")
            if expression is not None:
                metric = f"metric math: {expression}"
            elif isinstance(stat, dict):
                metric = _metric_name(stat.get("Metric"))
        for query in queries:
            stat = query.get("MetricStat")
            if isinstance(stat, dict) and isinstance(stat.get("Metric"), dict):
                _dimensions(stat["Metric"].get("Dimensions"), found)
    else:
        metric = _metric_name(trigger)
        _dimensions(trigger.get("Dimensions"), found)
    return metric, {k: ",".join(v) for k, v in found.items()}


def _treat_missing(value: Any) -> str | None:
    text = _text(value)
    if text is None:
        return None
    return text.rsplit(":", 1)[-1].strip() or None  # legacy "- TreatMissingData:      missing"


def _json_object(message: str) -> dict[str, Any]:
    if not isinstance(message, str) or not message.lstrip().startswith("{"):
        raise UnrecognisedMessage("not a JSON object")
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise UnrecognisedMessage("not valid JSON") from None
    if not isinstance(data, dict):
        raise UnrecognisedMessage("not a JSON object")
    return data


def parse_alarm(message: str) -> AlarmEvent:
    """A CloudWatch alarm state-change notification (the JSON CloudWatch publishes to SNS)."""
    data = _json_object(message)
    name, state = _text(data.get("AlarmName")), data.get("NewStateValue")
    if name is None or not isinstance(state, str) or state not in ALARM_STATES:
        raise UnrecognisedMessage("not a CloudWatch alarm state change")
    arn = _text(data.get("AlarmArn"))
    arn_parts = _ALARM_ARN.fullmatch(arn) if arn else None
    trigger = data.get("Trigger")
    trigger = trigger if isinstance(trigger, dict) else {}
    metric, dimensions = _metric_and_dimensions(trigger)
    old_state = data.get("OldStateValue")
    return AlarmEvent(
        name=name,
        description=_text(data.get("AlarmDescription")),
        state=state,
        old_state=old_state if isinstance(old_state, str) and old_state in ALARM_STATES else None,
        reason=_text(data.get("NewStateReason")) or "",
        changed_at=_time(data.get("StateChangeTime")),
        region=arn_parts.group("region") if arn_parts else _text(data.get("Region")),
        account_id=_text(data.get("AWSAccountId")) or (arn_parts.group("account") if arn_parts else None),
        alarm_arn=arn,
        metric=metric,
        threshold=_number(trigger.get("Threshold")),
        comparison=_text(trigger.get("ComparisonOperator")),
        dimensions=dimensions,
        treat_missing_data=_treat_missing(trigger.get("TreatMissingData")),
    )


# --- AWS Budgets ---------------------------------------------------------------------------------

def _labelled(label: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*{label}[ \t]*:[ \t]*(?P<value>[^\r\n]*?)[ \t]*\r?$",
                      re.MULTILINE | re.IGNORECASE)


_BUDGET_NAME = _labelled("Budget Name")
_BUDGETED = _labelled("Budgeted Amount")
_ALERT_TYPE = _labelled("Alert Type")
_ALERT_THRESHOLD = _labelled("Alert Threshold")
_AMOUNT = _labelled("(?:ACTUAL|FORECASTED) Amount")
_ACCOUNT = re.compile(r"^[ \t]*AWS Account[ \t]+(?P<account>[0-9]{12})\b", re.MULTILINE)
_SENTENCE = re.compile(
    r"alert you when the (?P<kind>ACTUAL|FORECASTED) [A-Za-z ]{1,40}? associated with your "
    r"(?P<name>[^\r\n]{1,200}?) budget (?:is |will be )?(?:greater than|less than|equal to|exceeds?) "
    r"(?P<threshold>[^\s]{1,40}) "
    r"(?:for the current (?P<current>day|month|quarter|year)|per (?P<per>day|month|quarter|year))",
    re.IGNORECASE,
)
_CURRENT_AMOUNT = re.compile(
    r"the (?:ACTUAL|FORECASTED) [A-Za-z ]{1,40}? associated with this budget is "
    r"(?P<amount>[^\s]{1,40}?)\.?(?:\s|$)",
    re.IGNORECASE,
)
_MONEY = re.compile(r"(?P<symbol>[$€£¥])?[ \t]*(?P<number>-?[0-9][0-9,]*(?:\.[0-9]+)?|-?\.[0-9]+)"
                    r"(?:[ \t]*(?P<code>[A-Z]{3})\b)?")
_COMPARISON_PREFIX = re.compile(r"^(?:>=|<=|>|<|=)\s*")
_HEADING_DATE = re.compile(
    r"^[ \t]*AWS Budget Notification[ \t]+(?P<date>[A-Z][a-z]+ [0-9]{1,2}, [0-9]{4})[ \t]*\r?$",
    re.MULTILINE)
_YESTERDAY = re.compile(r"\bYesterday, the (?:ACTUAL|FORECASTED)\b", re.IGNORECASE)


def _heading_date(text: str) -> date | None:
    match = _HEADING_DATE.search(text)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group("date"), "%B %d, %Y").date()
    except ValueError:
        return None


def _field(pattern: re.Pattern[str], text: str) -> str | None:
    match = pattern.search(text)
    return (match.group("value").strip() or None) if match else None


def _money(text: str | None) -> tuple[Decimal | None, str | None]:
    if not text:
        return None, None
    match = _MONEY.search(text)
    if match is None:
        return None, None
    try:
        amount = Decimal(match.group("number").replace(",", ""))
    except InvalidOperation:
        return None, None
    if not amount.is_finite():
        return None, None
    currency = _CURRENCY_SYMBOLS.get(match.group("symbol") or "") or match.group("code")
    return amount, currency


def parse_budget(message: str) -> BudgetEvent:
    """An AWS Budgets threshold notification, ACTUAL or FORECASTED, as the plain text AWS sends to SNS."""
    if not isinstance(message, str):
        raise UnrecognisedMessage("not text")
    sentence = _SENTENCE.search(message)
    name = _field(_BUDGET_NAME, message) or (sentence.group("name").strip() if sentence else None)
    kind = (_field(_ALERT_TYPE, message) or (sentence.group("kind") if sentence else "")).upper()
    if not name or kind not in BUDGET_KINDS:
        raise UnrecognisedMessage("not an AWS Budgets notification")
    unit = (sentence.group("current") or sentence.group("per")).lower() if sentence else None
    yesterday = _YESTERDAY.search(message) is not None
    if unit is None and yesterday:
        unit = "day"
    threshold = _field(_ALERT_THRESHOLD, message) or (sentence.group("threshold") if sentence else None)
    if threshold:
        threshold = _COMPARISON_PREFIX.sub("", threshold).rstrip(".") or None
    amount_text = _field(_AMOUNT, message)
    if amount_text is None:
        current = _CURRENT_AMOUNT.search(message)
        amount_text = current.group("amount") if current else None
    budgeted, budget_currency = _money(_field(_BUDGETED, message))
    amount, amount_currency = _money(amount_text)
    account = _ACCOUNT.search(message)
    return BudgetEvent(
        budget_name=name,
        kind=kind,
        period=_PERIODS.get(unit) if unit else None,
        budgeted=budgeted,
        amount=amount,
        threshold=threshold,
        account_id=account.group("account") if account else None,
        currency=amount_currency or budget_currency,
        raw=message,
        notified_on=_heading_date(message),
        about_yesterday=yesterday,
    )


def parse_any(message: str) -> AlarmEvent | BudgetEvent:
    """A CloudWatch alarm if the message is one, else an AWS Budgets alert, else `UnrecognisedMessage`."""
    try:
        return parse_alarm(message)
    except UnrecognisedMessage:
        pass
    try:
        return parse_budget(message)
    except UnrecognisedMessage:
        raise UnrecognisedMessage("neither a CloudWatch alarm nor an AWS Budgets notification") from None
