"""Adaptive polling's arithmetic, BOT_MODEL_TPM, and the mantle link grammar (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from bot.aws.mantle_metrics import parse_project
from bot.config import load_settings
from bot.errors import BadInput
from bot.pricing import PriceTable
from bot.services.poll_cadence import Cadence, headroom, interval_seconds, is_due, rate_per_minute
from bot.slash import grammar as g
from bot.slash.registry import parse

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
C = Cadence(sync_seconds=60, idle_seconds=900, target_seconds=60, default_tpm=1_000_000,
            model_tpm={HAIKU: 400_000}, prices=PriceTable.load())


def test_headroom_is_to_the_next_threshold_not_yet_reached() -> None:
    assert headroom(1000, [80, 90], 0) == 800
    assert headroom(1000, [80, 90], 850) == 50
    assert headroom(1000, [80, 90], 950) == 50
    assert headroom(1000, [80, 90], 1000) == 0
    assert headroom(1000, [], 10) == 990


def test_interval_is_time_to_the_threshold_at_the_quota_minus_the_target() -> None:
    assert interval_seconds(400_000 * 5, 400_000, C) == 5 * 60 - 60  # 5 minutes away
    assert interval_seconds(400_000 * 100, 400_000, C) == 900  # capped at the idle cadence
    assert interval_seconds(400_000 // 2, 400_000, C) == 0  # inside the target: every sync
    assert interval_seconds(10**12, None, C) == 0  # unbounded rate: every sync
    assert interval_seconds(0, 400_000, C) == 0


def test_rates_follow_the_quota_of_each_model_and_are_unbounded_where_aws_sets_none() -> None:
    assert rate_per_minute("tokens", [HAIKU, HAIKU], 0, C) == 400_000
    assert rate_per_minute("tokens", [HAIKU, "amazon.nova-pro-v1:0"], 1, C) == 400_000 + 2_000_000
    assert rate_per_minute("tokens", [], 0, C) == 1_000_000  # logs-only subject: the default
    assert rate_per_minute("requests", [HAIKU], 0, C) is None
    assert rate_per_minute("cost_usd", ["some.unpriced-v1"], 0, C) is None
    assert rate_per_minute("cost_usd", [HAIKU], 1, C) is None  # mantle models are unknown
    price = C.prices.price_of(HAIKU) if C.prices else None
    assert price is not None
    assert rate_per_minute("cost_usd", [HAIKU], 0, C) == pytest.approx(
        float(max(price.input, price.output) / 1000 * 1_000_000 * 400_000))


def test_due_once_the_wait_has_passed() -> None:
    t = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    assert is_due(None, 900, t)
    assert not is_due(t - timedelta(seconds=899), 900, t)
    assert is_due(t - timedelta(seconds=900), 900, t)


def test_model_tpm_setting_is_validated() -> None:
    bot = load_settings(None, BOT_MODEL_TPM=f"{HAIKU}=400000, amazon.nova-pro-v1:0=2000000").bot
    assert bot.model_tpm == {HAIKU: 400_000, "amazon.nova-pro-v1:0": 2_000_000}
    assert bot.sync_adaptive and bot.sync_idle_seconds == 900 and bot.default_tpm == 2_000_000
    for bad, reason in (("haiku", "not model-id=tokens-per-minute"), (f"{HAIKU}=0", "whole number"),
                        (f"{HAIKU}=1e6", "whole number"), ("=5", "not a model id")):
        with pytest.raises(ValidationError, match=reason):
            load_settings(None, BOT_MODEL_TPM=bad)


def test_mantle_project_ids() -> None:
    assert parse_project("proj_abc123") == "proj_abc123"
    assert parse_project("arn:aws:bedrock-mantle:us-east-1:123456789012:project/proj_abc123") == "proj_abc123"
    for bad in ("", "abc", "proj_", "proj_a/b", "proj_" + "x" * 60):
        with pytest.raises(ValueError, match="not a bedrock-mantle project id"):
            parse_project(bad)


def test_link_takes_a_mantle_project() -> None:
    cmd = parse("link team-eng mantle-project:proj_abc123")
    assert isinstance(cmd, g.MantleLink) and cmd.project == "proj_abc123"
    assert cmd.subject.name == "team-eng"
    assert isinstance(parse("unlink team-eng mantle-project:proj_abc123"), g.MantleLink)
    with pytest.raises(BadInput, match="not a bedrock-mantle project id"):
        parse("link team-eng mantle-project:abc")
    assert isinstance(parse("link @alice arn:aws:iam::123456789012:user/alice"), g.Link)
