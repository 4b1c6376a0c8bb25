"""`bedrock-bot prices refresh | show [model]` (wired into bot/cli.py's parser)."""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from typing import Any

from bot.config import Settings
from bot.errors import AwsError
from bot.pricing import Price, PriceTable

_MILLION = Decimal(1000)  # per-1K prices × 1000 = per 1M tokens


def _services(settings: Settings) -> Any:
    from bot.runtime import build_services

    return build_services(settings)


def cmd_prices_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from bot.cli import cli_actor
    from bot.flows.prices import refresh, report_lines
    from bot.services.directory import Actor

    services = _services(settings)
    try:
        report = refresh(services.db, services.clock, services.price_list, settings.aws.region,
                         services.prices, actor=Actor(cli_actor()))
    except AwsError as exc:
        print(f"prices refresh: {exc} (the shipped table and stored prices stay in use)",
              file=sys.stderr)
        return 1
    print("\n".join(report_lines(report)))
    return 0


def cmd_prices_show(args: argparse.Namespace, settings: Settings) -> int:
    table: PriceTable = _services(settings).prices
    if args.model:
        found = table.lookup(args.model)
        if found is None:
            print(f"{args.model}: no price (its calls are counted in tokens and flagged unpriced; "
                  "run `bedrock-bot prices refresh` or add it to BOT_PRICING_FILE)")
            return 1
        key, price, origin = found
        print(price_lines([(key, price, origin)], header=args.model != key and f"{args.model} → {key}"))
        return 0
    print(price_lines(table.entries()))
    return 0


def price_lines(entries: list[tuple[str, Price, str]], header: str | bool = False) -> str:
    """USD per 1M tokens (the unit AWS's pricing page uses), with where each price came from."""
    rows: list[tuple[str, ...]] = [("model", "input", "output", "cache read", "cache write", "from")]
    for key, p, origin in entries:
        rows.append((key, *(_per_m(getattr(p, f)) for f in ("input", "output", "cache_read",
                                                            "cache_write")), origin))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [str(header)] if header else []
    lines.append("USD per 1M tokens")
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _per_m(per_1k: Decimal) -> str:
    return f"{(per_1k * _MILLION).normalize():f}"


def add_parser(sub: Any) -> None:
    prices = sub.add_parser("prices", help="Bedrock prices: refresh from the AWS Price List API, show")
    prices_sub = prices.add_subparsers(dest="prices_command", required=True)
    prices_sub.add_parser("refresh", help="read the AWS Price List API now and store the prices"
                          ).set_defaults(func=cmd_prices_refresh)
    show = prices_sub.add_parser("show", help="the prices in use (all, or one model)")
    show.add_argument("model", nargs="?", help="a model id, geo-profile id or model ARN")
    show.set_defaults(func=cmd_prices_show)
