"""Request more → modal → raise request message → Approve / Approve half / Deny.

Like the restore-request listeners: ack first, read the id the payload names (digits only),
hand off to `bot.flows.raises`, where authorization and four eyes are checked at click time.
The modal's amount is validated with the limit grammar before the modal closes.
"""

from __future__ import annotations

from concurrent.futures import Executor
from datetime import timedelta
from typing import Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

from bot.flows import raises as flow
from bot.quantities import Amount, QuantityError, parse_amount, parse_duration
from bot.render import raises as ui
from bot.runtime import Services
from handlers.approvals import button_value, click_handler


def _values(view: dict[str, Any]) -> dict[str, Any]:
    return dict(view.get("state", {}).get("values", {}))


def _text(view: dict[str, Any], block: str, action: str) -> str:
    return str((_values(view).get(block, {}).get(action) or {}).get("value") or "").strip()


def _duration(view: dict[str, Any]) -> timedelta | str | None:
    """The chosen duration; a str is the reason it was refused."""
    picked = (_values(view).get(ui.DURATION_BLOCK, {}).get(ui.DURATION_INPUT) or {}).get("selected_option")
    key = str((picked or {}).get("value") or "window")
    if key not in ui.DURATIONS:
        return "pick one of the listed durations"
    return None if key == "window" else parse_duration(key)


def parse_modal(view: dict[str, Any]) -> tuple[Amount, timedelta | None, str] | dict[str, str]:
    """The modal's fields, or the errors to show next to them (nothing is filed then)."""
    errors: dict[str, str] = {}
    amount: Amount | None = None
    try:
        amount = parse_amount(_text(view, ui.AMOUNT_BLOCK, ui.AMOUNT_INPUT))
    except QuantityError as exc:
        errors[ui.AMOUNT_BLOCK] = str(exc)[:150]
    duration = _duration(view)
    if isinstance(duration, str):
        errors[ui.DURATION_BLOCK] = duration
    reason = _text(view, ui.REASON_BLOCK, ui.REASON_INPUT)
    if not reason:
        errors[ui.REASON_BLOCK] = "Please give a short reason."
    if errors or amount is None or isinstance(duration, str):
        return errors
    return amount, duration, reason


def register(app: App, s: Services, answers: Executor) -> None:
    run = click_handler(s, answers)
    @app.action(ui.REQUEST_MORE)
    def request_more(ack: Ack, body: dict[str, Any], client: WebClient, respond: Respond) -> None:
        ack()
        run(body, respond, "raise.open", "limit", button_value(body), lambda actor, limit_id: _open(
            client.views_open(trigger_id=body["trigger_id"],
                              view=ui.modal(flow.check_can_ask(s, actor, limit_id)))))

    @app.view(ui.MODAL)
    def submitted(ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        parsed = parse_modal(view)
        if isinstance(parsed, dict):
            ack(response_action="errors", errors=parsed)
            return
        ack()
        amount, duration, reason = parsed
        run(body, None, "raise.request", "limit", view.get("private_metadata"),
                  lambda actor, limit_id: flow.file_request(s, actor, limit_id, amount, duration, reason))

    def decider(decision: str) -> Any:
        def decide(ack: Ack, body: dict[str, Any], respond: Respond) -> None:
            ack()
            run(body, respond, f"raise.{decision}", "raise request", button_value(body),
                      lambda actor, req_id: flow.decide(s, actor, req_id, decision))
        return decide

    app.action(ui.APPROVE)(decider("approve"))
    app.action(ui.APPROVE_HALF)(decider("approve_half"))
    app.action(ui.DENY)(decider("deny"))


def _open(_: Any) -> None:
    """views.open answered: the modal is the reply."""
