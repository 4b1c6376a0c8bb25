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

from bot.config import Settings, load_settings
from bot.db import Database
from bot.migrate import upgrade
from bot.services import audit

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


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    db = Database(settings.db.url)
    with db.session_scope() as session:
        result = audit.verify(session)
    if result.ok:
        print(f"audit chain intact: {result.rows} rows")
        return 0
    print(f"audit chain BROKEN at row {result.broken_id}: {result.reason}", file=sys.stderr)
    return 1


def cmd_manifest(args: argparse.Namespace, settings: Settings) -> int:
    from bot.manifest import build_manifest, to_json

    try:
        print(to_json(build_manifest(args.url)), end="")
    except ValueError as exc:
        print(f"manifest: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_iam_policy(args: argparse.Namespace, settings: Settings) -> int:
    from bot.iam_policy import bot_policy, partition_of, permission_set_policy, to_json

    aws = settings.aws
    if args.permission_set:
        print(to_json(permission_set_policy(partition_of(aws.region))), end="")
        return 0
    try:
        policy = bot_policy(aws.region, args.account_id, aws.sns_topic_arns or None, aws.sqs_queue_url,
                            log_group=aws.invocation_log_group)
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
    audit_p = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit_p.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="walk the hash chain; non-zero on the first broken row"
                         ).set_defaults(func=cmd_audit_verify)
    manifest = sub.add_parser("manifest", help="print the Slack app manifest (JSON)")
    manifest.add_argument("--url", help="public https base URL; without it: a Socket Mode manifest")
    manifest.set_defaults(func=cmd_manifest)
    policy = sub.add_parser("iam-policy", help="print the least-privilege IAM policy the bot needs")
    policy.add_argument("--account-id", help="12-digit account id (default: any)")
    policy.add_argument("--permission-set", action="store_true",
                        help="print the baseline IAM Identity Center permission-set policy for "
                             "BOT_SSO_METHOD=tags instead")
    policy.set_defaults(func=cmd_iam_policy)
    sub.add_parser("check-access", help="how a revoke would block each subject's principals"
                   ).set_defaults(func=cmd_check_access)
    return parser, sub


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):  # their DEBUG logs carry credentials
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        settings = load_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = first.get("loc", ("?",))[0]
        print(f"configuration error: {name}: {first.get('msg')}", file=sys.stderr)
        return 2
    return int(args.func(args, settings))


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    return run(parser, argv)
