"""Cost Explorer responses → Bedrock cost per day and tag value (pure), and the request shape
checked by botocore's Stubber against the real service model."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.aws.cost_explorer import CostExplorer, is_bedrock_service, parse_results, request
from bot.services.billing import BillComparison, closed_days, days_within, diverges

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"
USER = json.loads((VECTORS / "ce-getcostandusage-bedrock-by-user.json").read_text())
D22, D23, D24 = date(2026, 11, 22), date(2026, 11, 23), date(2026, 11, 24)


def test_only_bedrock_services_count_and_amounts_are_exact_micro_dollars() -> None:
    costs = parse_results([USER], "user")
    assert costs.by_value == {(D23, "alice"): 400_000, (D24, ""): 300_000, (D24, "alice"): 1_020_000,
                              (D24, "bob"): 3_000_000}  # EC2's $40 on alice's tag is not Bedrock
    assert costs.total(D24) == 4_320_000
    assert costs.tagged_values() == {"alice", "bob"}
    assert costs.estimated_days == {D24}
    assert costs.services == {"Amazon Bedrock", "Claude Sonnet 4.5 (Amazon Bedrock Edition)"}


@pytest.mark.parametrize(("service", "bedrock"), [
    ("Amazon Bedrock", True), ("Claude 3 Haiku (Amazon Bedrock Edition)", True),
    ("Amazon Bedrock AgentCore", False), ("Amazon Elastic Compute Cloud - Compute", False)])
def test_bedrock_services(service: str, bedrock: bool) -> None:
    assert is_bedrock_service(service) is bedrock


@given(st.lists(st.dictionaries(st.sampled_from(["ResultsByTime", "NextPageToken", "x"]),
                                st.recursive(st.none() | st.text(max_size=8) | st.integers(),
                                             lambda c: st.lists(c, max_size=3)
                                             | st.dictionaries(st.text(max_size=8), c, max_size=3),
                                             max_leaves=15)), max_size=3))
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # shared cores: slow, not wrong
def test_malformed_pages_never_raise(pages: list[dict[str, object]]) -> None:
    try:
        parse_results(pages, "user")  # type: ignore[arg-type]
    except (AttributeError, TypeError):
        pytest.fail("a malformed page raised")


def test_paginated_request_is_valid_for_the_real_api() -> None:
    client = boto3.client("ce", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    first = {**USER, "NextPageToken": "page-2"}
    first["ResultsByTime"] = USER["ResultsByTime"][:2]
    second = {**USER, "ResultsByTime": USER["ResultsByTime"][2:]}
    req = request(D22, date(2026, 11, 25), "user")
    stub.add_response("get_cost_and_usage", first, req)
    stub.add_response("get_cost_and_usage", second, {**req, "NextPageToken": "page-2"})
    stub.activate()
    ce = CostExplorer(client)
    costs = ce.daily_bedrock_costs(D22, date(2026, 11, 25), "user")
    stub.assert_no_pending_responses()
    assert ce.calls == 2 and costs.total(D24) == 4_320_000
    assert req["TimePeriod"] == {"Start": "2026-11-22", "End": "2026-11-25"}  # End is exclusive


def test_divergence_needs_a_cent_and_the_threshold() -> None:
    def b(billed: int, est: int) -> BillComparison:
        return BillComparison(D24, D24, 1, "tag:user", billed, est)
    assert b(1_100_001, 1_000_000).divergence_pct == pytest.approx(10.0001)
    assert diverges(b(1_110_000, 1_000_000), 10) and not diverges(b(1_100_000, 1_000_000), 10)
    assert not diverges(b(5_000, 0), 10)  # half a cent: rounding
    assert diverges(b(50_000, 0), 10) and b(50_000, 0).divergence_pct is None
    assert diverges(b(0, 1_000_000), 10)


def test_days() -> None:
    from datetime import UTC, datetime
    now = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
    assert closed_days(now, 3) == [D22, D23, D24]
    assert days_within(datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, tzinfo=UTC), now) == [D24]
    # today has not ended; a day cut by the period's start is left out
    cut = datetime(2026, 11, 23, 5, tzinfo=UTC)
    assert days_within(cut, datetime(2026, 11, 26, tzinfo=UTC), now) == [D24]
