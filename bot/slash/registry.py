"""Every `/bedrock` subcommand in one table: its usage line, help, parser and answer.

`/bedrock help`, the parser and the dispatch all read this table, so a subcommand is
added in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.errors import BadInput, BotError
from bot.flows.runner import audit_refusal, explain
from bot.render import messages
from bot.render.blocks import Reply
from bot.slash import answers
from bot.slash import grammar as g
from bot.slash.answers import Request

Parser = Callable[[str, list[str]], g.Command]
Answer = Callable[[Request, g.Command], Reply]


@dataclass(frozen=True)
class Subcommand:
    name: str
    usage: str
    help: str
    parse: Parser
    answer: Answer
    # Only reads: its answer may run in another process (handlers/answer_procs.py). It writes
    # nothing but a refusal's audit row (SQLite's write gate is per process) and posts only its reply.
    reads: bool = False


def _help(req: Request, cmd: g.Command) -> Reply:
    topic = cmd.topic if isinstance(cmd, g.Help) else None
    if topic is None:
        return messages.help_reply([(c.usage, c.help) for c in SUBCOMMANDS.values()])
    return messages.help_reply([(SUBCOMMANDS[topic].usage, SUBCOMMANDS[topic].help)], topic=True)


SUBCOMMANDS: dict[str, Subcommand] = {c.name: c for c in (
    Subcommand("help", "/bedrock help [subcommand]",
               "Show this help, or the details of one subcommand.", g.help_topic, _help, reads=True),
    Subcommand("usage", "/bedrock usage [@user|team] [today|yesterday|week|month|7d|30d]",
               "Tokens in/out, estimated cost, each limit as a bar, forecast and status. "
               "Anyone for themselves and their teams; admins for everyone.", g.usage_args, answers.usage,
               reads=True),
    Subcommand("limit", "/bedrock limit <subject> <amount>/<window> [input|output|requests] "
                        "[warn=80,90] [action=revoke|notify] [alarm=on|off] [grace=10m]  ·  "
                        "/bedrock limit <subject> +<amount>/<window> [input|output|requests] "
                        "[for 10m|24h|7d] <reason>",
               "Set or change a limit (admin). Amounts: 5M, 500k, 1.5B, $200. Windows: day, "
               "week, month (calendar) or 24h, 7d, 30d (rolling). `grace=10m`: on a breach, "
               "revoke only after the grace unless a raise is approved meanwhile. `+1M/day for 24h "
               "<reason>` grants a temporary raise on that limit (default: until the window ends).",
               g.limit_args, answers.limit),
    Subcommand("limits", "/bedrock limits [subject]",
               "List limits, for one subject or everyone.", g.optional_subject, answers.list_limits,
               reads=True),
    Subcommand("unlimit", "/bedrock unlimit <subject> [window] [metric]",
               "Remove a subject's limit(s) (admin).", g.unlimit_args, answers.unlimit),
    Subcommand("provision", "/bedrock provision <subject> <model> [key=value …]",
               "Create a tagged Application Inference Profile for a user or team (admin). "
               "Model: a foundation-model id or ARN, or a system inference-profile id.",
               g.provision_args, answers.provision),
    Subcommand("profiles", "/bedrock profiles [subject]",
               "List inference profiles and the ARN to call them with.", g.optional_subject,
               answers.list_profiles, reads=True),
    Subcommand("link", "/bedrock link @user <principal-arn> | <subject> mantle-project:<id>",
               "Bind a principal to a user, so revocation and log metering reach it (admin): an IAM "
               "user or role, a Bedrock API key's IAM user, or one session of a shared or SSO role "
               "(arn:aws:sts::<account>:assumed-role/<role>/<session>). mantle-project:proj_… "
               "meters a bedrock-mantle project's usage (AWS/BedrockMantle) for the subject.",
               g.link_args, answers.link),
    Subcommand("unlink", "/bedrock unlink <subject> <principal-arn> | mantle-project:<id>",
               "Remove a linked principal (admin); a block the bot put on it is taken off first. "
               "A mantle project stops counting for the subject (its past usage with it).",
               g.unlink_args, answers.unlink),
    Subcommand("check", "/bedrock check <subject>",
               "Each linked principal, its kind, how a revoke would block it and what is missing "
               "(admin).", g.check_args, answers.check),
    Subcommand("team", "/bedrock team <team-name> add|remove @user …",
               "Add or remove team members (admin); the team is created when first named.",
               g.team_args, answers.team),
    Subcommand("meter", "/bedrock meter <metadata-key>=<value> <subject>",
               "Attribute a requestMetadata value in invocation logs to a subject (admin).",
               g.meter_args, answers.meter),
    Subcommand("request", "/bedrock request more <amount>[/<window>] [input|output|requests] "
                          "[for 10m|24h|7d] <reason>",
               "Ask for a temporary raise on your own limit (of several windows, the one nearest "
               "its limit, or the one you name). Another admin approves, approves half or denies.",
               g.request_args, answers.request_more),
    Subcommand("revoke", "/bedrock revoke <subject> [reason]",
               "Deny a subject access to Bedrock now (admin).", g.with_reason, answers.revoke),
    Subcommand("restore", "/bedrock restore <subject> [reason] | <subject> break-glass <reason>",
               "Give access back (admin), or ask for it back: anyone else, and an admin whose own "
               "access it is (four eyes). `break-glass` (owner only, reason required) restores at "
               "once and is announced in the alert channel.", g.restore_args, answers.restore),
    Subcommand("audit", "/bedrock audit [subject] [n]", "Recent audit events (admin).", g.audit_args,
               answers.audit, reads=True),
    Subcommand("admins", "/bedrock admins [add|remove @user [owner|admin|approver]]",
               "List admins, or add/remove one (owner).", g.admins_args, answers.admins),
    Subcommand("digest", "/bedrock digest", "Post the daily digest now (admin).", g.no_args,
               answers.post_digest),
)}


def usage_line(name: str) -> str:
    return SUBCOMMANDS[name].usage if name in SUBCOMMANDS else SUBCOMMANDS["help"].usage


def reads_only(text: str) -> bool:
    """Whether the command in `text` only reads (an unknown or unparsable one is answered with
    its reason, which writes an audit row: False)."""
    try:
        words = g.tokenize(text)
    except BadInput:
        return False
    sub = SUBCOMMANDS.get(words[0].lower()) if words else SUBCOMMANDS["help"]
    return sub is not None and sub.reads


def parse(text: str) -> g.Command:
    """The text after `/bedrock` → a command. BadInput carries the subcommand's usage line."""
    name = "help"
    try:
        words = g.tokenize(text)
        if not words:
            return g.Help("help")
        name = words[0].lower()
        sub = SUBCOMMANDS.get(name)
        if sub is None:
            name = "help"
            raise BadInput(f"unknown subcommand {words[0][:40]!r}; try `/bedrock help`")
        cmd = sub.parse(name, words[1:])
        if isinstance(cmd, g.Help) and cmd.topic is not None and cmd.topic not in SUBCOMMANDS:
            raise BadInput(f"no help for {cmd.topic[:40]!r}")
        return cmd
    except BadInput as exc:
        raise exc if exc.usage else BadInput(exc.reason, usage_line(name)) from exc


def answer(req: Request, text: str) -> Reply:
    """Everything after the ack: one reply, a refusal's reason included (never a trace)."""
    try:
        cmd = parse(text)
    except BadInput as exc:
        s = req.services
        audit_refusal(s.db, s.clock, req.actor, "command.parse", "slack", str(exc))
        return messages.error_reply(explain(exc))
    try:
        return SUBCOMMANDS[cmd.name].answer(req, cmd)
    except BotError as exc:
        return messages.error_reply(explain(exc))
