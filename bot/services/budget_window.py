"""Which window an AWS Budgets alert reports on, and whether that is the limit's current one.

AWS Budgets' periods are UTC days, months, quarters and years. A daily alert says "Yesterday,
the ACTUAL Cost … is $X" and arrives after that day has ended (a real one: heading
"AWS Budget Notification March 05, 2023", SNS Timestamp 2023-03-05T01:01Z, about March 4), so
it reports on the UTC day before its heading's date. Other alerts report on the period that
contains that date. Without a heading the SNS Timestamp's UTC date stands in.

An alert whose window has ended before the limit's current window began is *stale*: it is
posted, never enforced (it must not revoke today for yesterday's spend; the bot's own count
enforces today). Where the windows overlap (a non-UTC BOT_TIMEZONE) it counts as current.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from bot.aws.notifications import BudgetEvent


def reported_window(event: BudgetEvent, received: datetime) -> tuple[datetime, datetime] | None:
    """The UTC [start, end) the alert is about; None when its period is unknown."""
    day = event.notified_on or received.astimezone(UTC).date()
    if event.about_yesterday:
        day -= timedelta(days=1)
    if event.period == "daily":
        start = _at(day)
        return start, start + timedelta(days=1)
    if event.period == "monthly":
        return _at(day.replace(day=1)), _at(_add_months(day.replace(day=1), 1))
    if event.period == "quarterly":
        first = day.replace(month=3 * ((day.month - 1) // 3) + 1, day=1)
        return _at(first), _at(_add_months(first, 3))
    if event.period == "annually":
        return _at(date(day.year, 1, 1)), _at(date(day.year + 1, 1, 1))
    return None


def is_current(event: BudgetEvent, received: datetime, window_start: datetime,
               window_end: datetime) -> bool:
    """Does the alert report on (a window overlapping) the limit's current [start, end)?"""
    reported = reported_window(event, received)
    if reported is None:
        return True  # cannot tell: the alert is taken at its word, as before
    return reported[1] > window_start and reported[0] < window_end


def _at(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return day.replace(year=day.year + month // 12, month=month % 12 + 1)
