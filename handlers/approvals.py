"""Request restore → modal → request message → Approve / Approve for 24h / Deny.

Every listener acks first; authorization is checked in the service at click time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from sqlalchemy.exc import DBAPIError

from bot import announce
from bot.execute import Outcome, execute
from bot.render import approvals as ui
from bot.render.enforcement import REQUEST_RESTORE
from bot.runtime import Services
from bot.services import home, restore_requests
from bot.services.directory import Actor
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
DB_DOWN = ("⚠️ the bot's database is not answering right now; nothing was changed. "
           "Please click again in a minute.")


def _id(value: Any) -> int | None:
    """Button values and private_metadata come from outside: digits only, bounded."""
    text = str(value or "")
    return int(text) if text.isdigit() and len(text) < 12 else None


Tell = Callable[[str], None]


def _tell_by(respond: Respond | None, notifier: Any, user_id: str) -> Tell:
    """Buttons answer the clicker ephemerally; modal submissions (no response_url) by DM."""
    if respond is not None:
        return lambda text: respond(text=text, response_type="ephemeral", replace_original=False)
    return lambda text: safe(notifier.dm, user_id, text)


class Approvals:
    def __init__(self, services: Services) -> None:
        self.s = services

    def run(self, actor: Actor, action: str, target: str, work: Any) -> Outcome[Any]:
        return execute(self.s.db, self.s.clock, actor, action, target, work)

    @property
    def channel(self) -> str | None:
        return self.s.settings.bot.alert_channel

    def tell(self, respond: Respond | None, actor: Actor, body: dict[str, Any] | None = None) -> Tell:
        # App Home buttons carry no response_url: answer those by DM as well.
        usable = respond if body is None or body.get("response_url") else None
        return _tell_by(usable, self.s.notifier, actor.slack_user_id or "")

    def _click(self, body: dict[str, Any], respond: Respond, noun: str, action: str,
               check: Callable[[Any, Actor, int], Any]) -> tuple[int, Any] | None:
        """A button's shared path: a numeric value, then `check` in a transaction. Refusals are
        told to the clicker; None then, else (the id, what `check` returned)."""
        actor = Actor.slack(str(body.get("user", {}).get("id", "")))
        tell = self.tell(respond, actor, body)
        item = _id((body.get("actions") or [{}])[0].get("value"))
        if item is None:
            tell(f"⚠️ that button does not name a {noun}")
            return None
        try:
            out = self.run(actor, action, f"{noun}:{item}", lambda session: check(session, actor, item))
        except DBAPIError:
            tell(DB_DOWN)
            return None
        if not out.ok:
            tell(f"⚠️ {out.message}")
            return None
        return item, out.value

    def open_request_modal(self, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        checked = self._click(body, respond, "revocation", "request.open", restore_requests.check_can_ask)
        if checked is not None:
            client.views_open(trigger_id=body["trigger_id"], view=ui.request_modal(*checked))

    def submit_request(self, body: dict[str, Any], view: dict[str, Any]) -> None:
        actor = Actor.slack(str(body.get("user", {}).get("id", "")))
        rev_id = _id(view.get("private_metadata"))
        reason = _reason(view)
        ttl = timedelta(hours=self.s.settings.bot.request_ttl_hours)
        out = self.run(actor, "request.create", f"revocation:{rev_id}",
                       lambda session: restore_requests.create(session, self.s.clock, actor, rev_id or 0,
                                                               reason, ttl))
        self.after_request(actor, out)

    def after_request(self, actor: Actor, out: Outcome[Any]) -> str:
        """Post a new request for approval; returns what to tell the requester."""
        if not out.ok:
            safe(self.s.notifier.dm, actor.slack_user_id or "", f"⚠️ {out.message}")
            return f"⚠️ {out.message}"
        req, created = out.value
        if created and self.channel:
            text, blocks = ui.request_message(req, self.s.tz)
            ts = safe(self.s.notifier.post, self.channel, text, blocks)
            if ts:
                with self.s.db.session_scope() as session:
                    restore_requests.record_message(session, req.id, self.channel, ts)
        note = ("📨 Your restore request is with the admins." if created
                else "⏳ You already have a restore request waiting for the admins.")
        safe(self.s.notifier.dm, actor.slack_user_id or "", note)
        return note

    def decide(self, body: dict[str, Any], respond: Respond | None, decision: str, note: str = "") -> None:
        actor = Actor.slack(str(body.get("user", {}).get("id", "")))
        tell = self.tell(respond, actor, body)
        req_id = _id((body.get("actions") or [{}])[0].get("value")) if "actions" in body \
            else _id(body.get("view", {}).get("private_metadata"))
        if req_id is None:
            tell("⚠️ that button does not name a request")
            return
        try:
            out = self.run(actor, f"request.{decision}", f"request:{req_id}",
                           lambda session: restore_requests.decide(session, self.s.clock, self.s.access,
                                                                   actor, req_id, decision, note))
        except DBAPIError:
            log.exception("request %s: database error", req_id)
            tell(DB_DOWN)
            return
        if not out.ok:
            tell(f"⚠️ {out.message}")
            return
        d = out.value
        if not d.changed:
            r = d.request
            by = f" by <@{r.decided_by}>" if r.decided_by else ""
            tell(f"Nothing to do: request {r.id} is already {r.status}{by}.")
            return
        self.publish_decision(d.request)
        if d.restored:
            announce.restored(self.s.notifier, self.channel, d.restored, f"<@{actor.slack_user_id}>",
                              f"restore request {d.request.id}")

    def publish_decision(self, r: restore_requests.RequestView) -> None:
        if r.channel and r.ts:
            text, blocks = ui.decided_message(r, self.s.tz)
            safe(self.s.notifier.update, r.channel, r.ts, text, blocks)
        safe(self.s.notifier.dm, r.requester, ui.requester_note(r))

    def open_deny_modal(self, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        checked = self._click(body, respond, "request", "request.deny", restore_requests.check_decider)
        if checked is not None:
            client.views_open(trigger_id=body["trigger_id"], view=ui.deny_modal(checked[0]))

    def home(self, user_id: str, client: WebClient) -> None:
        actor = Actor.slack(user_id)
        out = self.run(actor, "home.view", f"slack:{user_id}", lambda session: home.load(
            session, self.s.clock, self.s.tz, self.s.week_start, actor))
        if out.ok:
            client.views_publish(user_id=user_id, view=ui.home_view(*out.value, tz=self.s.tz))


def _reason(view: dict[str, Any]) -> str:
    values = view.get("state", {}).get("values", {})
    value = values.get(ui.REASON_BLOCK, {}).get(ui.REASON_INPUT, {}).get("value")
    return str(value or "").strip()


def _empty_reason(ack: Ack, view: dict[str, Any]) -> bool:
    if _reason(view):
        return False
    ack(response_action="errors", errors={ui.REASON_BLOCK: "Please give a short reason."})
    return True


def register(app: App, services: Services) -> None:
    a = Approvals(services)

    @app.action(REQUEST_RESTORE)
    def request_restore(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        a.open_request_modal(body, client, respond)

    @app.view(ui.REQUEST_MODAL)
    def request_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        if _empty_reason(ack, view):
            return
        ack()
        a.submit_request(body, view)

    @app.action(ui.APPROVE)
    def approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        a.decide(body, respond, "approve")

    @app.action(ui.APPROVE_24H)
    def approve_24h(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
        ack()
        a.decide(body, respond, "approve_24h")

    @app.action(ui.DENY)
    def deny(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        a.open_deny_modal(body, client, respond)

    @app.view(ui.DENY_MODAL)
    def deny_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        if _empty_reason(ack, view):
            return
        ack()
        a.decide(body, None, "deny", _reason(view))

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") == "home" and event.get("user"):
            a.home(str(event["user"]), client)

