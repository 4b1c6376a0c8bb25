"""The Slack app manifest: ``bedrock-bot manifest [--url https://bot.example.com]``.

Paste the output into https://api.slack.com/apps → *Create New App* → *From an app manifest*
(the JSON tab; Slack takes JSON and YAML alike, JSON needs no extra dependency).

- With a URL (HTTP mode, ``bedrock-bot serve``): the slash command, events and interactivity
  all point at ``<url>/slack/events`` — the one Bolt endpoint ``serve`` exposes — and
  Socket Mode is off.
- Without a URL (Socket Mode, ``bedrock-bot socket``): ``socket_mode_enabled`` is true and
  no request URL appears anywhere; Slack delivers everything over the websocket opened with
  ``SLACK_APP_TOKEN`` (an app-level token with ``connections:write``, made by hand in the app
  settings: manifests cannot create app-level tokens).

Bot scopes, exactly what the bot calls and nothing more:

- ``commands``: the ``/bedrock`` slash command.
- ``chat:write``: replies, alerts, approval messages and their ``chat.update``; DMs too, once
  the conversation is open.
- ``chat:write.public``: post alerts and digests to a public channel without being invited.
- ``files:write``: the digest chart (``files_upload_v2``); sharing a file into a channel needs
  the bot to be a member, which ``chat:write.public`` does not give.
- ``channels:join``: ``conversations.join`` at start, into ``BOT_ALERT_CHANNEL`` and
  ``BOT_DIGEST_CHANNEL`` when they are public (``bot/slack/channels.py``).
- ``groups:read``: ``conversations.info`` on a private channel, to tell whether someone invited
  the bot (private channels cannot be joined); without it the bot cannot tell, and nags.
- ``users:read``: ``users.info`` to name a mentioned user (the handle becomes the subject).
- ``im:write``: ``conversations.open`` to DM the people whose access was revoked.

Not requested: ``im:history`` / the ``message.im`` event (the bot reads no DMs; its Messages
tab is read-only, so nobody types into a void), ``app_mentions:read``, ``channels:read``
(``conversations.join`` answers for public channels itself).
``app_home_opened`` and ``views.publish`` need no scope. ``should_escape: true`` makes
mentions in command text arrive as ``<@U123|alice>``, which the command parser relies on.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

EVENTS_PATH = "/slack/events"  # what `bedrock-bot serve` routes to Bolt
COMMAND = "/bedrock"
BOT_SCOPES = ("commands", "chat:write", "chat:write.public", "files:write", "users:read", "im:write",
              "channels:join", "groups:read")
BOT_EVENTS = ("app_home_opened",)
DEFAULT_NAME = "Bedrock Usage Bot"
NAME_MAX = 35  # Slack's limit for display_information.name
DESCRIPTION = "Amazon Bedrock usage, limits and access per user and team."
LONG_DESCRIPTION = (
    "Tracks Amazon Bedrock usage per user and per team through tagged application inference "
    "profiles. Admins provision profiles, set token and cost limits, revoke and restore access "
    "from Slack; people get warned before a limit bites and can ask for access back with one "
    "click. A daily digest shows who used what, and every governance action lands in a "
    "tamper-evident audit log. Type /bedrock help to start."
)
USAGE_HINT = "usage [@user|team] [period] · limits · profiles · help [subcommand]"
COMMAND_DESCRIPTION = "Bedrock usage, limits, profiles and access"
BACKGROUND_COLOR = "#232f3e"


def normalize_url(url: str) -> str:
    """The public base URL of ``bedrock-bot serve``, without a trailing slash.

    Accepts ``https://host[:port][/prefix]``; a trailing ``/`` and a pasted ``/slack/events``
    are dropped. Anything else raises ValueError with a one-line reason.
    """
    text = (url or "").strip()
    if not text:
        raise ValueError("--url is empty: give the bot's public base URL, e.g. https://bot.example.com")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"--url {text!r} contains whitespace")
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"--url {text!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise ValueError(f"--url {text!r} must start with https:// (Slack only calls HTTPS request URLs)")
    if not parts.hostname:
        raise ValueError(f"--url {text!r} has no host name")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"--url {text!r} must not contain credentials")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"--url {text!r} must not have a query string or fragment")
    path = parts.path.rstrip("/")
    if path.endswith(EVENTS_PATH):
        path = path[: -len(EVENTS_PATH)].rstrip("/")
    if "//" in path:
        raise ValueError(f"--url {text!r} has an empty path segment")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"https://{netloc}{path}"


def build_manifest(url: str | None = None, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The app manifest as a dict: HTTP mode for a URL, Socket Mode without one."""
    name = (name or "").strip()
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"the app name must be 1–{NAME_MAX} characters, got {len(name)}")
    request_url = normalize_url(url) + EVENTS_PATH if url is not None else None

    command: dict[str, Any] = {"command": COMMAND}
    if request_url:
        command["url"] = request_url
    command.update(description=COMMAND_DESCRIPTION, usage_hint=USAGE_HINT, should_escape=True)

    events: dict[str, Any] = {"bot_events": list(BOT_EVENTS)}
    interactivity: dict[str, Any] = {"is_enabled": True}
    if request_url:
        events = {"request_url": request_url, **events}
        interactivity["request_url"] = request_url

    return {
        "_metadata": {"major_version": 1, "minor_version": 1},
        "display_information": {
            "name": name,
            "description": DESCRIPTION,
            "long_description": LONG_DESCRIPTION,
            "background_color": BACKGROUND_COLOR,
        },
        "features": {
            "app_home": {
                "home_tab_enabled": True,  # the personal dashboard
                "messages_tab_enabled": True,  # where the bot's DMs (revocations) show up
                "messages_tab_read_only_enabled": True,  # the bot reads no DMs
            },
            "bot_user": {"display_name": name, "always_online": True},
            "slash_commands": [command],
        },
        "oauth_config": {"scopes": {"bot": list(BOT_SCOPES)}},
        "settings": {
            "event_subscriptions": events,
            "interactivity": interactivity,
            "org_deploy_enabled": False,
            "socket_mode_enabled": request_url is None,
            "token_rotation_enabled": False,
        },
    }


def next_steps(url: str | None) -> str:
    """What to do with the manifest (printed on stderr, so stdout stays the JSON alone)."""
    create = ("Next: https://api.slack.com/apps → Create New App → From an app manifest → paste the "
              "JSON → Install to Workspace; the Bot User OAuth Token (xoxb-…) is SLACK_BOT_TOKEN.")
    if url is None:
        return (f"{create}\nSocket Mode: Basic Information → App-Level Tokens → Generate, scope "
                "connections:write → SLACK_APP_TOKEN. Then `bedrock-bot socket`; there is no request "
                "URL to verify.\n")
    request_url = normalize_url(url) + EVENTS_PATH
    return (f"{create} Basic Information → Signing Secret is SLACK_SIGNING_SECRET.\n"
            f"Slack sends the slash command, events and clicks to {request_url}. Slack checks that "
            "URL when the app is created, before the bot can answer: once `bedrock-bot serve` is "
            "reachable there, open Event Subscriptions and press Retry next to the Request URL "
            "(until then the Home tab stays blank).\n")


def to_json(manifest: dict[str, Any]) -> str:
    """Indented JSON, keys in the order built, ending with a newline."""
    return json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
