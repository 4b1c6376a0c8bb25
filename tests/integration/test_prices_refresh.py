"""`prices refresh` end to end: GetProducts through botocore's Stubber (moto has no Price List
API; the Stubber checks every request against the real service model), stored on both databases,
then used by the price table the bot loads — under BOT_PRICING_FILE, over the shipped table."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from bot.aws.price_list import PriceList
from bot.clock import FixedClock
from bot.db import Database
from bot.errors import AwsError
from bot.flows.prices import endpoint_region, load_prices, refresh, report_lines
from bot.models import ModelPrice
from bot.pricing import PriceTable

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "aws"
REGION = "us-east-1"


def _page(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text())


def _request(code: str, token: str | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"ServiceCode": code, "FormatVersion": "aws_v1", "MaxResults": 100,
                           "Filters": [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": REGION}]}
    if token:
        req["NextToken"] = token
    return req


def stubbed(bedrock_pages: list[dict[str, Any]] | None = None,
            fm_page: dict[str, Any] | None = None) -> tuple[Any, Stubber]:
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    pages = bedrock_pages or [_page("pricing-getproducts-bedrock-page1.json"),
                              _page("pricing-getproducts-bedrock-page2.json")]
    token = None
    for page in pages:
        stub.add_response("get_products", page, _request("AmazonBedrock", token))
        token = page.get("NextToken")
    stub.add_response("get_products", fm_page or _page("pricing-getproducts-foundationmodels.json"),
                      _request("AmazonBedrockFoundationModels"))
    stub.activate()
    return client, stub


def test_refresh_pages_stores_and_prices_the_bot(db: Database, clock: FixedClock) -> None:
    client, stub = stubbed()
    shipped = PriceTable.load()
    report = refresh(db, clock, PriceList(client), REGION, shipped)
    stub.assert_no_pending_responses()  # both pages of AmazonBedrock, then the Marketplace offer
    assert report.calls == 3 and report.malformed == 0
    assert report.unmatched == ["AmazonBedrock: Nova 2 Lite"]
    # the vectors hold late-2025 list prices, as the shipped table does
    assert report.changed == []
    assert report.stored == 9 and len(report.new) == 9
    with db.session_scope() as s:
        rows = {r.model_id: r for r in s.query(ModelPrice)}
    assert rows["amazon.nova-pro-v1:0"].cache_read == "0.0002"
    assert rows["amazon.nova-pro-v1:0"].source == "AmazonBedrock: Nova Pro"
    assert rows["global.anthropic.claude-sonnet-4-5-20250929-v1:0"].output == "0.015"
    table = load_prices(db, REGION, None)
    assert not table.stored_unreadable
    assert table.price_of("us.amazon.nova-pro-v1:0").cache_read == Decimal("0.0002")  # type: ignore[union-attr]
    assert table.lookup("amazon.nova-pro-v1:0")[2].startswith("AWS Price List us-east-1")  # type: ignore[index]
    assert table.lookup("amazon.nova-micro-v1:0")[2] == "bot/pricing.json"  # type: ignore[index]
    assert any("Nova 2 Lite" in line for line in report_lines(report))


def test_a_second_refresh_changes_only_what_moved(db: Database, clock: FixedClock) -> None:
    client, _ = stubbed()
    refresh(db, clock, PriceList(client), REGION, PriceTable.load())
    moved = _page("pricing-getproducts-foundationmodels.json")
    moved["PriceList"] = [i.replace('"USD":"15.0000000000"', '"USD":"12.0000000000"')
                          for i in moved["PriceList"]]
    client, _ = stubbed(fm_page=moved)
    report = refresh(db, clock, PriceList(client), REGION, load_prices(db, REGION, None))
    assert report.changed == ["anthropic.claude-opus-4-1-20250805-v1:0",
                              "global.anthropic.claude-sonnet-4-5-20250929-v1:0"]
    assert report.new == []
    table = load_prices(db, REGION, None)
    assert table.price_of("anthropic.claude-opus-4-1-20250805-v1:0").input == Decimal("0.012")  # type: ignore[union-attr]


def test_override_file_wins_over_stored_prices(db: Database, clock: FixedClock, tmp_path: Path) -> None:
    client, _ = stubbed()
    refresh(db, clock, PriceList(client), REGION, PriceTable.load())
    override = tmp_path / "prices.json"
    override.write_text(json.dumps({"models": {"amazon.nova-pro-v1:0": {"input": "1", "output": "2"}}}))
    table = load_prices(db, REGION, str(override))
    assert table.price_of("amazon.nova-pro-v1:0").input == Decimal("1")  # type: ignore[union-attr]
    assert table.lookup("amazon.nova-pro-v1:0")[2] == str(override)  # type: ignore[index]


def test_aws_failure_stores_nothing_and_names_the_error(db: Database, clock: FixedClock) -> None:
    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_client_error("get_products", "AccessDeniedException", "no pricing:GetProducts",
                          expected_params=_request("AmazonBedrock"))
    stub.activate()
    with pytest.raises(AwsError) as err:
        refresh(db, clock, PriceList(client), REGION, PriceTable.load())
    assert "AccessDeniedException" in str(err.value)
    with db.session_scope() as s:
        assert s.query(ModelPrice).count() == 0
    assert load_prices(db, REGION, None).price_of("amazon.nova-pro-v1:0") is not None  # the fallback


def test_unreadable_database_falls_back_to_the_shipped_table(tmp_path: Path) -> None:
    table = load_prices(Database(f"sqlite:///{tmp_path}/never-migrated.db"), REGION, None)
    assert len(table) == len(PriceTable.load()) and table.stored_unreadable


@pytest.mark.parametrize(("region", "endpoint"), [
    ("us-east-1", "us-east-1"), ("us-west-2", "us-east-1"), ("eu-west-1", "eu-central-1"),
    ("eu-central-1", "eu-central-1"), ("ap-northeast-1", "ap-south-1"), ("sa-east-1", "us-east-1")])
def test_endpoint_region(region: str, endpoint: str) -> None:
    assert endpoint_region(region) == endpoint


def test_cli_refresh_then_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from bot import cli_prices
    from bot.config import load_settings
    from bot.runtime import build_services
    from handlers.main import main

    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(str(tmp_path))
    assert main(["migrate"]) == 0
    client, _ = stubbed()
    monkeypatch.setattr(cli_prices, "_services", lambda settings: build_services(
        load_settings(None, DATABASE_URL=url), pricing=client))
    capsys.readouterr()
    assert main(["prices", "refresh"]) == 0
    out = capsys.readouterr().out
    assert "stored 9 model prices" in out and "Nova 2 Lite" in out
    assert main(["prices", "show", "us.anthropic.claude-sonnet-4-5-20250929-v1:0"]) == 0
    out = capsys.readouterr().out
    assert "→ anthropic.claude-sonnet-4-5-20250929-v1:0" in out
    assert re.search(r"3\.3\s+16\.5\s+0\.33\s+4\.125\s+AWS Price List us-east-1", out)
    assert "AWS Price List us-east-1" in out
    assert main(["prices", "show", "acme.unknown-model-v1:0"]) == 1
    assert "no price" in capsys.readouterr().out
    assert main(["prices", "show"]) == 0
    assert "amazon.nova-micro-v1:0" in capsys.readouterr().out


def test_the_daily_job_stores_and_the_running_bot_prices_with_it(db: Database, clock: FixedClock) -> None:
    from bot.config import load_settings
    from bot.runtime import build_services
    from jobs import prices_refresh, registry

    client, _ = stubbed()
    url = db.engine.url.render_as_string(hide_password=False)
    services = build_services(load_settings(None, DATABASE_URL=url), clock, pricing=client)
    services.db = db
    before = services.prices
    assert before.lookup("amazon.nova-pro-v1:0")[2] == "bot/pricing.json"  # type: ignore[index]
    assert registry.JOBS["prices_refresh"] is prices_refresh.run
    out = prices_refresh.run(services)
    assert out.ok and out.value.stored == 9
    assert services.prices is not before  # reloaded after the refresh
    assert services.prices.lookup("amazon.nova-pro-v1:0")[2].startswith("AWS Price List")  # type: ignore[index]


def test_a_database_down_at_first_use_is_retried_not_cached(db: Database, clock: FixedClock,
                                                            tmp_path: Path) -> None:
    from bot.config import load_settings
    from bot.runtime import build_services

    client, _ = stubbed()
    refresh(db, clock, PriceList(client), REGION, PriceTable.load())
    url = db.engine.url.render_as_string(hide_password=False)
    services = build_services(load_settings(None, DATABASE_URL=url), clock)
    services.db = Database(f"sqlite:///{tmp_path}/down.db")  # not migrated: the read fails
    assert services.prices.stored_unreadable
    services.db = db  # back
    assert services.prices.lookup("amazon.nova-pro-v1:0")[2].startswith("AWS Price List")  # type: ignore[index]
    assert services.prices is services.prices  # and now cached
