"""`bedrock-bot audit verify` and `audit checkpoint`.

Exit codes: 0 intact; 1 the chain is broken, cut or rewritten (one line says where);
2 it could not be checked (a keyed chain without the key, an unreadable checkpoint file).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bot.config import Settings
from bot.db import Database
from bot.errors import BotError
from bot.runtime import audit_keyring, build_services
from bot.services import audit
from bot.services import audit_anchor as anchor
from bot.services.audit_anchor import AnchorError, Checkpoint
from bot.services.directory import Actor


def add_commands(sub: Any) -> None:
    audit_p = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit_p.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="walk the hash chain and compare it with the last checkpoint; "
        "non-zero on the first broken row, a cut tail or a rewritten checkpointed row")
    verify.add_argument("--checkpoint-file", metavar="PATH",
                        help="checkpoints to compare with (default: BOT_AUDIT_CHECKPOINT_FILE)")
    verify.add_argument("--anchor", metavar="ID:HASH", action="append", default=[],
                        help="also compare with this checkpoint (as posted to Slack); repeatable")
    verify.set_defaults(func=cmd_verify)
    cp = audit_sub.add_parser("checkpoint", help="check the chain against the last checkpoint, "
                              "then append the head to the checkpoint file")
    cp.add_argument("--checkpoint-file", metavar="PATH",
                    help="the append-only file (default: BOT_AUDIT_CHECKPOINT_FILE)")
    cp.set_defaults(func=cmd_checkpoint)


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    path = args.checkpoint_file or settings.audit.checkpoint_file
    try:
        anchors = [anchor.parse_anchor(a) for a in args.anchor]
        last = anchor.read_last(path) if path else None
    except AnchorError as exc:
        print(f"audit verify: {exc}", file=sys.stderr)
        return 2
    if last is not None:
        anchors.insert(0, last)
    db = Database(settings.db.url, audit_keyring=audit_keyring(settings))
    try:
        with db.session_scope() as session:
            result = audit.verify(session, db.audit_keyring)
            problems = [p for p in (anchor.compare(session, cp) for cp in anchors) if p]
    finally:
        db.dispose()
    if not result.ok:
        print(f"audit chain BROKEN at row {result.broken_id}: {result.reason}", file=sys.stderr)
        return 2 if result.unverifiable else 1
    if problems:
        print(f"audit chain CUT OR REWRITTEN: {problems[0]}", file=sys.stderr)
        return 1
    print(f"audit chain intact: {result.rows} rows{_keyed(result)}")
    print(_anchored(last, path, args.anchor, settings.audit.key is not None))
    return 0


def _keyed(result: audit.VerifyResult) -> str:
    if result.keyed_from is None:
        return ", SHA-256 only (no row is keyed)"
    if result.keyed_from == 1:
        return ", all keyed"
    return f", keyed from row {result.keyed_from} (rows before it: SHA-256 only)"


def _anchored(last: Checkpoint | None, path: str | None, extra: list[str], keyed: bool) -> str:
    if last is not None:
        return f"matches the checkpoint of {last.at} (row {last.id}) in {path}"
    if extra:
        return "matches the given anchor" + ("s" if len(extra) > 1 else "")
    if path:
        return f"no checkpoint in {path} yet: a cut tail would not be seen"
    if keyed:
        return "no checkpoint to compare with: a cut tail would not be seen"
    return ("no checkpoint and no BOT_AUDIT_KEY: a cut tail, or rows rewritten with their hashes "
            "recomputed, would not be seen")


def cmd_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from bot.cli import cli_actor  # bot.cli imports this module
    from bot.flows import audit_anchor as flow

    path = args.checkpoint_file or settings.audit.checkpoint_file
    if not path:
        print("audit checkpoint: set BOT_AUDIT_CHECKPOINT_FILE or pass --checkpoint-file",
              file=sys.stderr)
        return 2
    services = build_services(settings)
    try:
        result = flow.checkpoint(services, path, post=False, actor=Actor(cli_actor()))
    except flow.ChainBroken as exc:
        print(f"audit checkpoint: not written: {exc}", file=sys.stderr)
        return 1
    except BotError as exc:
        print(f"audit checkpoint: {exc}", file=sys.stderr)
        return 2
    finally:
        services.db.dispose()
    print(f"audit checkpoint: {result}")
    return 0

