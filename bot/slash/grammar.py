"""`/bedrock …` text → a typed command. Pure: no database, no Slack.

Slack sends the text with `should_escape: true`, so mentions arrive as `<@U123|alice>` or
`<@U123>` and `&`, `<`, `>` as entities. Every refusal is a BadInput carrying the usage
line of the subcommand, so the person sees what to type instead.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import timedelta

from bot.aws.mantle_metrics import parse_project
from bot.errors import BadInput
from bot.quantities import (
    Amount,
    Metric,
    QuantityError,
    Window,
    parse_amount,
    parse_duration,
    parse_limit_spec,
    parse_percent_list,
    parse_window,
)
from bot.services.directory import SubjectRef

MAX_TEXT = 2000
MENTION = re.compile(r"^<@([UW][A-Z0-9]{2,20})(?:\|([^>]{0,80}))?>\Z")
PLAIN_NAME = re.compile(r"^@?([A-Za-z0-9][A-Za-z0-9._-]{0,63})\Z")
PERIODS = ("today", "yesterday", "week", "month", "7d", "30d")

@dataclass(frozen=True)
class Command:
    name: str


@dataclass(frozen=True)
class Help(Command):
    topic: str | None = None


@dataclass(frozen=True)
class UsageQuery(Command):
    subject: SubjectRef | None = None
    period: str | None = None


@dataclass(frozen=True)
class SetLimit(Command):
    subject: SubjectRef
    amount: Amount
    window: Window
    metric: Metric
    warn: tuple[int, ...] = (80, 90)
    action: str = "revoke"
    alarm: bool = True
    grace: timedelta = timedelta(0)


@dataclass(frozen=True)
class GrantRaise(Command):
    """`/bedrock limit alice +1M/day [metric] [for 24h] <reason>`: a temporary raise."""

    subject: SubjectRef
    amount: Amount
    window: Window
    metric: Metric
    duration: timedelta | None  # None: until the window ends
    reason: str


@dataclass(frozen=True)
class RequestMore(Command):
    """`/bedrock request more <amount>[/<window>] [metric] [for <duration>] <reason>`."""

    amount: Amount
    window: Window | None
    metric: Metric
    duration: timedelta | None
    reason: str


MAX_GRACE = timedelta(hours=24)
MAX_RAISE = timedelta(days=31)


@dataclass(frozen=True)
class SubjectCommand(Command):
    """limits / profiles / audit / unlimit / revoke / restore: a subject and some extras."""

    subject: SubjectRef | None = None
    reason: str = ""
    window: Window | None = None
    metric: Metric | None = None
    count: int = 20


@dataclass(frozen=True)
class Restore(SubjectCommand):
    """`restore <subject> [reason]`, or `restore <subject> break-glass <reason>` (owner)."""

    break_glass: bool = False


@dataclass(frozen=True)
class Provision(Command):
    subject: SubjectRef
    model: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Link(Command):
    subject: SubjectRef
    arn: str


@dataclass(frozen=True)
class MantleLink(Command):
    """A bedrock-mantle project metered for a subject (`mantle-project:<id>`)."""

    subject: SubjectRef
    project: str


MANTLE_PREFIX = "mantle-project:"


@dataclass(frozen=True)
class TeamChange(Command):
    team: str
    op: str
    members: tuple[SubjectRef, ...]


@dataclass(frozen=True)
class MeterMap(Command):
    key: str
    value: str
    subject: SubjectRef


@dataclass(frozen=True)
class Admins(Command):
    op: str | None = None
    user_id: str | None = None
    role: str = "admin"


def _bad(name: str, reason: str) -> BadInput:
    """The registry adds the subcommand's usage line to a refusal that has none."""
    return BadInput(reason)


def parse_subject(token: str, name: str) -> SubjectRef:
    m = MENTION.match(token)
    if m:
        return SubjectRef(name=(m.group(2) or None), slack_user_id=m.group(1))
    m = PLAIN_NAME.match(token)
    if m:
        return SubjectRef(name=m.group(1).lower())
    raise _bad(name, f"{token[:80]!r} is not a user mention or a subject name")


def parse_user_mention(token: str, name: str) -> str:
    m = MENTION.match(token)
    if not m:
        raise _bad(name, f"{token[:80]!r} is not a user mention (type @ and pick the person)")
    return m.group(1)


def tokenize(text: str) -> list[str]:
    if len(text) > MAX_TEXT:
        raise _bad("help", f"the command is too long ({len(text)} characters; at most {MAX_TEXT})")
    if any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        raise _bad("help", "the command contains control characters")
    return html.unescape(text).split() if "&" in text else text.split()


def help_topic(name: str, args: list[str]) -> Command:
    """The topic is checked against the registry by the registry."""
    if len(args) > 1:
        raise _bad(name, f"unexpected {args[1][:40]!r}")
    return Help(name, args[0].lower() if args else None)


