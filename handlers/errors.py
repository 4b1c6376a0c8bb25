"""The one Bolt error handler: the safety net behind every listener and middleware.

An exception that escapes is logged (never the request body), audited with outcome `error`
(best effort: the database may be what failed), and the person gets one polite line through
the request's response_url when it has one. Never a stack trace in Slack.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from slack_bolt import App, BoltContext, BoltResponse
from sqlalchemy.exc import DBAPIError

from bot.runtime import Services
from bot.services import audit

log = logging.getLogger(__name__)
USER_ID = re.compile(r"[UW][A-Z0-9]{1,31}")
NAME = re.compile(r"[A-Za-z0-9_./:-]{1,64}")
POLITE = "⚠️ Something went wrong on our side and it has been logged. Please try again in a minute."
DB_DOWN = "⚠️ The bot's database is not answering right now. Please try again in a minute."


def register(app: App, services: Services) -> None:
    @app.error
    def on_error(error: Exception, body: Any, context: BoltContext, response: BoltResponse | None) -> None:
        respond = context.respond if context.response_url else None
        handle(services, error, body, respond)
        keep_ack(context, body, response)


def keep_ack(context: BoltContext, body: Any, response: BoltResponse | None) -> None:
    """A listener that failed after its ack() still answers Slack with that ack, and an event
    (acked by Bolt itself) with 200: Bolt runs listeners in the request thread
    (`process_before_response`) and would otherwise answer 500, which Slack shows the person
    as an error on top of our polite line, or retries (an event, up to 3 times)."""
    if response is None:
        return
    acked = getattr(context.ack, "response", None) if context.ack is not None else None
    if isinstance(acked, BoltResponse) and acked is not response:
        response.status, response.body, response.headers = acked.status, acked.body, acked.headers
    elif acked is None and isinstance(body, dict) and body.get("type") == "event_callback":
        response.status, response.body = 200, ""


def handle(services: Services, error: Exception, body: Any, respond: Any | None) -> None:
    """Log, audit, tell the person; never raises (Bolt would swallow it in a pool thread)."""
    user, where = slack_user(body), what_failed(body)
    try:
        log.error("Slack %s from %s failed: %s", where, user or "an unknown user",
                  type(error).__name__, exc_info=error)
        _audit(services, user, where, error)
        if respond is not None:
            text = DB_DOWN if isinstance(error, DBAPIError) else POLITE
            respond(text=text, response_type="ephemeral", replace_original=False)
    except Exception:
        log.exception("the error handler could not finish for %s", where)


def _audit(services: Services, user: str | None, where: str, error: Exception) -> None:
    try:
        with services.db.session_scope() as session:
            audit.record(session, services.clock, f"slack:{user or 'unknown'}", "slack.error", where,
                         {"error": type(error).__name__}, outcome="error")
    except Exception as exc:
        log.warning("could not audit the failure of %s: %s", where, type(exc).__name__)


def slack_user(body: Any) -> str | None:
    """The Slack user id a request body names (slash command, interaction or event), if any."""
    if not isinstance(body, dict):
        return None
    user = body.get("user_id") or body.get("user")
    if isinstance(user, dict):
        user = user.get("id")
    event = body.get("event")
    if user is None and isinstance(event, dict):
        user = event.get("user")
    return user if isinstance(user, str) and USER_ID.fullmatch(user) else None


def what_failed(body: Any) -> str:
    """A short, safe name for the request: `/bedrock`, `block_actions:approve_request`,
    `view_submission:deny_request_modal`, `event:app_home_opened`, or `unknown`."""
    if not isinstance(body, dict):
        return "unknown"
    if "command" in body:
        return _name(body.get("command"))
    kind = _name(body.get("type"))
    detail: Any = None
    if kind == "block_actions":
        actions = body.get("actions")
        first = actions[0] if isinstance(actions, list) and actions else None
        detail = first.get("action_id") if isinstance(first, dict) else None
    elif kind in ("view_submission", "view_closed"):
        view = body.get("view")
        detail = view.get("callback_id") if isinstance(view, dict) else None
    elif kind == "event_callback":
        event = body.get("event")
        kind, detail = "event", event.get("type") if isinstance(event, dict) else None
    return f"{kind}:{_name(detail)}" if detail is not None else kind


def _name(value: Any) -> str:
    return value if isinstance(value, str) and NAME.fullmatch(value) else "unknown"
