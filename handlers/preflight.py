"""What ``serve`` and ``socket`` check before they take any work.

``check()`` (before the database is touched): an AWS region is known, and Slack accepts the
bot token (``auth.test``) and, in Socket Mode, the app-level token (``apps.connections.open``).
A bad token otherwise only shows in Slack as "Please reinstall this app"; here it is one line
naming what is wrong and the fix, and the process exits 2 (1 when Slack cannot be reached).

``join_channels()`` (after migrations): the bot joins ``BOT_ALERT_CHANNEL`` and
``BOT_DIGEST_CHANNEL`` (``bot.slack.channels``). A channel it cannot use is logged, audited
(``slack.channel``, outcome ``error``) and told to the owners in ``BOT_ADMINS`` by DM — at
most once a day per channel and problem, so rolling restarts do not nag — or, with no owners
configured, posted in the other channel when that one works.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.config import REGION_HINT, Settings
from bot.runtime import Services
from bot.services import audit
from bot.slack.channels import ChannelCheck, ensure_member
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
ACTOR = "system:startup"
ACTION = "slack.channel"
REMIND_EVERY = timedelta(days=1)

# auth.test / apps.connections.open error -> what it means for the operator.
TOKEN_PROBLEMS = {
    "not_authed": "no token was sent: {var} is empty",
    "invalid_auth": "Slack does not accept {var} (invalid_auth): copy it again from the app's settings "
                    "({where})",
    "account_inactive": "{var} belongs to a deactivated workspace or a deleted bot user (account_inactive): "
                        "reinstall the app and use its new token",
    "token_revoked": "{var} was revoked (token_revoked): the app was uninstalled or its tokens revoked; "
                     "reinstall it and use the new token",
    "token_expired": "{var} expired (token_expired): token rotation is on; turn it off in OAuth & "
                     "Permissions and reinstall (the bot needs a token that does not expire)",
    "not_allowed_token_type": "{var} is the wrong kind of token (not_allowed_token_type): it must start "
                              "with {prefix}",
    "invalid_token_type": "{var} is the wrong kind of token (invalid_token_type): it must start "
                          "with {prefix}",
}
BOT_TOKEN = ("SLACK_BOT_TOKEN", "xoxb-", "OAuth & Permissions → Bot User OAuth Token")
APP_TOKEN = ("SLACK_APP_TOKEN", "xapp-", "Basic Information → App-Level Tokens, scope connections:write")


class PreflightError(Exception):
    """One line for the operator; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class BotIdentity:
    team: str
    user: str
    user_id: str
    bot_id: str


def token_problem(error: str, token: tuple[str, str, str]) -> str:
    """The operator's line for a Slack error code on ``token`` (name, prefix, where to find it)."""
    var, prefix, where = token
    text = TOKEN_PROBLEMS.get(error, "Slack refused {var}: " + error)
    return text.format(var=var, prefix=prefix, where=where)


def _call(method: Any, token: tuple[str, str, str], api_url: str) -> Any:
    try:
        return method()
    except SlackApiError as exc:
        code = str(exc.response.get("error") or "unknown_error")
        if code in ("ratelimited", "service_unavailable", "internal_error", "fatal_error"):
            raise PreflightError(f"Slack could not check {token[0]} now ({code}); try again", 1) from None
        raise PreflightError(token_problem(code, token)) from None
    except (SlackClientError, OSError) as exc:
        raise PreflightError(f"cannot reach Slack at {api_url} ({type(exc).__name__}: {str(exc)[:120]}); "
                             "check the network, a proxy (HTTPS_PROXY) or SLACK_API_URL", 1) from None


