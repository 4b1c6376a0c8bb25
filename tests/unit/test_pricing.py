from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.pricing import Price, PriceTable

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET_37 = "anthropic.claude-3-7-sonnet-20250219-v1:0"


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def write(tmp_path: Path, doc: object, name: str = "prices.json") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_packaged_table_names_its_source_and_covers_the_common_models(table: PriceTable) -> None:
    assert table.as_of and table.source and "aws.amazon.com/bedrock/pricing" in table.source
    for model in (
        HAIKU, "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-haiku-20241022-v1:0", SONNET_37,
        "anthropic.claude-sonnet-4-20250514-v1:0", "amazon.nova-micro-v1:0",
        "amazon.nova-lite-v1:0", "amazon.nova-pro-v1:0", "meta.llama3-1-8b-instruct-v1:0",
        "meta.llama3-1-70b-instruct-v1:0", "mistral.mistral-large-2407-v1:0",
        "cohere.command-r-plus-v1:0", "amazon.titan-text-express-v1",
    ):
        assert table.known(model), model


def test_haiku_cost_is_exact(table: PriceTable) -> None:
    # 1,000 x $0.00025 + 100 x $0.00125 = $0.25 + $0.125
    assert table.cost_micro_usd(HAIKU, 1_000_000, 100_000) == 375_000


def test_cache_tokens_use_their_own_rates(table: PriceTable) -> None:
    # 3.7 Sonnet: in 0.003, out 0.015, cache read 0.0003, cache write 0.00375 per 1k
    cost = table.cost_micro_usd(SONNET_37, 2_000, 1_000, cache_read=10_000, cache_write=4_000)
    assert cost == 6_000 + 15_000 + 3_000 + 15_000


def test_rounds_half_up_once_on_the_total(table: PriceTable) -> None:
    # 1 Nova Micro input token = $0.000000035 = 0.035 micro-USD; 14 tokens = 0.49, 15 = 0.525
    assert table.cost_micro_usd("amazon.nova-micro-v1:0", 14, 0) == 0
    assert table.cost_micro_usd("amazon.nova-micro-v1:0", 15, 0) == 1
    two = PriceTable({"x.half": Price(*(Decimal("0.0005"),) * 4)})  # 0.5 micro-USD a token
    assert two.cost_micro_usd("x.half", 1, 0) == 1  # half-up, not banker's (round(0.5) == 0)
    assert two.cost_micro_usd("x.half", 1, 1) == 1


def test_model_without_cache_prices_bills_cache_tokens_as_input(table: PriceTable) -> None:
    price = table.price_of("amazon.nova-pro-v1:0")
    assert price is not None
    assert price.cache_write == price.input and price.cache_read == Decimal("0.0002")


@pytest.mark.parametrize("form", [
    HAIKU,
    HAIKU.upper(),
    f"  {HAIKU} ",
    f"us.{HAIKU}",
    f"eu.{HAIKU}",
    f"apac.{HAIKU}",
    f"arn:aws:bedrock:us-east-1::foundation-model/{HAIKU}",
    f"arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.{HAIKU}",
    "anthropic.claude-3-haiku-20240307-v1",  # ":0" implied
    f"{HAIKU}:200k",  # context-window variant
])
def test_id_forms_resolve_to_the_foundation_model(table: PriceTable, form: str) -> None:
    assert table.price_of(form) == table.price_of(HAIKU)
    assert table.known(form)


def test_missing_revision_zero_works_both_ways(table: PriceTable) -> None:
    express = table.price_of("amazon.titan-text-express-v1")
    assert express is not None
    assert table.price_of("amazon.titan-text-express-v1:0") == express
    assert table.price_of("amazon.titan-text-express-v1:0:8k") == express


def test_only_revision_zero_is_implied(table: PriceTable) -> None:
    assert table.known("mistral.mistral-7b-instruct-v0:2")
    assert not table.known("mistral.mistral-7b-instruct-v0:3")
    assert not table.known("mistral.mistral-7b-instruct-v0")