def usage_args(name: str, args: list[str]) -> Command:
    subject, period = None, None
    for tok in args:
        if tok.lower() in PERIODS and period is None:
            period = tok.lower()
        elif subject is None:
            subject = parse_subject(tok, name)
        else:
            raise _bad(name, f"unexpected {tok[:40]!r}")
    return UsageQuery(name, subject, period)


def limit_args(name: str, args: list[str]) -> Command:
    if len(args) < 2:
        raise _bad(name, "a subject and an amount/window are needed, e.g. team-eng 5M/week")
    subject = parse_subject(args[0], name)
    if args[1].startswith("+"):
        return _grant_args(name, subject, args[1][1:], args[2:])
    try:
        amount, window = parse_limit_spec(args[1])
    except QuantityError as exc:
        raise _bad(name, str(exc)) from exc
    metric = Metric.COST if amount.is_cost else Metric.TOKENS
    warn: tuple[int, ...] = (80, 90)
    action, alarm, grace = "revoke", True, timedelta(0)
    for tok in args[2:]:
        key, _, val = tok.partition("=")
        key = key.lower()
        if not _:
            metric = _limit_metric(name, key, amount)
        elif key == "warn":
            try:
                warn = tuple(parse_percent_list(val))
            except QuantityError as exc:
                raise _bad(name, str(exc)) from exc
        elif key == "action" and val.lower() in ("revoke", "notify"):
            action = val.lower()
        elif key == "alarm" and val.lower() in ("on", "off"):
            alarm = val.lower() == "on"
        elif key == "grace":
            grace = timedelta(0) if val.lower() in ("0", "off", "none") else _duration(name, val, MAX_GRACE)
        else:
            raise _bad(name, f"unknown option {tok[:40]!r}")
    return SetLimit(name, subject, amount, window, metric, warn, action, alarm, grace)


def _duration(name: str, text: str, most: timedelta) -> timedelta:
    try:
        return parse_duration(text, most)
    except QuantityError as exc:
        raise _bad(name, str(exc)) from exc


def _grant_args(name: str, subject: SubjectRef, spec: str, rest: list[str]) -> Command:
    try:
        amount, window = parse_limit_spec(spec)
    except QuantityError as exc:
        raise _bad(name, str(exc)) from exc
    metric, duration, reason = _raise_tail(name, amount, rest)
    return GrantRaise(name, subject, amount, window, metric, duration, reason)


def _raise_tail(name: str, amount: Amount, rest: list[str]) -> tuple[Metric, timedelta | None, str]:
    """`[input|output|requests] [for <duration>] <reason>` after a raise's amount."""
    metric = Metric.COST if amount.is_cost else Metric.TOKENS
    words = list(rest)
    if words and words[0].lower() in _METRIC_WORDS:
        metric = _limit_metric(name, words.pop(0).lower(), amount)
    duration = None
    if words and words[0].lower() == "for":
        if len(words) < 2:
            raise _bad(name, "`for` needs a duration: 10m, 24h or 7d")
        duration = _duration(name, words[1], MAX_RAISE)
        words = words[2:]
    reason = " ".join(words).strip()[:500]
    if not reason:
        raise _bad(name, "a reason is needed, e.g. `for 24h launch load test`")
    return metric, duration, reason


def request_args(name: str, args: list[str]) -> Command:
    if len(args) < 2 or args[0].lower() != "more":
        raise _bad(name, "say how much more, e.g. `request more 1M for 24h launch day`")
    try:
        if "/" in args[1]:
            amount, window = parse_limit_spec(args[1])
            chosen: Window | None = window
        else:
            amount, chosen = parse_amount(args[1]), None
    except QuantityError as exc:
        raise _bad(name, str(exc)) from exc
    metric, duration, reason = _raise_tail(name, amount, args[2:])
    return RequestMore(name, amount, chosen, metric, duration, reason)


_METRIC_WORDS = {"input": Metric.INPUT, "output": Metric.OUTPUT, "requests": Metric.REQUESTS,
                 "tokens": Metric.TOKENS}


def _limit_metric(name: str, word: str, amount: Amount) -> Metric:
    metric = _METRIC_WORDS.get(word)
    if metric is None:
        raise _bad(name, f"unknown metric {word[:40]!r}: use input, output or requests")
    if amount.is_cost:
        raise _bad(name, "a $ amount is a cost limit; it cannot also be input/output/requests")
    return metric


def optional_subject(name: str, args: list[str]) -> Command:
    if len(args) > 1:
        raise _bad(name, f"unexpected {args[1][:40]!r}")
    return SubjectCommand(name, parse_subject(args[0], name) if args else None)