def check_bot_token(client: WebClient, api_url: str) -> BotIdentity:
    resp = _call(client.auth_test, BOT_TOKEN, api_url)
    if not resp.get("bot_id"):
        raise PreflightError(f"SLACK_BOT_TOKEN is not a bot token (it acts as user {resp.get('user')!r}): "
                             "use the Bot User OAuth Token (xoxb-…)")
    return BotIdentity(team=str(resp.get("team", "")), user=str(resp.get("user", "")),
                       user_id=str(resp.get("user_id", "")), bot_id=str(resp["bot_id"]))


def check_app_token(settings: Settings) -> None:
    """Socket Mode: the app-level token opens connections (the URL is short-lived and unused)."""
    client = WebClient(token=settings.slack.app_token, base_url=settings.slack.api_url)
    _call(lambda: client.apps_connections_open(app_token=settings.slack.app_token), APP_TOKEN,
          settings.slack.api_url)


def check(settings: Settings, client: WebClient, *, socket: bool = False, prog: str = "serve") -> BotIdentity:
    """Who the bot is in Slack; on a problem, one line on stderr and SystemExit (2, or 1 when
    Slack could not be reached)."""
    try:
        if not settings.aws.region:
            raise PreflightError(REGION_HINT)
        identity = check_bot_token(client, settings.slack.api_url)
        if socket:
            check_app_token(settings)
    except PreflightError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None
    log.info("Slack: workspace %s, bot @%s (%s)", identity.team, identity.user, identity.user_id)
    return identity


# ---- channels ------------------------------------------------------------------------


def configured_channels(settings: Settings) -> dict[str, list[str]]:
    """Channel id -> the settings that name it (one channel may be both)."""
    out: dict[str, list[str]] = {}
    for var, channel in (("BOT_ALERT_CHANNEL", settings.bot.alert_channel),
                         ("BOT_DIGEST_CHANNEL", settings.bot.digest_channel)):
        if channel:
            out.setdefault(channel, []).append(var)
    return out


def problem_text(check_: ChannelCheck, settings_: list[str], bot_user_id: str | None) -> str:
    bot = f"<@{bot_user_id}>" if bot_user_id else "the bot"
    names = " and ".join(settings_)
    return (f":warning: I cannot use <#{check_.channel}> ({names}): it {check_.problem}. "
            f"To invite me, type `/invite {bot}` in that channel.")


def join_channels(services: Services, client: WebClient,
                  bot_user_id: str | None = None) -> list[ChannelCheck]:
    """Join (or check) every configured channel; report the ones the bot cannot use."""
    settings = services.settings
    wanted = configured_channels(settings)
    checks = [ensure_member(client, channel) for channel in wanted]
    usable = [c.channel for c in checks if c.ok]
    for c in checks:
        names = ", ".join(wanted[c.channel])
        if c.ok:
            log.info("%s %s: %s", names, c.channel, "joined" if c.joined else "the bot is a member")
            continue
        log.warning("%s %s: the channel %s", names, c.channel, c.problem)
        if c.transient:
            continue
        if _record(services, c, wanted[c.channel]):
            _tell(services, problem_text(c, wanted[c.channel], bot_user_id), usable)
    return checks


def _record(services: Services, c: ChannelCheck, settings_: list[str]) -> bool:
    """Audit the problem; True (and `"told": true` in the row) when nobody was told about this
    problem with this channel in the last day."""
    details: dict[str, Any] = {"settings": settings_, "problem": c.problem}
    target = f"channel:{c.channel}"
    try:
        with services.db.session_scope() as session:
            told = audit.seen_since(session, ACTION, target, details | {"told": True}, "error",
                                    services.clock() - REMIND_EVERY)
            audit.record(session, services.clock, ACTOR, ACTION, target, details | {"told": not told},
                         outcome="error")
        return not told
    except Exception:
        log.exception("could not audit the problem with channel %s", c.channel)
        return False


def _tell(services: Services, text: str, usable: list[str]) -> None:
    owners = services.settings.bot.admins
    for owner in owners:
        safe(services.notifier.dm, owner, text)
    if not owners and usable:
        safe(services.notifier.post, usable[0], text)
