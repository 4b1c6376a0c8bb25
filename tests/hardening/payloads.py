"""Slack interaction payloads for the hardening tests (the parts Bolt and our handlers read)."""

from __future__ import annotations

from typing import Any

from tests.harness import ADMIN, ALERTS, ALICE

ADMIN_USER = {"id": ADMIN, "username": "admin", "team_id": "T0001"}


def button(user: Any, actions: Any, response_url: str = "") -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "block_actions", "api_app_id": "A0001", "token": "x",
                               "trigger_id": "t1", "team": {"id": "T0001", "domain": "t"},
                               "channel": {"id": ALERTS}, "actions": actions,
                               "container": {"type": "message", "message_ts": "1.1"}}
    if user is not None:
        payload["user"] = user
    if response_url:
        payload["response_url"] = response_url
    return payload


def approve(value: Any) -> list[dict[str, Any]]:
    return [{"action_id": "approve_request", "block_id": "b", "value": value, "type": "button",
             "action_ts": "1.2"}]


def view_submission(view: Any) -> dict[str, Any]:
    return {"type": "view_submission", "team": {"id": "T0001"}, "api_app_id": "A0001",
            "user": {"id": ALICE, "username": "alice", "team_id": "T0001"}, "view": view}