def test_geo_specific_key_wins_over_the_bare_id(table: PriceTable) -> None:
    bare = "anthropic.claude-sonnet-4-5-20250929-v1:0"
    glob, regional = table.price_of(f"global.{bare}"), table.price_of(f"us.{bare}")
    assert glob is not None and regional is not None
    assert glob.input < regional.input
    assert regional == table.price_of(bare)


@pytest.mark.parametrize("model", [
    "a1b2c3d4e5f6",  # an AIP id carries no model
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
    "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc",
    "example.no-such-model-v1:0",
    "",
])
def test_unknown_model_costs_nothing(table: PriceTable, model: str) -> None:
    assert table.price_of(model) is None
    assert not table.known(model)
    assert table.cost_micro_usd(model, 1_000_000, 1_000_000) == 0


def test_negative_tokens_are_a_bug(table: PriceTable) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        table.cost_micro_usd(HAIKU, -1, 0)


def test_override_replaces_and_adds(tmp_path: Path) -> None:
    path = write(tmp_path, {"as_of": "2099-01-01", "models": {
        HAIKU: {"input": "0.001", "output": 0.002},
        "example.custom-model-v1:0": {"input": "0.5", "output": "1", "cache_read": "0.05",
                                      "cache_write": "0.6", "note": "negotiated"},
    }})
    table = PriceTable.load(path)
    assert table.price_of(HAIKU) == Price(Decimal("0.001"), Decimal("0.002"), Decimal("0.001"),
                                          Decimal("0.001"))
    assert table.cost_micro_usd(HAIKU, 1_000_000, 100_000) == 1_200_000
    assert table.cost_micro_usd("us.example.custom-model-v1:0", 0, 0, cache_read=1_000) == 50_000
    assert table.known(SONNET_37)  # untouched entries survive
    assert len(table) == len(PriceTable.load()) + 1


@pytest.mark.parametrize(("doc", "reason"), [
    ("{not json", r"prices\.json: not JSON"),
    ([], "'models' object"),
    ({"models": []}, "'models' object"),
    ({"models": {HAIKU: {"input": "0.1"}}}, rf"entry '{HAIKU}': missing 'output'"),
    ({"models": {HAIKU: {"input": "abc", "output": "1"}}}, "'input' is not a number"),
    ({"models": {HAIKU: {"input": "-1", "output": "1"}}}, "finite price >= 0"),
    ({"models": {HAIKU: {"input": True, "output": "1"}}}, "must be a number"),
    ({"models": {HAIKU: {"input": "1", "output": "1", "cach_read": "1"}}}, "unknown key"),
    ({"models": {HAIKU: "0.1"}}, "expected an object"),
    ('{"models": {"m.x": {"input": NaN, "output": 1}}}', "NaN is not a price"),
    ({"models": {"arn:aws:bedrock:us-east-1:1:application-inference-profile/abc":
                 {"input": "1", "output": "1"}}}, "not a model id"),
])
def test_malformed_override_is_a_one_line_value_error(tmp_path: Path, doc: object,
                                                      reason: str) -> None:
    path = write(tmp_path, doc)
    with pytest.raises(ValueError, match=reason) as err:
        PriceTable.load(path)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_missing_override_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        PriceTable.load(str(tmp_path / "absent.json"))


@given(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**9),
       st.integers(0, 10**9))
def test_cost_is_additive_within_rounding(i: int, o: int, r: int, w: int) -> None:
    table = PriceTable({"x.m": Price(Decimal("0.00025"), Decimal("0.00125"), Decimal("0.00003"),
                                     Decimal("0.0003"))})
    total = table.cost_micro_usd("x.m", i, o, r, w)
    parts = (table.cost_micro_usd("x.m", i, 0) + table.cost_micro_usd("x.m", 0, o)
             + table.cost_micro_usd("x.m", 0, 0, r) + table.cost_micro_usd("x.m", 0, 0, 0, w))
    assert abs(total - parts) <= 2
    exact = (Decimal(i) * 250 + Decimal(o) * 1250 + Decimal(r) * 30 + Decimal(w) * 300) / 1000
    assert total == int(exact + Decimal("0.5"))  # half-up of a non-negative value
