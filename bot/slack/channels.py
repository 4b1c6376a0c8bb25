"""The bot in its channels: join the public ones, check the private ones.

``chat:write.public`` lets the bot post to a public channel it is not in, but a file upload
(the digest chart, ``files_upload_v2``) needs membership, and a private channel cannot be
posted to at all without it. So at start the bot calls ``conversations.join`` (scope
``channels:join``; public channels only). A private channel answers
``method_not_supported_for_channel_type`` (or ``channel_not_found`` when the bot cannot see
it); ``conversations.info`` (scope ``groups:read``) then tells whether someone invited the
bot. What cannot be fixed by the bot comes back as a one-line ``problem`` saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError, SlackClientError

PRIVATE_OR_HIDDEN = ("method_not_supported_for_channel_type", "channel_not_found")
# Slack's side, not the configuration: try again at the next start, tell nobody.
TRANSIENT = frozenset({"ratelimited", "service_unavailable", "internal_error", "fatal_error",
                       "request_timeout"})
JOIN_SCOPE = "channels:join"
INFO_SCOPE = "groups:read"


@dataclass(frozen=True)
class ChannelCheck:
    channel: str
    ok: bool  # the bot is a member now
    joined: bool = False  # it joined in this check
    problem: str = ""  # what is wrong and what to do (ok=False)
    transient: bool = False  # network or Slack trouble: nobody needs to act


def _code(exc: SlackApiError) -> str:
    return str(exc.response.get("error") or "unknown_error")


def ensure_member(client: Any, channel: str) -> ChannelCheck:
    """Join ``channel`` if it is public; otherwise find out whether the bot was invited."""
    try:
        resp = client.conversations_join(channel=channel)
    except SlackApiError as exc:
        code = _code(exc)
        if code in PRIVATE_OR_HIDDEN:
            return _check_private(client, channel)
        return ChannelCheck(channel, ok=False, problem=join_problem(code), transient=code in TRANSIENT)
    except (SlackClientError, OSError) as exc:
        return ChannelCheck(channel, ok=False, transient=True,
                            problem=f"could not reach Slack to join it ({type(exc).__name__})")
    warnings = set(resp.get("response_metadata", {}).get("warnings", []) or [])
    if resp.get("warning"):
        warnings.add(str(resp["warning"]))
    return ChannelCheck(channel, ok=True, joined="already_in_channel" not in warnings)


def _check_private(client: Any, channel: str) -> ChannelCheck:
    try:
        info = client.conversations_info(channel=channel)["channel"]
    except SlackApiError as exc:
        code = _code(exc)
        if code == "channel_not_found":
            return ChannelCheck(channel, ok=False, problem=(
                "was not found: it does not exist, or it is private and the bot is not in it "
                "(invite the bot there, or check the channel id)"))
        if code == "missing_scope":
            return ChannelCheck(channel, ok=False, problem=(
                f"is private and the app lacks {INFO_SCOPE} to check it: update the app from "
                "`bedrock-bot manifest` and reinstall it, or make sure the bot is invited"))
        return ChannelCheck(channel, ok=False, problem=f"could not be checked: Slack said {code}",
                            transient=code in TRANSIENT)
    except (SlackClientError, OSError) as exc:
        return ChannelCheck(channel, ok=False, transient=True,
                            problem=f"could not reach Slack to check it ({type(exc).__name__})")
    if info.get("is_archived"):
        return ChannelCheck(channel, ok=False, problem=join_problem("is_archived"))
    if info.get("is_member"):
        return ChannelCheck(channel, ok=True)
    return ChannelCheck(channel, ok=False, problem="is private and the bot is not a member: invite it there")


def join_problem(code: str) -> str:
    """What a ``conversations.join`` error means for the person running the bot."""
    if code == "is_archived":
        return "is archived: unarchive it, or configure another channel"
    if code == "missing_scope":
        return (f"cannot be joined: the app lacks the {JOIN_SCOPE} scope; update the app from "
                "`bedrock-bot manifest` and reinstall it (or invite the bot by hand)")
    if code == "too_many_members":
        return "cannot be joined: it is full"
    return f"cannot be joined: Slack said {code}"
