"""On-demand Bedrock prices per model (USD per 1,000 tokens) and exact cost arithmetic.

Three layers, later ones winning per model: the packaged `pricing.json` (us-east-1 list prices,
the offline fallback), prices stored by `bedrock-bot prices refresh` from the AWS Price List API
(`stored`), and an override file of the same shape as pricing.json (`BOT_PRICING_FILE`).
A model in none of them has no price: its calls are counted in tokens and flagged unpriced.
Costs are integer micro-dollars computed with `Decimal`, rounded
half-up once per call, so sums of stored costs never drift with float error.

Model id forms accepted by `price_of` (first listed key wins):
  1. the id itself, lower-cased (`anthropic.claude-3-haiku-20240307-v1:0`); ARNs of a
     foundation model or of a system inference profile are reduced to that id first;
  2. without one leading geo segment (`us.`, `eu.`, `apac.`, `global.` …) — tried only after
     the exact id, so a geo-specific key (`global.anthropic…`) can carry its own price;
  3. without a context-window variant suffix (`…-v1:0:200k` → `…-v1:0`);
  4. with the revision `:0` implied: `…-v1` finds `…-v1:0` and `…-v1:0` finds `…-v1`.
     Only `:0` is implied; `:1`, `:2` name different model revisions and must match.
Application inference profile ids/ARNs carry no model: resolve the AIP's source model first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from importlib import resources
from pathlib import Path
from typing import Any

FIELDS = ("input", "output", "cache_read", "cache_write")
_ENTRY_KEYS = {*FIELDS, "note"}
_THOUSAND = Decimal(1000)
_MICRO = Decimal(1_000_000)
# arn:aws:bedrock:us-east-1::foundation-model/<id>, …:123456789012:inference-profile/<id>
_ARN = re.compile(r"^arn:aws[a-z-]*:bedrock:[a-z0-9-]*:\d*:(?P<kind>[a-z-]+)/(?P<id>.+)$")
_PRICED_ARN_KINDS = ("foundation-model", "inference-profile")
_CONTEXT_SUFFIX = re.compile(r":\d+k$")
_REVISION = re.compile(r":\d+$")


@dataclass(frozen=True)
class Price:
    """USD per 1,000 tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal


