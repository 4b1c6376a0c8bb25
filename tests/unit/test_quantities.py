"""Tests for bot.quantities: amounts, windows, formatting (pure functions, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.quantities import (
    MAX_MICRO_USD,
    MAX_TOKENS,
    MICRO,
    Amount,
    Metric,
    QuantityError,
    Window,
    format_amount,
    format_tokens,
    format_usd,
    format_window,
    next_window_start,
    parse_amount,
    parse_limit_spec,
    parse_metric,
    parse_percent_list,
    parse_window,
    window_bounds,
    window_label,
)

CALENDAR = [Window.DAY, Window.WEEK, Window.MONTH]
ROLLING = [Window.H24, Window.D7, Window.D30]
ZONES = [
    "UTC",
    "Europe/London",
    "America/New_York",
    "America/Santiago",
    "Asia/Beirut",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
]


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def tok(n: int) -> Amount:
    return Amount(n, False)


def usd(micro: int) -> Amount:
    return Amount(micro, True)


# --------------------------------------------------------------------------- parse_amount


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5M", tok(5_000_000)),
        ("5m", tok(5_000_000)),
        ("500k", tok(500_000)),
        ("500K", tok(500_000)),
        ("1.5B", tok(1_500_000_000)),
        ("1.5b", tok(1_500_000_000)),
        ("2500000", tok(2_500_000)),
        ("2,500,000", tok(2_500_000)),
        ("1.25M", tok(1_250_000)),
        ("0.5k", tok(500)),
        (".5k", tok(500)),
        ("1", tok(1)),
        ("1T", tok(10**12)),
        ("1000T", tok(MAX_TOKENS)),
        ("  5M  ", tok(5_000_000)),
        ("5 M", tok(5_000_000)),
        ("1.000k", tok(1000)),
        ("$200", usd(200 * MICRO)),
        ("$1,250.50", usd(1_250_500_000)),
        ("$0.5", usd(500_000)),
        ("$0.000001", usd(1)),
        ("$1.0000000", usd(MICRO)),  # extra zeros are still exact
        ("$ 200", usd(200 * MICRO)),
        ("$1.5k", usd(1500 * MICRO)),
        ("$1,000,000,000", usd(MAX_MICRO_USD)),
        ("\t$200\n", usd(200 * MICRO)),
    ],
)
def test_parse_amount_accepts(text: str, expected: Amount) -> None:
    assert parse_amount(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no amount"),
        ("   ", "no amount"),
        ("5X", "use 5M, 500k, 1.5B, 2500000 or $200"),
        ("abc", "not an amount"),
        ("0", "more than zero"),
        ("0k", "more than zero"),
        ("$0", "more than zero"),
        ("$0.00", "more than zero"),
        ("-5M", "more than zero"),
        ("-$5", "more than zero"),
        ("$-5", "more than zero"),
        ("nan", "not an amount"),
        ("NaN", "not an amount"),
        ("inf", "not an amount"),
        ("-inf", "not an amount"),
        ("1e6", "not an amount"),
        ("$0.0000001", "6 decimals"),
        ("$1.2345678", "6 decimals"),
        ("1.0000001k", "whole number"),
        ("1.5", "whole number"),
        ("0.0001k", "whole number"),
        ("1001T", "absurdly large"),
        ("10000000000000000", "absurdly large"),
        ("$1,000,000,001", "absurdly large"),
        ("$2B", "absurdly large"),
        ("1,5M", "commas only separate thousands"),
        ("25,00", "commas only separate thousands"),
        ("5.", "not an amount"),
        ("5..0", "not an amount"),
        ("$", "not an amount"),
        ("k", "not an amount"),
        ("5MM", "not an amount"),
        ("5Q", "not an amount"),
        ("200$", "not an amount"),
        ("$$200", "not an amount"),
        ("--5", "not an amount"),
        ("\uff11\uff12", "not an amount"),  # full-width digits
        ("\u0665M", "not an amount"),  # Arabic-Indic five
        ("5M/week", "not an amount"),
        ("9" * 200, "not an amount"),
    ],
)
def test_parse_amount_refuses(text: str, reason: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_amount(text)
    message = str(info.value)
    assert reason in message
    assert "\n" not in message
    assert isinstance(info.value, ValueError)


def test_amount_error_message_matches_brief() -> None:
    with pytest.raises(QuantityError) as info:
        parse_amount("5X")
    assert str(info.value) == "'5X' is not an amount: use 5M, 500k, 1.5B, 2500000 or $200"


def test_error_echo_is_one_line_and_bounded() -> None:
    with pytest.raises(QuantityError) as info:
        parse_amount("5\nX" + "y" * 50)
    message = str(info.value)
    assert "\n" not in message
    assert len(message) < 120


# --------------------------------------------------------------------------- format_amount


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (tok(5_000_000), "5M"),
        (tok(1_500_000_000), "1.5B"),
        (tok(2_500), "2.5k"),
        (tok(1_000), "1k"),
        (tok(1_234), "1234"),
        (tok(1_200), "1.2k"),
        (tok(1_234_567), "1234567"),
        (tok(1_234_000), "1.234M"),
        (tok(999), "999"),
        (tok(1), "1"),
        (tok(10**12), "1T"),
        (tok(MAX_TOKENS), "1000T"),
        (usd(200 * MICRO), "$200"),
        (usd(1_250_500_000), "$1,250.50"),
        (usd(1), "$0.000001"),
        (usd(500_000), "$0.50"),
        (usd(1_234_500), "$1.2345"),
        (usd(MAX_MICRO_USD), "$1,000,000,000"),
    ],
)
def test_format_amount(amount: Amount, text: str) -> None:
    assert format_amount(amount) == text
    assert str(amount) == text
    assert parse_amount(text) == amount


# Values built as mantissa * 10**e exercise the suffix forms; plain integers the rest.
_token_values = st.one_of(
    st.integers(1, MAX_TOKENS),
    st.builds(lambda m, e: m * 10**e, st.integers(1, 999_999), st.integers(0, 12)).filter(
        lambda v: v <= MAX_TOKENS
    ),
)
_micro_values = st.one_of(
    st.integers(1, MAX_MICRO_USD),
    st.builds(lambda m, e: m * 10**e, st.integers(1, 9_999), st.integers(0, 11)).filter(
        lambda v: v <= MAX_MICRO_USD
    ),
)


@given(_token_values)
def test_token_amount_round_trips(value: int) -> None:
    amount = tok(value)
    text = format_amount(amount)
    assert parse_amount(text) == amount
    assert len(text) <= len(str(value))  # never longer than the plain digits


@given(_micro_values)
def test_cost_amount_round_trips(value: int) -> None:
    amount = usd(value)
    assert parse_amount(format_amount(amount)) == amount


@given(st.one_of(_token_values.map(tok), _micro_values.map(usd)), st.sampled_from(list(Window)))
def test_limit_spec_round_trips(amount: Amount, window: Window) -> None:
    text = f"{format_amount(amount)}/{format_window(window)}"
    assert parse_limit_spec(text) == (amount, window)


# --------------------------------------------------------------------------- display numbers


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (1, "1"),
        (999, "999"),
        (1_000, "1k"),
        (1_234, "1.2k"),
        (1_250, "1.3k"),  # half up
        (12_345, "12.3k"),
        (123_456, "123k"),
        (999_499, "999k"),
        (999_950, "1M"),  # rounds into the next unit, not "1000k"
        (5_000_000, "5M"),
        (1_560_000, "1.56M"),
        (1_234_567, "1.23M"),
        (12_345_678, "12.3M"),
        (999_999_999, "1B"),
        (2_500_000_000, "2.5B"),
        (10**12, "1T"),
        (10**15 - 1, "1000T"),
        (-1_234, "-1.2k"),
    ],
)
def test_format_tokens(n: int, text: str) -> None:
    assert format_tokens(n) == text


@given(st.integers(0, 10**15 - 1))
def test_format_tokens_is_short_and_close(n: int) -> None:
    text = format_tokens(n)
    assert len(text) <= 6
    # Reading the display back is within 5% (one decimal of k at worst: 1049 -> "1k").
    shown = parse_amount(text).value if n else 0
    assert abs(shown - n) <= 0.05 * n


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (0, "$0.00"),
        (1, "<$0.01"),
        (9_999, "<$0.01"),
        (10_000, "$0.01"),
        (12_340_000, "$12.34"),
        (12_345_000, "$12.35"),  # half up
        (12_344_999, "$12.34"),
        (1_250_500_000, "$1,250.50"),
        (999_995_000, "$1,000.00"),
        (-12_340_000, "-$12.34"),
    ],
)
def test_format_usd(micro: int, text: str) -> None:
    assert format_usd(micro) == text


@given(st.integers(-(10**18), 10**18))
def test_format_usd_never_raises(micro: int) -> None:
    assert "$" in format_usd(micro)


# --------------------------------------------------------------------------- windows: parsing


@pytest.mark.parametrize(
    ("text", "window"),
    [
        *((t, Window.DAY) for t in ["day", "daily", "d", "/d", "/day", "DAY", " Day ", "per day"]),
        *(
            (t, Window.WEEK)
            for t in ["week", "weekly", "wk", "/wk", "/w", "w", "WEEK", "Weekly", "per week"]
        ),
        *(
            (t, Window.MONTH)
            for t in ["month", "monthly", "mo", "/mo", "/m", "m", "Month", "/month"]
        ),
        *((t, Window.H24) for t in ["24h", "24H", "/24h", "24 h", "24hours"]),
        *((t, Window.D7) for t in ["7d", "7D", "/7d", "7 days", "7days"]),
        *((t, Window.D30) for t in ["30d", "/30d", "30 d", "30days"]),
    ],
)
def test_parse_window_accepts(text: str, window: Window) -> None:
    assert parse_window(text) == window


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1d", "ambiguous: use 'day' for the calendar day or '24h'"),
        ("1D", "ambiguous"),
        ("1day", "ambiguous"),
        ("1w", "ambiguous: use 'week' for the calendar week or '7d'"),
        ("1m", "ambiguous: use 'month' for the calendar month or '30d'"),
        ("1mo", "ambiguous"),
        ("fortnight", "use day, week, month (calendar) or 24h, 7d, 30d (rolling)"),
        ("hour", "not a window"),
        ("1h", "not a window"),
        ("14d", "not a window"),
        ("year", "not a window"),
        ("per", "not a window"),
        ("", "no window"),
        ("/", "no window"),
        ("week/day", "not a window"),
    ],
)
def test_parse_window_refuses(text: str, reason: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_window(text)
    assert reason in str(info.value)


@pytest.mark.parametrize("window", list(Window))
def test_format_window_round_trips(window: Window) -> None:
    assert format_window(window) == window.value
    assert parse_window(format_window(window)) is window


def test_window_properties() -> None:
    assert [w.rolling for w in Window] == [False, False, False, True, True, True]
    assert Window.DAY.length is None
    assert Window.WEEK.length is None
    assert Window.MONTH.length is None
    assert Window.H24.length == timedelta(hours=24)
    assert Window.D7.length == timedelta(days=7)
    assert Window.D30.length == timedelta(days=30)
    assert Window("24h") is Window.H24
    assert Metric("cost_usd") is Metric.COST
    assert [m.value for m in Metric] == [
        "tokens",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "requests",
    ]


# --------------------------------------------------------------------------- parse_limit_spec


@pytest.mark.parametrize(
    ("text", "amount", "window"),
    [
        ("5M/week", tok(5_000_000), Window.WEEK),
        ("$200/month", usd(200 * MICRO), Window.MONTH),
        ("1M/day", tok(1_000_000), Window.DAY),
        ("500k/24h", tok(500_000), Window.H24),
        ("5M/wk", tok(5_000_000), Window.WEEK),
        ("5M/w", tok(5_000_000), Window.WEEK),
        ("$1,250.50/30d", usd(1_250_500_000), Window.D30),
        ("5m/7d", tok(5_000_000), Window.D7),
        (" 5M / week ", tok(5_000_000), Window.WEEK),
        ("5M per week", tok(5_000_000), Window.WEEK),
        ("5M PER month", tok(5_000_000), Window.MONTH),
        ("5M weekly", tok(5_000_000), Window.WEEK),
        ("$200 monthly", usd(200 * MICRO), Window.MONTH),
        ("5M 24h", tok(5_000_000), Window.H24),
    ],
)
def test_parse_limit_spec_accepts(text: str, amount: Amount, window: Window) -> None:
    assert parse_limit_spec(text) == (amount, window)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no limit given"),
        ("5M", "'5M' has no window: write it as 5M/week"),
        ("$200", "has no window: write it as $200/week"),
        ("5 M", "has no window"),  # not "5 per month"
        ("5M fortnight", "is not a limit"),
        ("5M/", "no window"),
        ("/week", "no amount"),
        ("5X/week", "not an amount"),
        ("0/week", "more than zero"),
        ("5M/1d", "ambiguous"),
        ("5M/fortnight", "not a window"),
        ("5M/week/day", "not a window"),
        ("5M per", "is not a limit"),
    ],
)
def test_parse_limit_spec_refuses(text: str, reason: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_limit_spec(text)
    assert reason in str(info.value)


# --------------------------------------------------------------------------- window_bounds


def _hours(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 3600


def test_london_spring_forward_day_is_23_hours() -> None:
    london = ZoneInfo("Europe/London")
    start, end = window_bounds(Window.DAY, utc(2026, 3, 29, 12), london)
    assert (start, end) == (utc(2026, 3, 29, 0), utc(2026, 3, 29, 23))
    assert _hours(start, end) == 23


def test_london_fall_back_day_is_25_hours() -> None:
    london = ZoneInfo("Europe/London")
    start, end = window_bounds(Window.DAY, utc(2026, 10, 25, 12), london)
    assert (start, end) == (utc(2026, 10, 24, 23), utc(2026, 10, 26, 0))
    assert _hours(start, end) == 25


def test_new_york_week_across_fall_back() -> None:
    ny = ZoneInfo("America/New_York")
    at = utc(2026, 11, 1, 12)  # Sunday; DST ended at 02:00 local that morning
    # Monday weeks: Mon 2026-10-26 00:00 EDT .. Mon 2026-11-02 00:00 EST.
    start, end = window_bounds(Window.WEEK, at, ny, week_start=0)
    assert (start, end) == (utc(2026, 10, 26, 4), utc(2026, 11, 2, 5))
    assert end - start == timedelta(days=7, hours=1)
    # Sunday weeks start on the very day of the change.
    start, end = window_bounds(Window.WEEK, at, ny, week_start=6)
    assert (start, end) == (utc(2026, 11, 1, 4), utc(2026, 11, 8, 5))
    # The instant before the Monday-week boundary belongs to the earlier week.
    assert window_bounds(Window.WEEK, utc(2026, 11, 2, 4, 59), ny)[1] == utc(2026, 11, 2, 5)
    assert window_bounds(Window.WEEK, utc(2026, 11, 2, 5), ny)[0] == utc(2026, 11, 2, 5)


def test_santiago_midnight_that_does_not_exist() -> None:
    # 2026-09-06: clocks jump from 00:00 -04 to 01:00 -03; the day starts at the jump.
    santiago = ZoneInfo("America/Santiago")
    start, end = window_bounds(Window.DAY, utc(2026, 9, 6, 12), santiago)
    assert (start, end) == (utc(2026, 9, 6, 4), utc(2026, 9, 7, 3))
    assert start.astimezone(santiago).hour == 1
    assert window_bounds(Window.DAY, utc(2026, 9, 6, 3, 59), santiago)[1] == start


def test_santiago_repeated_hour_before_midnight() -> None:
    # 2026-04-05: at 00:00 -03 clocks go back to 23:00 -04 on the 4th: a 25-hour Saturday.
    santiago = ZoneInfo("America/Santiago")
    start, end = window_bounds(Window.DAY, utc(2026, 4, 4, 12), santiago)
    assert (start, end) == (utc(2026, 4, 4, 3), utc(2026, 4, 5, 4))


def test_beirut_midnight_gap_and_month() -> None:
    beirut = ZoneInfo("Asia/Beirut")
    # 2026-03-29: 00:00 +02 jumps to 01:00 +03.
    start, end = window_bounds(Window.DAY, utc(2026, 3, 29, 12), beirut)
    assert (start, end) == (utc(2026, 3, 28, 22), utc(2026, 3, 29, 21))
    month_start, month_end = window_bounds(Window.MONTH, utc(2026, 3, 15), beirut)
    assert (month_start, month_end) == (utc(2026, 2, 28, 22), utc(2026, 3, 31, 21))


def test_samoa_skipped_day_still_tiles() -> None:
    # Pacific/Apia skipped 2011-12-30 entirely: no window may be empty or overlap.
    apia = ZoneInfo("Pacific/Apia")
    before = window_bounds(Window.DAY, utc(2011, 12, 30, 9), apia)
    after = window_bounds(Window.DAY, before[1], apia)
    assert before[1] == after[0] == utc(2011, 12, 30, 10)
    assert after[0].astimezone(apia).date().isoformat() == "2011-12-31"


def test_month_bounds_in_utc_and_kolkata() -> None:
    assert window_bounds(Window.MONTH, utc(2026, 2, 14, 5), ZoneInfo("UTC")) == (
        utc(2026, 2, 1),
        utc(2026, 3, 1),
    )
    assert window_bounds(Window.MONTH, utc(2026, 12, 31, 20), ZoneInfo("UTC"))[1] == utc(2027, 1, 1)
    # 2026-12-31 20:00 UTC is already 2027-01-01 01:30 in Kolkata.
    assert window_bounds(Window.MONTH, utc(2026, 12, 31, 20), ZoneInfo("Asia/Kolkata")) == (
        utc(2026, 12, 31, 18, 30),
        utc(2027, 1, 31, 18, 30),
    )


def test_bounds_accept_any_aware_input_and_return_utc() -> None:
    tz = ZoneInfo("America/New_York")
    at_local = datetime(2026, 11, 28, 23, 30, tzinfo=tz)
    start, end = window_bounds(Window.DAY, at_local, tz)
    assert (start, end) == (utc(2026, 11, 28, 5), utc(2026, 11, 29, 5))  # local date wins
    assert start.tzinfo is UTC and end.tzinfo is UTC
    assert window_bounds(Window.DAY, at_local.astimezone(UTC), tz) == (start, end)


def test_rolling_windows_end_at_at() -> None:
    at = datetime(2026, 11, 28, 12, tzinfo=ZoneInfo("Europe/London"))
    for window in ROLLING:
        start, end = window_bounds(window, at, ZoneInfo("Asia/Kolkata"))
        assert end == at and end.tzinfo is UTC
        assert end - start == window.length
        assert next_window_start(window, at, ZoneInfo("UTC")) == at


def test_naive_datetime_is_refused() -> None:
    for window in Window:
        with pytest.raises(ValueError, match="timezone-aware"):
            window_bounds(window, datetime(2026, 1, 1), ZoneInfo("UTC"))
    with pytest.raises(ValueError, match="timezone-aware"):
        window_label(Window.DAY, datetime(2026, 1, 1), ZoneInfo("UTC"))


@pytest.mark.parametrize("week_start", [-1, 7])
def test_bad_week_start_is_refused(week_start: int) -> None:
    with pytest.raises(ValueError, match="week_start"):
        window_bounds(Window.WEEK, utc(2026, 1, 1), ZoneInfo("UTC"), week_start)


_instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=200, deadline=None)
@given(
    at=_instants,
    window=st.sampled_from(CALENDAR),
    zone=st.sampled_from(ZONES),
    week_start=st.integers(0, 6),
)
def test_calendar_windows_tile_time(
    at: datetime, window: Window, zone: str, week_start: int
) -> None:
    tz = ZoneInfo(zone)
    start, end = window_bounds(window, at, tz, week_start)
    assert start <= at < end
    assert start.tzinfo is UTC and end.tzinfo is UTC
    # No gap or overlap with the next and the previous window.
    assert window_bounds(window, end, tz, week_start)[0] == end
    assert window_bounds(window, start - timedelta(microseconds=1), tz, week_start)[1] == start
    assert window_bounds(window, start, tz, week_start) == (start, end)
    assert next_window_start(window, at, tz, week_start) == end
    # The window starts at the first instant of its local day (01:00 when midnight is skipped).
    local = start.astimezone(tz)
    assert local.hour <= 1 and local.minute in (0, 30) and local.second == 0
    if window is Window.WEEK:
        assert local.weekday() == week_start
    if window is Window.MONTH:
        assert local.day == 1
    hours = _hours(start, end)
    expected = {Window.DAY: (1, 1), Window.WEEK: (7, 7), Window.MONTH: (28, 31)}[window]
    assert expected[0] * 24 - 1 <= hours <= expected[1] * 24 + 1


# --------------------------------------------------------------------------- window_label


@pytest.mark.parametrize(
    ("window", "start", "label"),
    [
        (Window.DAY, utc(2026, 11, 28, 5), "2026-11-28"),
        (Window.WEEK, utc(2026, 11, 23, 5), "week of 2026-11-23"),
        (Window.MONTH, utc(2026, 11, 1, 4), "November 2026"),
        (Window.H24, utc(2026, 11, 1, 4), "last 24 hours"),
        (Window.D7, utc(2026, 11, 1, 4), "last 7 days"),
        (Window.D30, utc(2026, 11, 1, 4), "last 30 days"),
    ],
)
def test_window_label(window: Window, start: datetime, label: str) -> None:
    assert window_label(window, start, ZoneInfo("America/New_York")) == label


def test_window_label_uses_local_date() -> None:
    start, _ = window_bounds(Window.MONTH, utc(2026, 12, 31, 20), ZoneInfo("Asia/Kolkata"))
    assert start == utc(2026, 12, 31, 18, 30)
    assert window_label(Window.MONTH, start, ZoneInfo("Asia/Kolkata")) == "January 2027"


# --------------------------------------------------------------------------- percents, metrics


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80,90", [80, 90]),
        ("90,80", [80, 90]),
        ("80, 90", [80, 90]),
        ("80%,90%", [80, 90]),
        ("50", [50]),
        ("1,99", [1, 99]),
        ("80,80,90", [80, 90]),
        ("10,20,30,40,50", [10, 20, 30, 40, 50]),
        ("10,20,30,40,50,50", [10, 20, 30, 40, 50]),
        (" 75 ", [75]),
        ("off", []),
        ("none", []),
    ],
)
def test_parse_percent_list_accepts(text: str, expected: list[int]) -> None:
    assert parse_percent_list(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no thresholds"),
        ("0", "from 1 to 99"),
        ("100", "from 1 to 99"),
        ("-5", "not a threshold"),
        ("80.5", "not a threshold"),
        ("80,,90", "an empty entry"),
        ("80,", "an empty entry"),
        ("abc", "not a threshold"),
        ("\uff18\uff10", "not a threshold"),  # full-width digits
        ("10,20,30,40,50,60", "too many thresholds"),
    ],
)
def test_parse_percent_list_refuses(text: str, reason: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_percent_list(text)
    assert reason in str(info.value)


@given(st.lists(st.integers(1, 99), min_size=1, max_size=5))
def test_parse_percent_list_is_sorted_and_unique(values: list[int]) -> None:
    result = parse_percent_list(",".join(map(str, values)))
    assert result == sorted(set(values))


@pytest.mark.parametrize(
    ("text", "metric"),
    [
        ("tokens", Metric.TOKENS),
        ("input", Metric.INPUT),
        ("INPUT", Metric.INPUT),
        ("input_tokens", Metric.INPUT),
        ("output", Metric.OUTPUT),
        ("requests", Metric.REQUESTS),
        ("cost", Metric.COST),
        ("cost_usd", Metric.COST),
    ],
)
def test_parse_metric(text: str, metric: Metric) -> None:
    assert parse_metric(text) is metric


@pytest.mark.parametrize("text", ["", "bytes", "inputs!"])
def test_parse_metric_refuses(text: str) -> None:
    with pytest.raises(QuantityError, match="not a metric"):
        parse_metric(text)