def unlimit_args(name: str, args: list[str]) -> Command:
    if not args:
        raise _bad(name, "which subject?")
    window, metric = None, None
    for tok in args[1:]:
        if tok.lower() in _METRIC_WORDS or tok.lower() == "cost":
            metric = Metric.COST if tok.lower() == "cost" else _METRIC_WORDS[tok.lower()]
            continue
        try:
            window = parse_window(tok)
        except QuantityError as exc:
            raise _bad(name, str(exc)) from exc
    return SubjectCommand(name, parse_subject(args[0], name), window=window, metric=metric)


def with_reason(name: str, args: list[str]) -> Command:
    if not args:
        raise _bad(name, "which subject?")
    reason = " ".join(args[1:])[:500]
    return SubjectCommand(name, parse_subject(args[0], name), reason=reason)


BREAK_GLASS = "break-glass"


def restore_args(name: str, args: list[str]) -> Command:
    if not args:
        raise _bad(name, "which subject?")
    glass = len(args) > 1 and args[1].lower() == BREAK_GLASS
    reason = " ".join(args[2:] if glass else args[1:])[:500]
    if glass and not reason:
        raise _bad(name, "a break-glass restore needs a reason: "
                         "`/bedrock restore <subject> break-glass <reason>`")
    return Restore(name, parse_subject(args[0], name), reason=reason, break_glass=glass)


def audit_args(name: str, args: list[str]) -> Command:
    subject, count = None, 20
    for tok in args:
        if tok.isascii() and tok.isdigit():
            count = int(tok)
            if not 1 <= count <= 100:
                raise _bad(name, "n must be between 1 and 100")
        elif subject is None:
            subject = parse_subject(tok, name)
        else:
            raise _bad(name, f"unexpected {tok[:40]!r}")
    return SubjectCommand(name, subject, count=count)


def provision_args(name: str, args: list[str]) -> Command:
    if len(args) < 2:
        raise _bad(name, "a subject and a model are needed")
    tags: dict[str, str] = {}
    for tok in args[2:]:
        key, eq, val = tok.partition("=")
        if not eq or not key:
            raise _bad(name, f"{tok[:40]!r} is not a key=value tag")
        tags[key] = val
    return Provision(name, parse_subject(args[0], name), args[1], tags)


def link_args(name: str, args: list[str]) -> Command:
    if len(args) != 2:
        raise _bad(name, "a user and one IAM ARN (or mantle-project:<id>) are needed")
    return _mantle_link(name, args) or Link(name, parse_subject(args[0], name), args[1])


def unlink_args(name: str, args: list[str]) -> Command:
    if len(args) != 2:
        raise _bad(name, "a subject and the one linked ARN (or mantle-project:<id>) to remove are needed")
    return _mantle_link(name, args) or Link(name, parse_subject(args[0], name), args[1])


def _mantle_link(name: str, args: list[str]) -> MantleLink | None:
    """`<subject> mantle-project:<proj_… or project ARN>`; None when the target is not one."""
    if not args[1].lower().startswith(MANTLE_PREFIX):
        return None
    try:
        project = parse_project(args[1][len(MANTLE_PREFIX):])
    except ValueError as exc:
        raise _bad(name, str(exc)) from exc
    return MantleLink(name, parse_subject(args[0], name), project)


def check_args(name: str, args: list[str]) -> Command:
    if len(args) != 1:
        raise _bad(name, "one subject is needed")
    return SubjectCommand(name, parse_subject(args[0], name))


def team_args(name: str, args: list[str]) -> Command:
    if len(args) < 3 or args[1].lower() not in ("add", "remove"):
        raise _bad(name, "say which team, add or remove, and who")
    members = tuple(parse_subject(tok, name) for tok in args[2:])
    if any(m.slack_user_id is None and (m.name or "").startswith("team-") for m in members):
        raise _bad(name, "teams cannot contain teams")
    return TeamChange(name, args[0].lower(), args[1].lower(), members)


def meter_args(name: str, args: list[str]) -> Command:
    if len(args) != 2 or "=" not in args[0]:
        raise _bad(name, "a key=value and a subject are needed")
    key, _, value = args[0].partition("=")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key) or not 0 < len(value) <= 256:
        raise _bad(name, f"{args[0][:60]!r} is not a metadata key=value")
    return MeterMap(name, key, value, parse_subject(args[1], name))


def admins_args(name: str, args: list[str]) -> Command:
    if not args:
        return Admins(name)
    op = args[0].lower()
    if op not in ("add", "remove") or len(args) < 2 or len(args) > 3:
        raise _bad(name, "use add or remove, then one @user")
    role = args[2].lower() if len(args) == 3 else "admin"
    if role not in ("owner", "admin", "approver"):
        raise _bad(name, f"unknown role {role[:20]!r}: use owner, admin or approver")
    return Admins(name, op, parse_user_mention(args[1], name), role)


def no_args(name: str, args: list[str]) -> Command:
    if args:
        raise _bad(name, f"`{name}` takes no arguments")
    return Command(name)
