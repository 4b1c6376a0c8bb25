"""Amounts, windows and number formatting: the vocabulary of `/bedrock limit 5M/week`.

Everything here is pure (no I/O, no database, no Slack) so that handlers, services,
jobs and renderers agree on one meaning of "5M", "$200", "week" and "24h".

Amounts are exact integers: token and request counts, or micro-dollars for costs
(1 USD = 1_000_000), so sums and comparisons never suffer from float rounding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum

__all__ = [
    "MAX_MICRO_USD",
    "MAX_TOKENS",
    "MICRO",
    "Amount",
    "Metric",
    "QuantityError",
    "Window",
    "format_amount",
    "format_duration",
    "format_tokens",
    "format_usd",
    "format_window",
    "next_window_start",
    "parse_amount",
    "parse_duration",
    "parse_limit_spec",
    "parse_metric",
    "parse_percent_list",
    "parse_window",
    "window_bounds",
    "window_label",
]

MICRO = 1_000_000
MAX_TOKENS = 10**15
MAX_MICRO_USD = 10**9 * MICRO


class QuantityError(ValueError):
    """Bad user input; str(error) is a one-line reason fit to show the user."""


class Metric(StrEnum):
    TOKENS = "tokens"  # input + output
    INPUT = "input_tokens"
    OUTPUT = "output_tokens"
    COST = "cost_usd"
    REQUESTS = "requests"


class Window(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    H24 = "24h"
    D7 = "7d"
    D30 = "30d"

    @property
    def rolling(self) -> bool:
        return self in _ROLLING_LENGTHS

    @property
    def length(self) -> timedelta | None:
        """Fixed length of a rolling window; None for calendar windows (their length varies)."""
        return _ROLLING_LENGTHS.get(self)


_ROLLING_LENGTHS: dict[Window, timedelta] = {
    Window.H24: timedelta(hours=24),
    Window.D7: timedelta(days=7),
    Window.D30: timedelta(days=30),
}


@dataclass(frozen=True)
class Amount:
    """A limit amount: a count of tokens/requests, or micro-dollars when `is_cost`."""

    value: int
    is_cost: bool

    def __str__(self) -> str:
        return format_amount(self)


# --------------------------------------------------------------------------- amounts

_AMOUNT_HELP = "use 5M, 500k, 1.5B, 2500000 or $200"
_MAX_INPUT = 64  # longer text is never a sensible amount; also bounds the big-int work

# re.ASCII: otherwise IGNORECASE lets the Kelvin sign (U+212A) pass as "k", and \s match
# exotic spaces; [0-9] (not \d) keeps out non-ASCII digits that int() would accept.
_AMOUNT_RE = re.compile(
    r"""
    (?P<neg1>-)?\s*
    (?P<dollar>\$)?\s*
    (?P<neg2>-)?\s*
    (?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)?
    (?:\.(?P<frac>[0-9]+))?
    \s*(?P<suffix>[kmbt])?
    """,
    re.VERBOSE | re.IGNORECASE | re.ASCII,
)
_SUFFIX_EXP = {"": 0, "k": 3, "m": 6, "b": 9, "t": 12}
# Largest first: format_amount picks the largest unit not above the value.
_SHORT_UNITS = (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3))


def _echo(text: str) -> str:
    """User text quoted in an error: one line, bounded length."""
    flat = " ".join(text.split())
    if len(flat) > 40:
        flat = flat[:37] + "..."
    return f"'{flat}'"


def parse_amount(text: str) -> Amount:
    """Parse "5M", "500k", "1.5B", "2,500,000", "$200", "$1,250.50" into an exact Amount.

    Suffixes k/M/B/T are powers of 1000, case-insensitive ("5m" is five million: nobody
    limits Bedrock to milli-tokens). They also scale dollars ("$1.5k" is $1,500). Commas
    are thousands separators only, so the European "1,5M" is refused rather than misread.
    """
    s = text.strip()
    if not s:
        raise QuantityError(f"no amount given: {_AMOUNT_HELP}")
    if len(s) > _MAX_INPUT:
        raise QuantityError(f"{_echo(s)} is not an amount: {_AMOUNT_HELP}")
    m = _AMOUNT_RE.fullmatch(s)
    if m is None or (m["int"] is None and m["frac"] is None) or (m["neg1"] and m["neg2"]):
        if re.search(r"[0-9],[0-9]", s):
            raise QuantityError(
                f"{_echo(s)} is not an amount: commas only separate thousands "
                "(2,500,000); use a point for decimals (1.5M)"
            )
        raise QuantityError(f"{_echo(s)} is not an amount: {_AMOUNT_HELP}")

    is_cost = m["dollar"] is not None
    frac = m["frac"] or ""
    numerator = int((m["int"] or "0").replace(",", "") + frac)
    if m["neg1"] or m["neg2"] or numerator == 0:
        raise QuantityError(f"{_echo(s)} is not an amount: it must be more than zero")

    scale = 10 ** _SUFFIX_EXP[(m["suffix"] or "").lower()] * (MICRO if is_cost else 1)
    value, remainder = divmod(numerator * scale, 10 ** len(frac))
    if remainder:
        if is_cost:
            raise QuantityError(
                f"{_echo(s)} has more than 6 decimals of dollars: the smallest step is $0.000001"
            )
        raise QuantityError(
            f"{_echo(s)} is not a whole number: token and request counts have no fractions"
        )
    most = Amount(MAX_MICRO_USD if is_cost else MAX_TOKENS, is_cost)
    if value > most.value:
        raise QuantityError(f"{_echo(s)} is absurdly large: the most is {format_amount(most)}")
    return Amount(value, is_cost)


def format_amount(a: Amount) -> str:
    """Canonical, exact text for an amount: parse_amount(format_amount(a)) == a.

    Counts use a k/M/B/T suffix only when it is exact with at most 3 decimals and no longer
    than the plain digits ("2.5k", "5M", but "1234" and "1234567"). Costs are dollars with
    thousands separators and cents, or up to 6 decimals when sub-cent ("$0.000001").
    """
    if a.value < 0:  # never produced by parse_amount; formatted anyway so display cannot crash
        return "-" + format_amount(Amount(-a.value, a.is_cost))
    if a.is_cost:
        dollars, micros = divmod(a.value, MICRO)
        frac = f"{micros:06d}".rstrip("0").ljust(2, "0") if micros else ""
        return f"${dollars:,}" + (f".{frac}" if frac else "")
    plain = str(a.value)
    for suffix, unit in _SHORT_UNITS:
        if a.value >= unit:
            if a.value % (unit // 1000):
                return plain  # would need more than 3 decimals: not a short form
            whole, rest = divmod(a.value, unit)
            frac = f"{rest * 1000 // unit:03d}".rstrip("0")
            short = f"{whole}.{frac}{suffix}" if frac else f"{whole}{suffix}"
            return short if len(short) <= len(plain) else plain
    return plain


# --------------------------------------------------------------------------- display numbers


def _round_div(n: int, d: int) -> int:
    """n / d rounded half up, for n >= 0 (round() on floats is half-even and inexact)."""
    return (2 * n + d) // (2 * d)


def format_tokens(n: int) -> str:
    """Human display of a token count, rounded to at most 3 significant digits.

    0 -> "0", 999 -> "999", 1234 -> "1.2k", 12_345 -> "12.3k", 1_560_000 -> "1.56M".
    Thousands keep at most one decimal: a hundred tokens either way is noise. At most
    6 characters for 0 <= n < 10**15; never raises.
    """
    if n < 0:
        return "-" + format_tokens(-n)
    if n < 1000:
        return str(n)
    units = _SHORT_UNITS[::-1]  # k, M, B, T
    for i, (suffix, unit) in enumerate(units):
        if n >= unit * 1000 and i < len(units) - 1:
            continue
        int_digits = len(str(max(n // unit, 1)))
        decimals = max(0, 3 - int_digits)
        if suffix == "k":
            decimals = min(decimals, 1)
        scaled = _round_div(n * 10**decimals, unit)
        if scaled >= 1000 * 10**decimals and i < len(units) - 1:
            continue  # rounded up to 1000: show as 1 of the next unit instead ("1M", not "1000k")
        whole, rest = divmod(scaled, 10**decimals)
        frac = f"{rest:0{decimals}d}".rstrip("0") if decimals else ""
        return f"{whole}.{frac}{suffix}" if frac else f"{whole}{suffix}"
    raise AssertionError("unreachable: the last unit always formats")


def format_usd(micro: int) -> str:
    """Dollars to the cent for display: "$0.00", "$12.34", "$1,250.50"; "<$0.01" for dust."""
    if micro < 0:
        return "-" + format_usd(-micro)
    if 0 < micro < MICRO // 100:
        return "<$0.01"  # "$0.00" would read as "nothing used"
    cents = _round_div(micro, MICRO // 100)
    return f"${cents // 100:,}.{cents % 100:02d}"


# --------------------------------------------------------------------------- windows

_WINDOW_ALIASES: dict[str, Window] = {
    **dict.fromkeys(("day", "daily", "d", "days"), Window.DAY),
    **dict.fromkeys(("week", "weekly", "wk", "w", "weeks"), Window.WEEK),
    **dict.fromkeys(("month", "monthly", "mo", "m", "mth", "months"), Window.MONTH),
    **dict.fromkeys(("24h", "24hr", "24hrs", "24hour", "24hours"), Window.H24),
    **dict.fromkeys(("7d", "7day", "7days"), Window.D7),
    **dict.fromkeys(("30d", "30day", "30days"), Window.D30),
}
# "1d" could mean today (calendar) or the last 24 hours (rolling): make the user choose.
_AMBIGUOUS_WINDOWS: dict[str, tuple[Window, Window]] = {
    **dict.fromkeys(("1d", "1day"), (Window.DAY, Window.H24)),
    **dict.fromkeys(("1w", "1wk", "1week"), (Window.WEEK, Window.D7)),
    **dict.fromkeys(("1m", "1mo", "1mth", "1month"), (Window.MONTH, Window.D30)),
}
_WINDOW_HELP = "use day, week, month (calendar) or 24h, 7d, 30d (rolling)"


def parse_window(text: str) -> Window:
    """Parse a window: "day"/"daily"/"d", "week"/"weekly"/"wk"/"w", "month"/"monthly"/"mo"/"m"
    (calendar, in the configured time zone) or "24h", "7d", "30d" (rolling).

    A leading "/" or "per" is ignored ("/wk", "per week"). "1d", "1w" and "1m" are refused:
    they could mean either the calendar or the rolling window.
    """
    s = "".join(text.split()).lower()  # case- and whitespace-insensitive: "7 d" == "7d"
    s = s.removeprefix("/")
    if s.startswith("per") and s != "per":
        s = s.removeprefix("per")
    if s in _WINDOW_ALIASES:
        return _WINDOW_ALIASES[s]
    if s in _AMBIGUOUS_WINDOWS:
        cal, roll = _AMBIGUOUS_WINDOWS[s]
        raise QuantityError(
            f"{_echo(text.strip())} is ambiguous: use '{cal}' for the calendar {cal} "
            f"or '{roll}' for the {_ROLLING_LABELS[roll]}"
        )
    if not s:
        raise QuantityError(f"no window given: {_WINDOW_HELP}")
    raise QuantityError(f"{_echo(text.strip())} is not a window: {_WINDOW_HELP}")


def format_window(w: Window) -> str:
    """Canonical text for a window ("day", "week", "24h", ...); parse_window reads it back."""
    return w.value


_LIMIT_HELP = "write it as 5M/week or $200/month"
_PER_RE = re.compile(r"\s+per\s+", re.IGNORECASE)


def parse_limit_spec(text: str) -> tuple[Amount, Window]:
    """Parse "<amount>/<window>": "5M/week", "$200/month", "500k/24h".

    Also "5M per week" and "5M weekly". In the space-separated form a one-letter window
    is not accepted: "5 M" must not silently become "5 per month".
    """
    s = text.strip()
    if not s:
        raise QuantityError(f"no limit given: {_LIMIT_HELP}")
    if "/" in s:
        amount_text, window_text = s.split("/", 1)
        return parse_amount(amount_text), parse_window(window_text)
    parts = _PER_RE.split(s, maxsplit=1)
    if len(parts) == 2:
        return parse_amount(parts[0]), parse_window(parts[1])
    words = s.rsplit(None, 1)
    if len(words) == 2 and len(words[1]) > 1:
        try:
            window = parse_window(words[1])
        except QuantityError:
            pass
        else:
            return parse_amount(words[0]), window
    try:
        amount = parse_amount(s)
    except QuantityError:
        raise QuantityError(f"{_echo(s)} is not a limit: {_LIMIT_HELP}") from None
    raise QuantityError(
        f"{_echo(s)} has no window: write it as {format_amount(amount)}/week "
        "(day, week, month, 24h, 7d or 30d)"
    )


def _require_aware(name: str, dt: datetime) -> None:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {dt.isoformat()}")


def _period_start(window: Window, d: date, week_start: int) -> date:
    if window is Window.DAY:
        return d
    if window is Window.WEEK:
        return d - timedelta(days=(d.weekday() - week_start) % 7)
    return d.replace(day=1)


def _shift(window: Window, d: date, n: int) -> date:
    """The period start `n` periods after the period start `d` (n may be negative)."""
    if window is Window.DAY:
        return d + timedelta(days=n)
    if window is Window.WEEK:
        return d + timedelta(weeks=n)
    months = d.year * 12 + (d.month - 1) + n
    return date(months // 12, months % 12 + 1, 1)


def _local_midnight(d: date, tz: tzinfo) -> datetime:
    """The UTC instant of local midnight starting date `d`.

    fold=0 maps a midnight skipped by DST (America/Santiago, Asia/Beirut spring forward at
    00:00) with the pre-transition offset, which lands exactly on the transition, i.e. the
    day's first real instant; a repeated midnight maps to its first occurrence. Converting
    to UTC turns the wall-clock value into a single, comparable instant.
    """
    return datetime.combine(d, time(0), tzinfo=tz).replace(fold=0).astimezone(UTC)


def window_bounds(
    window: Window, at: datetime, tz: tzinfo, week_start: int = 0
) -> tuple[datetime, datetime]:
    """The window containing `at`, as (start, end) aware UTC datetimes.

    Calendar windows (day/week/month) run from local midnight in `tz` of the day, of the
    most recent `week_start` weekday (0=Monday..6=Sunday), or of the 1st of the month, to
    the next such midnight, with start <= at < end. Across DST a day lasts 23 or 25 hours.
    Consecutive windows tile time: window_bounds(w, end)[0] == end.

    Rolling windows (24h/7d/30d) cover (at - length, at]: the result is
    (at - length, at), so here `end` is `at` itself, not an exclusive bound.

    Raises ValueError for a naive `at` or a week_start outside 0..6.
    """
    _require_aware("at", at)
    at_utc = at.astimezone(UTC)
    length = window.length
    if length is not None:
        return at_utc - length, at_utc
    if not 0 <= week_start <= 6:
        raise ValueError(f"week_start must be 0 (Monday) .. 6 (Sunday), got {week_start}")

    first = _period_start(window, at_utc.astimezone(tz).date(), week_start)
    # The local date usually names the window, but time zones with odd transitions (a gap or
    # overlap straddling midnight, a skipped day) can put `at` just outside it; step by whole
    # periods until the instant-based bounds contain `at`, which keeps windows tiling.
    for _ in range(4):
        start = _local_midnight(first, tz)
        end = _local_midnight(_shift(window, first, 1), tz)
        if at_utc < start:
            first = _shift(window, first, -1)
        elif at_utc >= end:
            first = _shift(window, first, 1)
        else:
            return start, end
    raise ValueError(f"cannot place {at.isoformat()} in a {window} window of {tz}")


def next_window_start(window: Window, at: datetime, tz: tzinfo, week_start: int = 0) -> datetime:
    """When the window containing `at` rolls over (aware UTC).

    Calendar windows: the end of the current window (the next local midnight boundary).
    Rolling windows have no rollover — they slide — so this is `at` itself (in UTC).
    """
    return window_bounds(window, at, tz, week_start)[1]


_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_ROLLING_LABELS = {
    Window.H24: "last 24 hours",
    Window.D7: "last 7 days",
    Window.D30: "last 30 days",
}


def window_label(window: Window, start: datetime, tz: tzinfo) -> str:
    """Human name of the window starting at `start`: "2026-11-28", "week of 2026-11-23",
    "November 2026", or "last 7 days" for rolling windows (where `start` is not used).
    """
    if window in _ROLLING_LABELS:
        return _ROLLING_LABELS[window]
    _require_aware("start", start)
    d = start.astimezone(tz).date()
    if window is Window.DAY:
        return d.isoformat()
    if window is Window.WEEK:
        return f"week of {d.isoformat()}"
    return f"{_MONTH_NAMES[d.month - 1]} {d.year}"  # not strftime("%B"): that follows the locale


# --------------------------------------------------------------------------- other options

_METRIC_ALIASES: dict[str, Metric] = {
    **dict.fromkeys(("tokens", "token", "total"), Metric.TOKENS),
    **dict.fromkeys(("input", "input_tokens", "in"), Metric.INPUT),
    **dict.fromkeys(("output", "output_tokens", "out"), Metric.OUTPUT),
    **dict.fromkeys(("cost", "cost_usd", "usd", "$"), Metric.COST),
    **dict.fromkeys(("requests", "request", "req", "calls", "invocations"), Metric.REQUESTS),
}


def parse_metric(text: str) -> Metric:
    """Parse a metric word from `limit ... [input|output|requests]` ("in", "out" and the
    stored names like "input_tokens" work too)."""
    s = text.strip().lower()
    if s in _METRIC_ALIASES:
        return _METRIC_ALIASES[s]
    raise QuantityError(
        f"{_echo(text.strip()) if s else 'nothing'} is not a metric: "
        "use tokens, input, output, requests or cost"
    )


_PERCENT_RE = re.compile(r"([0-9]{1,3})\s*%?", re.ASCII)
_MAX_PERCENTS = 5


def parse_percent_list(text: str) -> list[int]:
    """Parse warning thresholds: "80,90" -> [80, 90].

    Whole percentages 1..99 (100 is the limit itself), "%" optional; the result is sorted
    and de-duplicated, at most 5 entries. "off" or "none" gives [] (no warnings).
    """
    s = text.strip()
    if s.lower() in ("off", "none"):
        return []
    if not s:
        raise QuantityError("no thresholds given: use percentages like 80,90")
    found: set[int] = set()
    for item in s.split(","):
        m = _PERCENT_RE.fullmatch(item.strip())
        if m is None or not 1 <= int(m[1]) <= 99:
            raise QuantityError(
                f"{_echo(item.strip()) if item.strip() else 'an empty entry'} is not a "
                "threshold: use whole percentages from 1 to 99, like 80,90"
            )
        found.add(int(m[1]))
    if len(found) > _MAX_PERCENTS:
        raise QuantityError(f"too many thresholds: at most {_MAX_PERCENTS}, like 50,80,90")
    return sorted(found)


# --------------------------------------------------------------------------- durations

_DURATION_RE = re.compile(r"([0-9]{1,5})\s*(m|min|mins|minutes?|h|hr|hrs|hours?|d|days?)", re.ASCII)
_DURATION_UNITS = {"m": 60, "h": 3600, "d": 86400}
_DURATION_HELP = "write it as 10m, 24h or 7d"


def parse_duration(text: str, most: timedelta = timedelta(days=31)) -> timedelta:
    """Parse "10m", "24h", "7d" (minutes, hours, days): how long a raise or a grace lasts.

    Here "m" is minutes: a duration is never months (a window is, and an amount's "M" is
    millions). At least a minute, at most `most`.
    """
    s = text.strip().lower()
    m = _DURATION_RE.fullmatch(s)
    if m is None:
        raise QuantityError(f"{_echo(text.strip()) if s else 'nothing'} is not a duration: {_DURATION_HELP}")
    value = timedelta(seconds=int(m[1]) * _DURATION_UNITS[m[2][0]])
    if value < timedelta(minutes=1):
        raise QuantityError(f"{_echo(s)} is too short: at least 1m")
    if value > most:
        raise QuantityError(f"{_echo(s)} is too long: at most {format_duration(most)}")
    return value


def format_duration(d: timedelta) -> str:
    """The shortest exact "7d" / "24h" / "90m" text for a whole number of minutes;
    parse_duration reads it back."""
    minutes = int(d.total_seconds()) // 60
    if minutes >= 2880 and minutes % 1440 == 0:
        return f"{minutes // 1440}d"
    if minutes and minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}m"
