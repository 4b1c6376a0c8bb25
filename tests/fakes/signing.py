"""Build Slack-signed request bodies/headers the way Slack itself sends them.

See https://docs.slack.dev/authentication/verifying-requests-from-slack/
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from typing import Any
from urllib.parse import urlencode

DEFAULT_RESPONSE_URL = "https://hooks.slack.com/commands/T0001/1234567890/fakeResponseToken"
_event_ids = itertools.count(1)


def slack_signature(secret: str, timestamp: str | int, body: str | bytes) -> str:
    """``v0=`` + hex HMAC-SHA256(secret, ``v0:{timestamp}:{body}``)."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    base = b"v0:" + str(timestamp).encode("ascii") + b":" + raw
    return "v0=" + hmac.new(secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str, body: str | bytes, timestamp: str | int | None = None
) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": slack_signature(secret, ts, body),
        "Content-Type": "application/x-www-form-urlencoded",
    }


def slash_command_body(
    text: str,
    user_id: str = "U_ALICE",
    user_name: str = "alice",
    command: str = "/bedrock",
    channel_id: str = "C_GENERAL",
    response_url: str = DEFAULT_RESPONSE_URL,
    team_id: str = "T0001",
    trigger_id: str = "123.456.abc",
    channel_name: str = "general",
) -> str:
    """Form-encoded body of a slash command POST, fields in Slack's order."""
    return urlencode(
        [
            ("token", "fake-verification-token"),
            ("team_id", team_id),
            ("team_domain", "fake-team"),
            ("channel_id", channel_id),
            ("channel_name", channel_name),
            ("user_id", user_id),
            ("user_name", user_name),
            ("command", command),
            ("text", text),
            ("api_app_id", "A0001"),
            ("is_enterprise_install", "false"),
            ("response_url", response_url),
            ("trigger_id", trigger_id),
        ]
    )


def interactive_body(payload: dict[str, Any]) -> str:
    """Form-encoded ``payload=<json>`` (block_actions, view_submission, ...)."""
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))})


def event_body(event: dict[str, Any], team_id: str = "T0001") -> str:
    """JSON ``event_callback`` envelope as sent to the Events API request URL."""
    now = int(time.time())
    return json.dumps(
        {
            "token": "fake-verification-token",
            "team_id": team_id,
            "api_app_id": "A0001",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(_event_ids):08d}",
            "event_time": now,
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": "UBOT",
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-fake-{team_id}",
        }
    )
