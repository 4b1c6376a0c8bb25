"""Raise requests, their decisions and the Request more modal → Block Kit (pure)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.quantities import format_duration
from bot.render.blocks import Reply, section
from bot.render.text import escape, when
from bot.services.raise_requests import RaiseRequestTarget, RaiseRequestView, granted_amount

REQUEST_MORE = "request_more"
APPROVE, APPROVE_HALF, DENY = "approve_raise", "approve_raise_half", "deny_raise"
MODAL = "raise_request_modal"
AMOUNT_BLOCK, AMOUNT_INPUT = "amount", "amount_input"
DURATION_BLOCK, DURATION_INPUT = "duration", "duration_input"
REASON_BLOCK, REASON_INPUT = "reason", "reason_input"
DURATIONS = {"window": "Until the window ends", "24h": "24 hours", "7d": "7 days"}


def request_more_button(limit_id: int) -> ActionsBlock:
    return ActionsBlock(block_id=f"limit-{limit_id}", elements=[ButtonElement(
        text="Request more", action_id=REQUEST_MORE, value=str(limit_id))])


def _how_long(r: RaiseRequestView) -> str:
    return f"for {format_duration_s(r.duration_seconds)}" if r.duration_seconds else "until the window ends"


def format_duration_s(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds))


def _summary(r: RaiseRequestView) -> str:
    return (f"📈 *Raise request* from <@{r.requester}>: +{r.text(r.amount)} on {r.subject.mention}'s "
            f"{r.metric}/{r.window} limit of {r.text(r.limit_amount)}, {_how_long(r)}\n>{escape(r.reason)}")


def _button(label: str, action_id: str, r: RaiseRequestView, style: str | None,
            question: str) -> ButtonElement:
    return ButtonElement(text=label, action_id=action_id, value=str(r.id), style=style,
                         confirm=ConfirmObject(title="Are you sure?", text=question[:300],
                                               confirm="Yes", deny="Cancel"))


def request_message(r: RaiseRequestView, tz: ZoneInfo) -> Reply:
    who, half = r.subject.name, r.text(granted_amount(r.amount, "approve_half"))
    actions = ActionsBlock(block_id=f"raise-{r.id}", elements=[
        _button("Approve", APPROVE, r, "primary",
                f"Raise {who}'s limit by {r.text(r.amount)} {_how_long(r)}."),
        _button("Approve half", APPROVE_HALF, r, None, f"Raise {who}'s limit by {half} {_how_long(r)}."),
        _button("Deny", DENY, r, "danger", f"Keep {who}'s limit as it is?"),
    ])
    context = ContextBlock(elements=[MarkdownTextObject(
        text=f"Raise request {r.id} · expires {when(r.expires_at, tz)} · nobody it covers can decide it")])
    blocks = [section(_summary(r)), actions, context]
    return f"Raise request from {r.requester} for {who}", [b.to_dict() for b in blocks]


def _outcome(r: RaiseRequestView) -> str:
    if r.status == "approved":
        half = " (half)" if r.decision == "approve_half" else ""
        return f"✅ Approved +{r.text(granted_amount(r.amount, r.decision or ''))}{half} by <@{r.decided_by}>"
    if r.status == "denied":
        return f"❌ Denied by <@{r.decided_by}>"
    return "⌛ Expired without a decision"


def decided_message(r: RaiseRequestView, tz: ZoneInfo) -> Reply:
    at = f" · {when(r.decided_at, tz)}" if r.decided_at else ""
    blocks = [section(_summary(r)), ContextBlock(elements=[MarkdownTextObject(text=f"{_outcome(r)}{at}")])]
    return f"Raise request {r.id}: {r.status}", [b.to_dict() for b in blocks]


def requester_note(r: RaiseRequestView, until: str | None = None) -> str:
    what = f"your request for +{r.text(r.amount)} on `{r.subject.name}`'s {r.metric}/{r.window} limit"
    if r.status == "approved":
        end = f" until {until}" if until else ""
        got = r.text(granted_amount(r.amount, r.decision or ""))
        return f"✅ {what[0].upper()}{what[1:]} was approved by <@{r.decided_by}>: +{got}{end}."
    if r.status == "denied":
        return f"❌ {what[0].upper()}{what[1:]} was denied by <@{r.decided_by}>."
    return f"⌛ {what[0].upper()}{what[1:]} expired without a decision."


def modal(t: RaiseRequestTarget) -> dict[str, Any]:
    options = [Option(value=k, label=v) for k, v in DURATIONS.items()]
    return View(type="modal", callback_id=MODAL, private_metadata=str(t.limit_id),
                title="Request more", submit="Send request", close="Cancel", blocks=[
                    section(f"Ask for a temporary raise on `{t.subject}`'s {t.metric}/{t.window} limit "
                            f"of {t.amount_text}."),
                    InputBlock(block_id=AMOUNT_BLOCK, label="How much more?", element=PlainTextInputElement(
                        action_id=AMOUNT_INPUT, max_length=20, placeholder="e.g. 1M or $50")),
                    InputBlock(block_id=DURATION_BLOCK, label="For how long?", element=StaticSelectElement(
                        action_id=DURATION_INPUT, options=options, initial_option=options[0])),
                    InputBlock(block_id=REASON_BLOCK, label="Why?", element=PlainTextInputElement(
                        action_id=REASON_INPUT, multiline=True, max_length=500,
                        placeholder="e.g. load test for the launch")),
                ]).to_dict()