class PriceTable:
    def __init__(self, prices: Mapping[str, Price], *, as_of: str | None = None,
                 source: str | None = None, origins: Mapping[str, str] | None = None) -> None:
        self._prices: dict[str, Price] = {}
        self._origins: dict[str, str] = {}
        for model_id, price in prices.items():
            key = _bare(model_id)
            if key is None:
                raise ValueError(f"not a priceable model id: {model_id!r}")
            self._prices[key] = price
            self._origins[key] = (origins or {}).get(model_id, "table")
        self.as_of = as_of
        self.source = source
        # True when stored (Price List) prices could not be read: the holder loads again later.
        self.stored_unreadable = False

    @classmethod
    def load(cls, override_file: str | None = None, *,
             stored: Mapping[str, Price] | None = None, stored_label: str = "price list"
             ) -> PriceTable:
        """The packaged table, then `stored` (Price List API prices from the database), then
        entries from `override_file`, each replacing or adding per model."""
        packaged = resources.files("bot").joinpath("pricing.json")
        doc = _parse(packaged.read_text(encoding="utf-8"), "bot/pricing.json")
        prices = _prices(doc, "bot/pricing.json")
        origins = dict.fromkeys(prices, "bot/pricing.json")
        for model_id, price in (stored or {}).items():
            key = _bare(model_id)
            if key is not None:
                prices[key], origins[key] = price, stored_label
        if override_file is not None:
            extra = _prices(_parse(_read(override_file), override_file), override_file)
            prices.update(extra)
            origins.update(dict.fromkeys(extra, override_file))
        return cls(prices, as_of=_text(doc.get("as_of")), source=_text(doc.get("source")),
                   origins=origins)

    def __len__(self) -> int:
        return len(self._prices)

    def entries(self) -> list[tuple[str, Price, str]]:
        """(model id, price, where the price came from), sorted by model id."""
        return [(k, self._prices[k], self._origins.get(k, "table")) for k in sorted(self._prices)]

    def lookup(self, model_id: str) -> tuple[str, Price, str] | None:
        """(the key that priced `model_id`, its price, its origin), or None when unpriced."""
        for candidate in _candidates(model_id):
            if candidate in self._prices:
                return candidate, self._prices[candidate], self._origins.get(candidate, "table")
        return None

    def price_of(self, model_id: str) -> Price | None:
        for candidate in _candidates(model_id):
            if candidate in self._prices:
                return self._prices[candidate]
        return None

    def known(self, model_id: str) -> bool:
        return self.price_of(model_id) is not None

    def cost_micro_usd(self, model_id: str, input_tokens: int, output_tokens: int,
                       cache_read: int = 0, cache_write: int = 0) -> int:
        """Estimated cost in micro-USD; 0 for a model without a price (callers check `known` and
        count such calls as unpriced: see `services.ledger.Totals.unpriced_tokens`)."""
        counts = (input_tokens, output_tokens, cache_read, cache_write)
        if any(n < 0 for n in counts):
            raise ValueError("token counts must be >= 0")
        price = self.price_of(model_id)
        if price is None:
            return 0
        rates = (price.input, price.output, price.cache_read, price.cache_write)
        with localcontext() as ctx:
            ctx.prec = 60  # exact for any realistic count x rate; no silent rounding
            usd_thousandths = sum((Decimal(n) * r for n, r in zip(counts, rates, strict=True)),
                                  Decimal(0))
            micro = usd_thousandths * _MICRO / _THOUSAND
            return int(micro.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# -- id normalisation -------------------------------------------------------------------


def _bare(model_id: str) -> str | None:
    """Lower-cased id, ARNs reduced to their model/profile id; None for other ARNs."""
    text = model_id.strip().lower()
    match = _ARN.match(text)
    if match is None:
        return text or None
    return match["id"] if match["kind"] in _PRICED_ARN_KINDS else None


def _candidates(model_id: str) -> Iterator[str]:
    bare = _bare(model_id)
    if bare is None:
        return
    forms = [bare]
    head, _, rest = bare.partition(".")
    if head and "." in rest:  # a geo prefix: what remains is still provider.model
        forms.append(rest)
    for form in forms:
        yield form
        plain = _CONTEXT_SUFFIX.sub("", form)
        if plain != form:
            yield plain
        if plain.endswith(":0"):
            yield plain[:-2]
        elif not _REVISION.search(plain):
            yield plain + ":0"


# -- file parsing -------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ValueError(f"pricing file {path}: cannot read: {reason}") from exc


def _parse(text: str, name: str) -> dict[str, Any]:
    try:
        # Decimal for every number: prices stay exact; NaN/Infinity are refused below.
        doc = json.loads(text, parse_float=Decimal, parse_int=Decimal,
                         parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"pricing file {name}: not JSON: {exc.msg} at line {exc.lineno}") from exc
    except _BadConstant as exc:
        raise ValueError(f"pricing file {name}: {exc} is not a price") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ValueError(f"pricing file {name}: expected an object with a 'models' object")
    return doc


class _BadConstant(Exception):
    pass


def _reject_constant(token: str) -> Any:
    raise _BadConstant(token)


def _prices(doc: Mapping[str, Any], name: str) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for model_id, entry in doc["models"].items():
        try:
            key = _bare(model_id)
            if key is None:
                raise ValueError("not a model id")
            prices[key] = _price(entry)
        except ValueError as exc:
            raise ValueError(f"pricing file {name}: entry {model_id!r}: {exc}") from None
    return prices


def _price(entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise ValueError("expected an object of prices")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected {', '.join(FIELDS)})")
    for required in ("input", "output"):
        if required not in entry:
            raise ValueError(f"missing {required!r}")
    values = {f: _amount(f, entry[f]) for f in FIELDS if f in entry}
    # No caching price listed: the model either never reports cache tokens or bills
    # them as plain input (Amazon Nova cache writes).
    values.setdefault("cache_read", values["input"])
    values.setdefault("cache_write", values["input"])
    return Price(**values)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _amount(field: str, raw: Any) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, Decimal | str):
        raise ValueError(f"{field!r} must be a number or a numeric string")
    try:
        value = Decimal(raw.strip()) if isinstance(raw, str) else raw
    except InvalidOperation:
        raise ValueError(f"{field!r} is not a number: {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{field!r} must be a finite price >= 0, got {raw}")
    return value


def bare_id(model_id: str) -> str | None:
    """The key a model id is priced by (lower-cased, ARNs reduced); None for an AIP ARN."""
    return _bare(model_id)


def packaged_aliases() -> dict[str, str]:
    """pricing.json's `price_list_names`: Price List model name → model id."""
    doc = _parse(resources.files("bot").joinpath("pricing.json").read_text(encoding="utf-8"),
                 "bot/pricing.json")
    names = doc.get("price_list_names") or {}
    return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
