"""The core of the `bedrock-bot` command: parser and the subcommands that need no Slack.

`handlers.main` adds the ones that serve Slack or run jobs (bot/ never imports handlers).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import re
import sys
from collections.abc import Callable

from pydantic import ValidationError

from bot import cli_audit, logline
from bot.config import Settings, load_settings
from bot.migrate import upgrade

Command = Callable[[argparse.Namespace, Settings], int]


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    upgrade(settings.db.url)
    print(f"database at head: {_safe_url(settings.db.url)}")
    return 0


def cmd_manifest(args: argparse.Namespace, settings: Settings) -> int:
    from bot.manifest import build_manifest, next_steps, to_json

    try:
        text = to_json(build_manifest(args.url))
    except ValueError as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return 2
    print(text, end="")  # stdout is the JSON alone: `> manifest.json` and `| jq` keep working
    if not args.quiet:
        print(next_steps(args.url), end="", file=sys.stderr)
    return 0


def cmd_iam_policy(args: argparse.Namespace, settings: Settings) -> int:
    from bot.config import REGION_HINT
    from bot.iam_policy import bot_policy, partition_of, permission_set_policy, to_json

    aws = settings.aws
    if args.permission_set:  # no ARN of this account: the partition is all it names
        print(to_json(permission_set_policy(partition_of(aws.region))), end="")
        return 0
    if not aws.region:  # every ARN names the region: never guess one
        print(f"iam-policy: {REGION_HINT}", file=sys.stderr)
        return 2
    try:
        policy = bot_policy(aws.region, args.account_id, aws.sns_topic_arns or None, aws.sqs_queue_url,
                            log_group=aws.invocation_log_group, principal_path=args.principal_path,
                            database_secret=aws.database_secret, usage_stream=aws.usage_stream)
    except ValueError as exc:
        print(f"iam-policy: {exc}", file=sys.stderr)
        return 2
    print(to_json(policy), end="")
    return 0


def cmd_check_access(args: argparse.Namespace, settings: Settings) -> int:
    """Every subject: each principal, its kind, how a revoke would block it, what is missing.
    Exit 1 when some principal could not be blocked."""
    from bot.flows.access import check
    from bot.render.enforcement import check_text
    from bot.runtime import build_services
    from bot.services.directory import Actor

    checks = check(build_services(settings), Actor(cli_actor()), None)
    print(check_text(checks))
    return 0 if all(c.blockable or not c.methods for c in checks) else 1


def _safe_url(url: str) -> str:
    """The URL without a password (user:password@ or ?password=), for messages."""
    url = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", url)
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:  # type: ignore[type-arg]
    parser = argparse.ArgumentParser(prog="bedrock-bot",
                                     description="Govern Amazon Bedrock usage from Slack.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="upgrade the database to the latest schema").set_defaults(
        func=cmd_migrate)
    cli_audit.add_commands(sub)
    manifest = sub.add_parser("manifest", help="print the Slack app manifest (JSON; next steps on stderr)")
    mode = manifest.add_mutually_exclusive_group()
    mode.add_argument("--url", help="public https base URL of `serve` (HTTP mode)")
    mode.add_argument("--socket", action="store_true",
                      help="Socket Mode, for `bedrock-bot socket` (the default without --url)")
    manifest.add_argument("-q", "--quiet", action="store_true", help="the JSON only, no next steps")
    manifest.set_defaults(func=cmd_manifest, needs_database=False)
    policy = sub.add_parser("iam-policy", help="print the least-privilege IAM policy the bot needs")
    policy.add_argument("--account-id", help="12-digit account id (default: any)")
    policy.add_argument("--principal-path", default="/",
                        help="IAM path of the users/roles the bot may deny (GovernedPrincipalPath)")
    policy.add_argument("--permission-set", action="store_true",
                        help="print the baseline IAM Identity Center permission-set policy for "
                             "BOT_SSO_METHOD=tags instead")
    policy.set_defaults(func=cmd_iam_policy, needs_database=False)
    sub.add_parser("check-access", help="how a revoke would block each subject's principals"
                   ).set_defaults(func=cmd_check_access)
    from bot.cli_prices import add_parser as add_prices

    add_prices(sub)
    return parser, sub


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    # One line per record, control characters escaped, length capped (bot/logline.py).
    logline.install(logging.DEBUG if args.verbose else logging.INFO)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):  # their DEBUG logs carry credentials
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        settings = load_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = first.get("loc", ("?",))[0]
        print(f"configuration error: {name}: {first.get('msg')}", file=sys.stderr)
        return 2
    if getattr(args, "needs_database", True):
        from bot.db_secret import DatabaseSecretError, resolve

        try:  # BOT_DATABASE_SECRET: the password goes into DATABASE_URL before anything connects
            settings = resolve(settings)
        except DatabaseSecretError as exc:
            print(f"configuration error: BOT_DATABASE_SECRET: {exc}", file=sys.stderr)
            return 2
    return int(args.func(args, settings))


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    return run(parser, argv)
