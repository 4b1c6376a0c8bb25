"""Prices from the AWS Price List API, kept in the database (`model_prices`), per region.

`store` writes what a refresh matched; `stored` reads them back for `PriceTable.load`, which
layers them over the shipped table and under `BOT_PRICING_FILE`. A model the Price List no
longer lists keeps its last stored price (older but better than none); `bedrock-bot prices
show` says when each was fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.models import ModelPrice, Profile
from bot.price_offers import MatchResult
from bot.pricing import Price, bare_id


@dataclass(frozen=True)
class StoreResult:
    added: list[str]  # model ids with no stored price before
    updated: int  # stored prices rewritten (fetched_at moves even when the price did not)


def wanted_models(session: Session, known: list[str]) -> list[str]:
    """The model ids worth pricing: the shipped table's and every AIP's source model."""
    models = {bare_id(m) for m in session.scalars(select(Profile.model_id).distinct())}
    return sorted({*known, *(m for m in models if m)})


def store(session: Session, clock: Clock, region: str, result: MatchResult) -> StoreResult:
    now = clock()
    rows = {r.model_id: r for r in session.scalars(select(ModelPrice).where(ModelPrice.region == region))}
    added: list[str] = []
    updated = 0
    for model_id, price in sorted(result.prices.items()):
        text = {f: _text(getattr(price, f)) for f in ("input", "output", "cache_read", "cache_write")}
        source = result.sources.get(model_id, "")[:256]
        row = rows.get(model_id)
        if row is None:
            session.add(ModelPrice(region=region, model_id=model_id, source=source, fetched_at=now, **text))
            added.append(model_id)
            continue
        updated += 1
        for f, v in text.items():
            setattr(row, f, v)
        row.source, row.fetched_at = source, now
    session.flush()
    return StoreResult(added, updated)


def stored(session: Session, region: str) -> dict[str, Price]:
    rows = session.scalars(select(ModelPrice).where(ModelPrice.region == region))
    return {r.model_id: Price(Decimal(r.input), Decimal(r.output), Decimal(r.cache_read),
                              Decimal(r.cache_write)) for r in rows}


def fetched_at(session: Session, region: str) -> datetime | None:
    return session.scalar(select(func.max(ModelPrice.fetched_at)).where(ModelPrice.region == region))


def _text(value: Decimal) -> str:
    return f"{value.normalize():f}"


MARKETPLACE = "AmazonBedrockFoundationModels: "
EDITION = " (Amazon Bedrock Edition)"
# Providers whose Bedrock models are sold through AWS Marketplace (their own bill service name).
MARKETPLACE_PROVIDERS = frozenset({"anthropic", "cohere", "ai21", "writer", "stability", "luma"})


def marketplace_services(session: Session, model_ids: list[str]) -> tuple[list[str], list[str]]:
    """(the bill service names of these models that are Marketplace products, the Marketplace
    models whose name is not known yet — no `prices refresh` has matched them)."""
    from bot.price_offers import id_key

    names: dict[str, str] = {}
    for model_id, source in session.execute(select(ModelPrice.model_id, ModelPrice.source)):
        key = id_key(model_id)
        if key and source.startswith(MARKETPLACE):
            names[key] = source.removeprefix(MARKETPLACE).removesuffix(" (global)") + EDITION
    found, unknown = set(), set()
    for model_id in model_ids:
        key = id_key(model_id)
        if key and key in names:
            found.add(names[key])
        elif _provider(model_id) in MARKETPLACE_PROVIDERS:
            unknown.add(model_id)
    return sorted(found), sorted(unknown)


def _provider(model_id: str) -> str:
    from bot.price_offers import _GEO

    bare = _GEO.sub("", bare_id(model_id) or "")
    return bare.partition(".")[0]
