"""The raise grammar: `limit <s> +<amount>/<window> …`, `request more …`, `grace=`, durations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import BadInput
from bot.quantities import Metric, QuantityError, Window, format_duration, parse_duration
from bot.slash import grammar as g
from bot.slash import registry


@given(st.integers(min_value=1, max_value=31 * 24 * 60))
def test_duration_round_trips(minutes: int) -> None:
    d = timedelta(minutes=minutes)
    assert parse_duration(format_duration(d)) == d


@pytest.mark.parametrize("text", ["", "0m", "10", "10y", "-1h", "32d", "1.5h", "10mm"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_duration(text)


def test_grant_parses() -> None:
    cmd = registry.parse("limit alice +1M/day output for 24h launch day")
    assert isinstance(cmd, g.GrantRaise)
    assert (cmd.amount.value, cmd.window, cmd.metric, cmd.duration, cmd.reason) == (
        1_000_000, Window.DAY, Metric.OUTPUT, timedelta(hours=24), "launch day")
    cash = registry.parse("limit team-eng +$50/month offsite")
    assert isinstance(cash, g.GrantRaise) and cash.metric == Metric.COST and cash.duration is None


@pytest.mark.parametrize("text", ["limit alice +lots/day x", "limit alice +1M x", "limit alice +1M/day for",
                                  "limit alice +1M/day for 2y x", "limit alice +1M/day",
                                  "limit alice +$5/day output x", "request more", "request less 1M x",
                                  "request more 1M", "request more 1M for 24h", "request more 1,5M x",
                                  "limit alice 1M/day grace=2d", "limit alice 1M/day grace=soon"])
def test_bad_input_gets_the_usage_line(text: str) -> None:
    with pytest.raises(BadInput) as err:
        registry.parse(text)
    assert err.value.usage and err.value.usage.startswith("/bedrock " + text.split()[0])


@given(st.integers(min_value=1, max_value=10**12), st.sampled_from(["", "/day", "/week", "/7d"]),
       st.sampled_from([None, "10m", "24h", "7d"]))
def test_request_more_parses(amount: int, window: str, duration: str | None) -> None:
    text = f"request more {amount}{window}" + (f" for {duration}" if duration else "") + " need it"
    cmd = registry.parse(text)
    assert isinstance(cmd, g.RequestMore)
    assert cmd.amount.value == amount and cmd.reason == "need it"
    assert (cmd.window is None) == (window == "")
    assert cmd.duration == (parse_duration(duration) if duration else None)


def test_grace_option() -> None:
    cmd = registry.parse("limit alice 2M/day grace=10m")
    assert isinstance(cmd, g.SetLimit) and cmd.grace == timedelta(minutes=10)
