"""AWS Price List `GetProducts` items for Amazon Bedrock → token prices per model id (pure).

Where Bedrock's on-demand token prices live (verified against recorded responses; see
docs/billing.md for the pages):

- service code ``AmazonBedrock``: Amazon's own and openly licensed models (Nova, Titan, Llama,
  Mistral, DeepSeek, …). The model is the ``model`` attribute (``titanModel`` for some Titan
  SKUs), a *display name* such as ``Nova Pro``; ``inferenceType`` says ``Input tokens`` /
  ``Output tokens`` / cache reads and writes; tiers other than standard carry a
  ``service_tier`` attribute or a suffix (``… flex``, ``… priority``), batch rows a ``feature``
  of ``Batch Inference``. Prices are per ``1K tokens``.
- service code ``AmazonBedrockFoundationModels``: models sold through AWS Marketplace
  (Anthropic Claude, Cohere, AI21, …). The model is ``servicename`` (``Claude Sonnet 4.5
  (Amazon Bedrock Edition)``); the kind of token is only in ``usagetype``
  (``USE1-MP:USE1_InputTokenCount-Units``, ``…_OutputTokenCount_Global-Units``,
  ``…_CacheReadInputTokenCount-Units``, newer ``…_input_tokens_standard-Units``); prices are per
  1M tokens (unit ``1M tokens``, or ``Units`` with "1M" in the description).

``_Global`` / ``global`` usage types are the global cross-region profile's price (stored under
``global.<model id>``); geo profiles (``us.``, ``eu.``, …) bill at the source region's price and
find the bare model's entry (bot/pricing.py's lookup order).

Neither offer names Bedrock model ids, so names are matched to the ids the bot knows
(bot/pricing.json's keys and its AIPs' models) by a normalised key: ``Nova Pro`` and
``amazon.nova-pro-v1:0`` both become ``novapro``; ``Claude 3.5 Sonnet`` and
``anthropic.claude-3-5-sonnet-20240620-v1:0`` both ``claude35sonnet``. A version ``-v1``/``-v0`` is
dropped, a later one kept (``…-20241022-v2:0`` is "Claude 3.5 Sonnet v2"). An alias (pricing.json
``price_list_names``) settles names that do not normalise alike; a name whose key fits several
ids that the table prices differently is reported as ambiguous. A name that maps to no known
id, and a model whose two SKUs disagree on a price, are reported, never guessed.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from bot.pricing import FIELDS, Price, bare_id

SERVICE_CODES = ("AmazonBedrock", "AmazonBedrockFoundationModels")
REGIONAL, GLOBAL = "regional", "global"
_THOUSAND = Decimal(1000)
_EDITION = re.compile(r"\s*\(amazon bedrock edition\)\s*$", re.IGNORECASE)
# Anything that is not the plain on-demand, standard-tier price of a token.
_NOT_STANDARD = re.compile(r"batch|flex|priority|provisioned|reserved|latency|customi[sz]|"
                           r"custom[-_ ]model|training|storage|\brft\b", re.IGNORECASE)
_GEO = re.compile(r"^(?:us|eu|apac|ap|jp|au|ca|us-gov|global)\.")
_DATE = re.compile(r"-\d{8}")
_VERSION = re.compile(r"-v[01]$")  # v2+ name a different model ("Claude 3.5 Sonnet v2")


class OfferError(ValueError):
    """A PriceList item that is not the JSON product document the API returns."""


@dataclass(frozen=True)
class OfferRate:
    """One on-demand token price from the Price List, in USD per 1,000 tokens."""

    name: str  # the Price List's model name ("Nova Pro", "Claude Sonnet 4.5")
    region: str
    field: str  # input | output | cache_read | cache_write
    scope: str  # regional | global
    usd_per_1k: Decimal
    service: str
    usagetype: str


@dataclass
class MatchResult:
    prices: dict[str, Price] = field(default_factory=dict)  # model id ("global." too) → price
    sources: dict[str, str] = field(default_factory=dict)  # model id → "AmazonBedrock: Nova Pro"
    unmatched: list[str] = field(default_factory=list)  # Price List names no known id matched
    conflicts: list[str] = field(default_factory=list)  # names whose SKUs disagree
    incomplete: list[str] = field(default_factory=list)  # matched, but no input or output price


# ---------------------------------------------------------------- one item


def parse_item(item: str | Mapping[str, Any]) -> list[OfferRate]:
    """The standard on-demand token prices in one PriceList entry ([] for anything else:
    images, batch, flex, provisioned throughput …). Raises OfferError on a malformed entry."""
    doc = _load(item)
    product = doc.get("product")
    attrs = product.get("attributes") if isinstance(product, dict) else None
    if not isinstance(attrs, dict):
        raise OfferError("no product.attributes")
    service = str(doc.get("serviceCode") or attrs.get("servicecode") or "")
    name = _model_name(attrs)
    region = attrs.get("regionCode")
    if not name or not isinstance(region, str) or not region:
        return []
    usagetype = str(attrs.get("usagetype") or "")
    kind = f"{attrs.get('inferenceType') or ''} {usagetype}"
    tier = str(attrs.get("service_tier") or attrs.get("serviceTier") or "standard")
    if tier.lower() != "standard" or _NOT_STANDARD.search(f"{kind} {attrs.get('feature') or ''}"):
        return []
    token_field = _token_field(kind)
    if token_field is None:
        return []
    scope = GLOBAL if "global" in kind.lower() else REGIONAL
    return [OfferRate(name, region, token_field, scope, usd, service, usagetype)
            for usd in _on_demand_prices(doc)]


def _load(item: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, str):
        try:
            doc = json.loads(item, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise OfferError(f"not JSON: {exc.msg}") from None
    else:
        doc = dict(item)
    if not isinstance(doc, dict):
        raise OfferError("not a JSON object")
    return doc


def _model_name(attrs: Mapping[str, Any]) -> str | None:
    for key in ("model", "titanModel", "servicename"):
        value = attrs.get(key)
        if isinstance(value, str) and value.strip():
            return _EDITION.sub("", value.strip())
    return None


def _token_field(kind: str) -> str | None:
    k = kind.lower().replace("_", "").replace("-", "").replace(" ", "")
    if "token" not in k:
        return None
    if "cache" in k:
        if re.search(r"1h|onehour|60m", k):
            return None  # the 1-hour cache write: the bot's cache_write is the default 5-minute one
        return "cache_read" if "read" in k else "cache_write" if "write" in k else None
    if "input" in k:
        return "input"
    if "output" in k:
        return "output"
    return None


def _on_demand_prices(doc: Mapping[str, Any]) -> list[Decimal]:
    """USD per 1K tokens of the first tier (beginRange 0) of each OnDemand term."""
    terms = doc.get("terms")
    on_demand = terms.get("OnDemand") if isinstance(terms, dict) else None
    if not isinstance(on_demand, dict):
        return []
    found = []
    for term in on_demand.values():
        dims = term.get("priceDimensions") if isinstance(term, dict) else None
        for dim in (dims or {}).values() if isinstance(dims, dict) else ():
            if not isinstance(dim, dict) or str(dim.get("beginRange", "0")) not in ("0", "0.0"):
                continue
            usd = _per_1k(dim)
            if usd is not None:
                found.append(usd)
    return found


def _per_1k(dim: Mapping[str, Any]) -> Decimal | None:
    per_unit = dim.get("pricePerUnit")
    raw = per_unit.get("USD") if isinstance(per_unit, dict) else None
    try:
        value = Decimal(str(raw))
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite() or value < 0:
        return None
    unit = str(dim.get("unit") or "").strip().lower()
    text = f"{unit} {str(dim.get('description') or '').lower()}"
    if unit in ("1k tokens", "1k token") or (unit == "units" and re.search(r"\b1k\b", text)):
        return value
    if unit in ("1m tokens", "1m token") or (unit == "units" and re.search(r"\b1m\b|million", text)):
        return value / _THOUSAND
    if unit in ("tokens", "token"):
        return value * _THOUSAND
    return None  # a unit of unknown scale is never guessed


# ---------------------------------------------------------------- names → ids


def name_key(name: str) -> str:
    """"Claude Sonnet 4.5 (Amazon Bedrock Edition)" → "claudesonnet45"."""
    return re.sub(r"[^a-z0-9]", "", _EDITION.sub("", name).lower().replace("+", "plus"))


def id_key(model_id: str) -> str | None:
    """"us.anthropic.claude-3-5-sonnet-20241022-v2:0" → "claude35sonnet"."""
    bare = bare_id(model_id)
    if bare is None:
        return None
    bare = _GEO.sub("", bare)
    _, _, model = bare.partition(".")
    model = re.sub(r"(:\d+)+k?$", "", model or bare)
    model = re.sub(r":\d+k$", "", model)
    model = _VERSION.sub("", model)
    model = _DATE.sub("", model)
    return re.sub(r"[^a-z0-9]", "", model) or None


def match(rates: Iterable[OfferRate], model_ids: Iterable[str], region: str, *,
          aliases: Mapping[str, str] | None = None,
          fallback: Mapping[str, Price] | None = None) -> MatchResult:
    """Prices per known model id from the region's rates. `aliases` maps a Price List name to
    a model id; `fallback` gives cache prices an offer does not list (else the input price)."""
    table: dict[tuple[str, str, str], set[Decimal]] = defaultdict(set)
    names: dict[str, str] = {}
    for r in rates:
        if r.region != region:
            continue
        table[(name_key(r.name), r.scope, r.field)].add(r.usd_per_1k)
        names.setdefault(name_key(r.name), f"{r.service}: {r.name}")
    by_key: dict[str, list[str]] = defaultdict(list)
    for model_id in sorted({m for m in (bare_id(x) for x in model_ids) if m}):
        if model_id.startswith("global."):
            continue  # priced from its bare model's global rates
        key = id_key(model_id)
        if key:
            by_key[key].append(model_id)
    for alias, model_id in (aliases or {}).items():
        bare = bare_id(model_id)
        if bare and bare not in by_key[name_key(alias)]:
            by_key[name_key(alias)].append(bare)
    out = MatchResult()
    for key, label in sorted(names.items()):
        ids = by_key.get(key)
        if not ids:
            out.unmatched.append(label)
            continue
        if len({(fallback or {}).get(i) for i in ids}) > 1:  # one name, ids priced apart: ambiguous
            out.conflicts.append(f"{label} (matches {', '.join(ids)})")
            continue
        for scope, prefix in ((REGIONAL, ""), (GLOBAL, "global.")):
            _price_for(out, table, key, scope, label, [prefix + i for i in ids], fallback or {})
    return out


def _price_for(out: MatchResult, table: Mapping[tuple[str, str, str], set[Decimal]], key: str,
               scope: str, label: str, ids: list[str], fallback: Mapping[str, Price]) -> None:
    found = {f: table.get((key, scope, f), set()) for f in FIELDS}
    if not any(found.values()):
        return
    if any(len(found[f]) > 1 for f in ("input", "output")):
        out.conflicts.append(f"{label} ({scope})")
        return
    for f in ("cache_read", "cache_write"):
        if len(found[f]) > 1:  # the token prices stand; the cache price is kept from the table
            out.conflicts.append(f"{label} ({scope}) {f}: kept the table's")
            found[f] = set()
    one = {f: next(iter(v)) for f, v in found.items() if v}
    if "input" not in one or "output" not in one:
        out.incomplete.append(f"{label} ({scope})")
        return
    for model_id in ids:
        old = fallback.get(model_id) or fallback.get(model_id.removeprefix("global."))
        out.prices[model_id] = Price(
            input=one["input"], output=one["output"],
            cache_read=one.get("cache_read", old.cache_read if old else one["input"]),
            cache_write=one.get("cache_write", old.cache_write if old else one["input"]))
        out.sources[model_id] = label + (" (global)" if scope == GLOBAL else "")
