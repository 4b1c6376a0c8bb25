"""The Price List parser and the name → model id matching (pure), on the recorded-shape vectors."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.price_offers import (
    GLOBAL,
    REGIONAL,
    OfferError,
    OfferRate,
    id_key,
    match,
    name_key,
    parse_item,
)
from bot.pricing import Price, PriceTable, packaged_aliases

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"
FILES = ("pricing-getproducts-bedrock-page1.json", "pricing-getproducts-bedrock-page2.json",
         "pricing-getproducts-foundationmodels.json")


def items() -> list[str]:
    out: list[str] = []
    for name in FILES:
        out += json.loads((VECTORS / name).read_text())["PriceList"]
    return out


def all_rates() -> list[OfferRate]:
    return [r for item in items() for r in parse_item(item)]


def test_every_vector_item_is_a_json_string_the_parser_reads() -> None:
    for item in items():
        assert isinstance(item, str)
        parse_item(item)  # raises on a malformed product


def test_only_standard_on_demand_token_prices_are_kept() -> None:
    got = {(r.name, r.field, r.scope): r.usd_per_1k for r in all_rates()}
    assert got[("Nova Pro", "input", REGIONAL)] == Decimal("0.0008")
    assert got[("Nova Pro", "cache_read", REGIONAL)] == Decimal("0.0002")
    # flex, batch and customization rows of Nova Pro are skipped: one input price only
    assert [r for r in all_rates() if r.name == "Nova Pro" and r.field == "input"] == \
        [r for r in all_rates() if r.usagetype == "USE1-NovaPro-input-tokens"]
    assert not any("batch" in r.usagetype.lower() for r in all_rates())
    assert not any(r.name in ("Nova Canvas", "Stable Image Core") for r in all_rates())


def test_marketplace_prices_per_million_become_per_thousand_and_global_is_its_own_scope() -> None:
    got = {(r.name, r.field, r.scope): r.usd_per_1k for r in all_rates()}
    assert got[("Claude Sonnet 4.5", "input", REGIONAL)] == Decimal("0.0033")  # unit "Units", "per 1M"
    assert got[("Claude Sonnet 4.5", "output", GLOBAL)] == Decimal("0.015")
    assert got[("Claude Sonnet 4.5", "cache_write", REGIONAL)] == Decimal("0.004125")
    assert got[("Claude Opus 4.1", "output", REGIONAL)] == Decimal("0.075")  # *_tokens_standard


def _doc(unit: str, usd: str, description: str = "", **attrs: str) -> dict[str, object]:
    base = {"regionCode": "us-east-1", "model": "Nova Pro", "inferenceType": "Input tokens",
            "usagetype": "USE1-NovaPro-input-tokens", **attrs}
    return {"product": {"attributes": base},
            "terms": {"OnDemand": {"T": {"priceDimensions": {"D": {
                "unit": unit, "description": description, "beginRange": "0",
                "pricePerUnit": {"USD": usd}}}}}}}


@pytest.mark.parametrize(("unit", "description", "expected"), [
    ("1K tokens", "", Decimal("2")), ("1M tokens", "", Decimal("0.002")),
    ("Units", "per 1M input tokens", Decimal("0.002")), ("Units", "per 1K tokens", Decimal("2")),
    ("Tokens", "", Decimal("2000")),
])
def test_units(unit: str, description: str, expected: Decimal) -> None:
    assert [r.usd_per_1k for r in parse_item(_doc(unit, "2", description))] == [expected]


@pytest.mark.parametrize("doc", [
    _doc("Units", "2"),  # a unit of unknown scale is never guessed
    _doc("1K tokens", "NaN"), _doc("1K tokens", "-1"), _doc("1K tokens", "N/A"),
    _doc("1K tokens", "1", service_tier="Priority"),
    _doc("1K tokens", "1", inferenceType="Output tokens priority"),
    _doc("1K tokens", "1", model=""), _doc("1K tokens", "1", regionCode=""),
])
def test_rows_that_are_not_a_standard_token_price_give_nothing(doc: dict[str, object]) -> None:
    assert parse_item(doc) == []


@pytest.mark.parametrize("bad", ["{not json", "[]", "{}", '{"product": {}}', '{"product": 3}'])
def test_malformed_items_raise_offer_error(bad: str) -> None:
    with pytest.raises(OfferError):
        parse_item(bad)


@given(st.one_of(st.text(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=20).map(json.dumps)))
def test_any_input_gives_rates_or_offer_error_and_nothing_else(text: str) -> None:
    try:
        rates = parse_item(text)
    except OfferError:
        return
    assert all(r.usd_per_1k >= 0 and r.usd_per_1k.is_finite() for r in rates)


@pytest.mark.parametrize(("name", "model_id"), [
    ("Nova Pro", "amazon.nova-pro-v1:0"),
    ("Claude Sonnet 4.5 (Amazon Bedrock Edition)", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("Claude 3 Haiku", "anthropic.claude-3-haiku-20240307-v1:0:200k"),
    ("Claude 3.5 Sonnet v2", "anthropic.claude-3-5-sonnet-20241022-v2:0"),
    ("Llama 3.1 8B Instruct", "meta.llama3-1-8b-instruct-v1:0"),
    ("Command R+", "cohere.command-r-plus-v1:0"),
    ("Mistral 7B Instruct", "mistral.mistral-7b-instruct-v0:2"),
])
def test_names_and_ids_normalise_alike(name: str, model_id: str) -> None:
    assert name_key(name) == id_key(model_id)


def test_different_models_stay_apart() -> None:
    assert id_key("anthropic.claude-3-5-sonnet-20240620-v1:0") != id_key(
        "anthropic.claude-3-5-sonnet-20241022-v2:0")
    assert name_key("Command R+") != id_key("cohere.command-r-v1:0")
    assert id_key("arn:aws:bedrock:us-east-1:1:application-inference-profile/abc") is None


def _match() -> tuple[PriceTable, object]:
    table = PriceTable.load()
    fallback = {k: p for k, p, _ in table.entries()}
    return table, match(all_rates(), [k for k, _, _ in table.entries()], "us-east-1",
                        aliases=packaged_aliases(), fallback=fallback)


def test_match_snapshot() -> None:
    _, result = _match()
    prices = result.prices  # type: ignore[attr-defined]
    assert set(prices) == {
        "amazon.nova-pro-v1:0", "amazon.nova-lite-v1:0", "meta.llama3-1-8b-instruct-v1:0",
        "deepseek.r1-v1:0",  # by the pricing.json alias "DeepSeek-R1"
        "anthropic.claude-sonnet-4-5-20250929-v1:0", "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-haiku-4-5-20251001-v1:0", "global.anthropic.claude-haiku-4-5-20251001-v1:0",
        "anthropic.claude-opus-4-1-20250805-v1:0"}
    assert prices["amazon.nova-pro-v1:0"] == Price(Decimal("0.0008"), Decimal("0.0032"),
                                                   Decimal("0.0002"), Decimal("0.0008"))
    assert prices["global.anthropic.claude-sonnet-4-5-20250929-v1:0"] == Price(
        Decimal("0.003"), Decimal("0.015"), Decimal("0.0003"), Decimal("0.00375"))
    # Haiku 4.5's offer lists no cache prices: the shipped table's are kept, not the input price
    assert prices["anthropic.claude-haiku-4-5-20251001-v1:0"].cache_read == Decimal("0.00011")
    assert result.unmatched == ["AmazonBedrock: Nova 2 Lite"]  # type: ignore[attr-defined]
    assert result.conflicts == [] and result.incomplete == []  # type: ignore[attr-defined]


def test_disagreeing_skus_and_half_prices_are_reported_not_stored() -> None:
    rates = [OfferRate("Nova Pro", "us-east-1", "input", REGIONAL, Decimal("0.0008"), "x", "a"),
             OfferRate("Nova Pro", "us-east-1", "input", REGIONAL, Decimal("0.0009"), "x", "b"),
             OfferRate("Nova Pro", "us-east-1", "output", REGIONAL, Decimal("0.0032"), "x", "c"),
             OfferRate("Nova Lite", "us-east-1", "input", REGIONAL, Decimal("0.00006"), "x", "d"),
             OfferRate("Nova Lite", "eu-west-1", "output", REGIONAL, Decimal("0.00024"), "x", "e")]
    result = match(rates, ["amazon.nova-pro-v1:0", "amazon.nova-lite-v1:0"], "us-east-1")
    assert result.prices == {}
    assert result.conflicts == ["x: Nova Pro (regional)"]
    assert result.incomplete == ["x: Nova Lite (regional)"]  # the eu-west-1 row is another region


def test_one_name_fitting_ids_priced_apart_is_ambiguous() -> None:
    rates = [OfferRate("Titan Embed Text", "us-east-1", f, REGIONAL, Decimal("0.0001"), "x", f)
             for f in ("input", "output")]
    ids = ["amazon.titan-embed-text-v1", "amazon.titan-embed-text-v1:0"]
    fallback = {ids[0]: Price(*(Decimal("0.0001"),) * 4), ids[1]: Price(*(Decimal("0.00002"),) * 4)}
    result = match(rates, ids, "us-east-1", fallback=fallback)
    assert result.prices == {} and len(result.conflicts) == 1


def test_a_one_hour_cache_write_is_not_the_cache_write_price() -> None:
    doc = _doc("1M tokens", "6", usagetype="USE1-MP:USE1_CacheWrite1hInputTokenCount-Units",
               inferenceType="")
    assert parse_item(doc) == []


def test_disagreeing_cache_prices_keep_the_token_prices_and_the_tables_cache_price() -> None:
    rates = [OfferRate("Nova Pro", "us-east-1", f, REGIONAL, Decimal(v), "x", f + v)
             for f, v in (("input", "0.0008"), ("output", "0.0032"), ("cache_write", "0.001"),
                          ("cache_write", "0.002"))]
    old = Price(Decimal("1"), Decimal("2"), Decimal("0.1"), Decimal("0.5"))
    result = match(rates, ["amazon.nova-pro-v1:0"], "us-east-1", fallback={"amazon.nova-pro-v1:0": old})
    assert result.prices["amazon.nova-pro-v1:0"] == Price(Decimal("0.0008"), Decimal("0.0032"),
                                                          Decimal("0.1"), Decimal("0.5"))
    assert result.conflicts == ["x: Nova Pro (regional) cache_write: kept the table's"]
