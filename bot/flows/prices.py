"""Prices: AWS Price List → database (`bedrock-bot prices refresh`, the daily `prices_refresh` job).

    plan    which models matter: one short transaction (`runner.step`)
    call    `GetProducts` for both Bedrock service codes, no transaction open (`runner.call`)
    record  match and store, audited (`prices.refresh`), one short transaction
    tell    nothing to Slack: the job logs what changed, the CLI prints it

Loading prices for the rest of the bot is `load_prices` (`Services.prices`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from bot.aws.price_list import ENDPOINT_REGIONS, PriceList
from bot.clock import Clock
from bot.db import Database
from bot.flows.runner import call, step
from bot.price_offers import SERVICE_CODES, OfferError, OfferRate, match, parse_item
from bot.pricing import PriceTable, packaged_aliases
from bot.runtime import Services
from bot.services import audit, prices
from bot.services.directory import Actor

log = logging.getLogger(__name__)
NAME = "prices_refresh"
ACTOR = Actor.system(NAME)


@dataclass(frozen=True)
class RefreshReport:
    region: str
    items: int
    rates: int
    malformed: int
    stored: int = 0
    new: list[str] = field(default_factory=list)  # had no stored price before
    changed: list[str] = field(default_factory=list)  # differs from the price in use before
    unmatched: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    calls: int = 0


def endpoint_region(region: str) -> str:
    """The Price List Query API region nearest the bot's (the API lives in only three)."""
    if region in ENDPOINT_REGIONS:
        return region
    if region.startswith(("eu-", "me-", "af-", "il-")):
        return "eu-central-1"
    if region.startswith("ap-"):
        return "ap-south-1"
    return "us-east-1"


def fetch_rates(price_list: PriceList, region: str) -> tuple[list[OfferRate], int, int]:
    """(rates, items read, malformed items) for both Bedrock offers in `region`."""
    rates: list[OfferRate] = []
    items = malformed = 0
    for code in SERVICE_CODES:
        for item in price_list.products(code, region):
            items += 1
            try:
                rates.extend(parse_item(item))
            except OfferError:
                malformed += 1
    return rates, items, malformed


def refresh(db: Database, clock: Clock, price_list: PriceList, region: str,
            table: PriceTable, actor: Actor = ACTOR) -> RefreshReport:
    """Plan, fetch (no transaction open), match and store. An AwsError is audited and
    re-raised; the prices in use stay."""
    target = f"price-list:{region}"
    keys = [k for k, _, _ in table.entries()]
    wanted = step(db, clock, actor, "prices.refresh", target,
                  lambda session: prices.wanted_models(session, keys))
    rates, items, malformed = call(db, clock, actor, "prices.refresh", target,
                                   lambda: fetch_rates(price_list, region))
    fallback = {k: p for k, p, _ in table.entries()}
    result = match(rates, wanted, region, aliases=packaged_aliases(), fallback=fallback)
    changed = sorted(m for m, p in result.prices.items() if table.price_of(m) != p)

    def record(session: Session) -> RefreshReport:
        stored = prices.store(session, clock, region, result)
        audit.record(session, clock, actor.label, "prices.refresh", target,
                     {"items": items, "rates": len(rates), "stored": len(result.prices),
                      "new": len(stored.added), "changed": changed[:50],
                      "unmatched": len(result.unmatched), "conflicts": result.conflicts[:20],
                      "malformed": malformed})
        return RefreshReport(region, items, len(rates), malformed, len(result.prices),
                             stored.added, changed, result.unmatched, result.conflicts,
                             result.incomplete, price_list.calls)

    return step(db, clock, actor, "prices.refresh", target, record)


def run(s: Services) -> RefreshReport:
    """The daily job: refresh, log what changed, and price the next sync with it."""
    report = refresh(s.db, s.clock, s.price_list, s.settings.aws.region, s.prices)
    for line in report_lines(report):
        log.info("prices refresh: %s", line)
    s.reload_prices()
    return report


def load_prices(db: Database, region: str, override_file: str | None) -> PriceTable:
    """Shipped table < stored Price List prices < override file. The database unreadable (not
    migrated yet, down): the shipped table and the override, with a warning."""
    unreadable = False
    try:
        with db.session_scope() as session:
            stored = prices.stored(session, region)
            when = prices.fetched_at(session, region)
    except Exception as exc:  # the fallback is the point: never stop pricing for this
        log.warning("stored prices unreadable (%s): using the shipped table", type(exc).__name__)
        stored, when, unreadable = {}, None, True
    label = f"AWS Price List {region} {when:%Y-%m-%d}" if when else "AWS Price List"
    table = PriceTable.load(override_file, stored=stored, stored_label=label)
    table.stored_unreadable = unreadable
    return table


def report_lines(r: RefreshReport) -> list[str]:
    """What `prices refresh` prints (and the job logs)."""
    lines = [f"price list {r.region}: {r.items} products read in {r.calls} calls, "
             f"{r.rates} on-demand token prices",
             f"stored {r.stored} model prices: {len(r.changed)} differ from the prices in use, "
             f"{len(r.new)} models had no stored price"]
    for label, names in (("changed", r.changed),):
        if names:
            lines.append(f"{label}: " + ", ".join(names[:30]) + (" …" if len(names) > 30 else ""))
    if r.conflicts:
        lines.append("SKUs disagree or the name is ambiguous (not stored, unless said): "
                     + "; ".join(r.conflicts[:20]))
    if r.incomplete:
        lines.append("not stored, no input or output price: " + "; ".join(r.incomplete[:20]))
    if r.unmatched:
        lines.append(f"{len(r.unmatched)} Price List models match no model the bot knows "
                     "(add one to pricing.json price_list_names if you use it): "
                     + "; ".join(r.unmatched[:15]) + (" …" if len(r.unmatched) > 15 else ""))
    if r.malformed:
        lines.append(f"{r.malformed} items were not product JSON and were skipped")
    return lines
