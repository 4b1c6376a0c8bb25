"""Which window an AWS Budgets alert is about (pure), on the real daily alert."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bot.aws.notifications import parse_budget
from bot.services.budget_window import is_current, reported_window

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"
DAILY = (VECTORS / "budgets-daily-actual.message.txt").read_text()
MONTHLY = (VECTORS / "budgets-actual.message.txt").read_text()  # "for the current month", Sep 26 2022


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type]


def test_the_real_daily_alert_is_about_the_day_before_its_heading() -> None:
    event = parse_budget(DAILY)
    assert event.notified_on == date(2023, 3, 5) and event.about_yesterday
    # delivered 2023-03-05T01:01:38Z (its SNS Timestamp)
    assert reported_window(event, at(2023, 3, 5, 1, 1)) == (at(2023, 3, 4), at(2023, 3, 5))


def test_a_late_daily_alert_is_not_the_current_day() -> None:
    event = parse_budget(DAILY)
    received = at(2023, 3, 5, 1, 1)
    assert not is_current(event, received, at(2023, 3, 5), at(2023, 3, 6))  # BOT_TIMEZONE=UTC
    assert is_current(event, received, at(2023, 3, 4), at(2023, 3, 5))  # the day it is about
    # America/Los_Angeles: at 01:01Z it is still March 4 locally; the windows overlap
    assert is_current(event, received, at(2023, 3, 4, 8), at(2023, 3, 5, 8))


def test_the_monthly_alert_is_about_its_month() -> None:
    event = parse_budget(MONTHLY)
    assert event.notified_on == date(2022, 9, 26) and not event.about_yesterday
    assert reported_window(event, at(2030, 1, 1)) == (at(2022, 9, 1), at(2022, 10, 1))
    assert is_current(event, at(2022, 9, 26, 12), at(2022, 9, 1), at(2022, 10, 1))
    assert not is_current(event, at(2022, 10, 1, 3), at(2022, 10, 1), at(2022, 11, 1))


def test_without_a_heading_the_delivery_date_stands_in() -> None:
    text = "\n".join(line for line in DAILY.splitlines() if "Budget Notification" not in line)
    event = parse_budget(text)
    assert event.notified_on is None
    assert reported_window(event, at(2023, 3, 9, 2)) == (at(2023, 3, 8), at(2023, 3, 9))


@pytest.mark.parametrize(("wording", "start", "end"), [
    ("for the current quarter", at(2022, 7, 1), at(2022, 10, 1)),
    ("for the current year", at(2022, 1, 1), at(2023, 1, 1)),
])
def test_quarters_and_years(wording: str, start: datetime, end: datetime) -> None:
    event = parse_budget(MONTHLY.replace("for the current month", wording))
    assert reported_window(event, at(2022, 9, 26)) == (start, end)


def test_an_unknown_period_is_taken_at_its_word() -> None:
    text = MONTHLY.replace(" for the current month", "")
    event = parse_budget(text)
    assert event.period is None and reported_window(event, at(2022, 9, 26)) is None
    assert is_current(event, at(2030, 1, 1), at(2030, 1, 1), at(2030, 1, 2))


def test_a_bad_heading_date_is_ignored() -> None:
    event = parse_budget(DAILY.replace("March 05, 2023", "Marchember 45, 2023"))
    assert event.notified_on is None
