"""Request restore → modal → request message → Approve / Approve for 24h / Deny.

Every listener acks first, reads the id its payload names (digits only) and hands off to
`bot.flows.approvals`; authorization is checked there, at click time. A refusal is told
to the clicker: ephemerally for message buttons, by DM for App Home buttons and modals
(which carry no response_url).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.errors import BotError
from bot.flows import approvals as flow
from bot.flows.runner import audit_refusal
from bot.render import approvals as ui
from bot.render.enforcement import REQUEST_RESTORE
from bot.runtime import Services
from bot.services.directory import Actor
from bot.slack.notifier import safe
from handlers.answers_pool import hand_off
from handlers.replies import answering

Tell = Callable[[str], None]


def parse_id(value: Any) -> int | None:
    """Button values and private_metadata come from outside: ASCII digits only, bounded."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None


def _actor(body: dict[str, Any]) -> Actor:
    return Actor.slack(str((body.get("user") or {}).get("id", "")))


def button_value(body: dict[str, Any]) -> Any:
    actions = body.get("actions") or [{}]
    return actions[0].get("value") if isinstance(actions[0], dict) else None


def _teller(s: Services, body: dict[str, Any], respond: Respond | None, actor: Actor) -> Tell:
    def ephemeral(text: str) -> None:
        assert respond is not None
        respond(text=text, response_type="ephemeral", replace_original=False)

    def dm(text: str) -> None:
        safe(s.notifier.dm, actor.slack_user_id or "", text)

    return ephemeral if respond is not None and body.get("response_url") else dm


def _reason(view: dict[str, Any]) -> str:
    values = view.get("state", {}).get("values", {})
    value = values.get(ui.REASON_BLOCK, {}).get(ui.REASON_INPUT, {}).get("value")
    return str(value or "").strip()


def _empty_reason(ack: Ack, view: dict[str, Any]) -> bool:
    if _reason(view):
        return False
    ack(response_action="errors", errors={ui.REASON_BLOCK: "Please give a short reason."})
    return True


def run_click(s: Services, body: dict[str, Any], respond: Respond | None, action: str, noun: str,
              raw: Any, work: Callable[[Actor, int], str | None]) -> None:
    """The shared path of every click: a numeric id, the flow, one answer, and an audit row
    for whatever went wrong (the flow audits its own refusals)."""
    actor = _actor(body)
    tell = _teller(s, body, respond, actor)
    item = parse_id(raw)
    if item is None:
        audit_refusal(s.db, s.clock, actor, action, "slack",
                      f"a payload that does not name a {noun}: {str(raw)[:40]!r}")
        tell(f"⚠️ that button does not name a {noun}")
        return
    with answering(tell, lambda reason: audit_refusal(
            s.db, s.clock, actor, action, f"{noun.replace(' ', '_')}:{item}", reason, "error")):
        note = work(actor, item)
        if note:
            tell(note)


def click_handler(s: Services, answers: Executor) -> Callable[..., None]:
    """`run_click` after the ack, on the answer pool: a click's flow (database, IAM) never
    holds a listener thread that another ack needs."""
    def run(body: dict[str, Any], respond: Respond | None, action: str, noun: str, raw: Any,
            work: Callable[[Actor, int], str | None]) -> None:
        hand_off(answers, lambda: run_click(s, body, respond, action, noun, raw, work), f"{noun} click")
    return run


def register(app: App, s: Services, answers: Executor) -> None:
    run = click_handler(s, answers)

    @app.action(REQUEST_RESTORE)
    def request_restore(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        run(body, respond, "request.open", "revocation", button_value(body), lambda actor, rev_id: _open(
            client.views_open(trigger_id=body["trigger_id"],
                              view=ui.request_modal(rev_id, flow.check_can_ask(s, actor, rev_id)))))

    @app.view(ui.REQUEST_MODAL)
    def request_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        if _empty_reason(ack, view):
            return
        ack()
        run(body, None, "request.create", "revocation", view.get("private_metadata"),
            lambda actor, rev_id: flow.file_request(s, actor, rev_id, _reason(view)))

    def approver(decision: str) -> Callable[..., None]:
        def approve(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
            ack()
            run(body, respond, f"request.{decision}", "request", button_value(body),
                lambda actor, req_id: flow.decide(s, actor, req_id, decision))
        return approve

    app.action(ui.APPROVE)(approver("approve"))
    app.action(ui.APPROVE_24H)(approver("approve_24h"))

    @app.action(ui.DENY)
    def deny(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        run(body, respond, "request.deny", "request", button_value(body), lambda actor, req_id: _open(
            client.views_open(trigger_id=body["trigger_id"],
                              view=ui.deny_modal(flow.check_decider(s, actor, req_id).id))))

    @app.view(ui.DENY_MODAL)
    def deny_submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        if _empty_reason(ack, view):
            return
        ack()
        run(body, None, "request.deny", "request", view.get("private_metadata"),
            lambda actor, req_id: flow.decide(s, actor, req_id, "deny", _reason(view)))

    @app.event("app_home_opened")
    def home_opened(event: dict[str, Any], client: WebClient) -> None:
        user = str(event.get("user") or "")
        if event.get("tab", "home") != "home" or not user:
            return
        hand_off(answers, lambda: _publish_home(s, client, user), "home tab")


def _publish_home(s: Services, client: WebClient, user: str) -> None:
    try:
        data = flow.home_view(s, Actor.slack(user))
    except BotError:
        return
    client.views_publish(user_id=user, view=ui.home_view(*data, tz=s.tz))


def _open(_: Any) -> None:
    """views.open answered: the modal is the reply, nothing more to tell."""
