"""Restore requests, decisions, modals and the App Home → Block Kit (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    PlainTextInputElement,
)
from slack_sdk.models.views import View

from bot.render.blocks import Reply, section
from bot.render.enforcement import restore_button
from bot.render.text import METRIC_LABEL, plain, when
from bot.render.usage import limit_line
from bot.services.raise_requests import RaiseRequestView
from bot.services.raises import RaiseView
from bot.services.restore_requests import RequestView
from bot.services.usage import UsageReport

APPROVE, APPROVE_24H, DENY = "approve_request", "approve_request_24h", "deny_request"
REQUEST_MODAL, DENY_MODAL = "restore_request_modal", "deny_request_modal"
REASON_BLOCK, REASON_INPUT = "reason", "reason_input"


def _summary(r: RequestView) -> str:
    return (f"🔓 *Restore request* from <@{r.requester}> for {r.subject.mention} "
            f"(revoked: {plain(r.revocation_reason)})\n>{plain(r.reason)}")


def _button(label: str, action_id: str, r: RequestView, style: str | None, question: str) -> ButtonElement:
    return ButtonElement(text=label, action_id=action_id, value=str(r.id), style=style,
                         confirm=ConfirmObject(title="Are you sure?", text=question[:300],
                                               confirm="Yes", deny="Cancel"))


def request_message(r: RequestView, tz: ZoneInfo) -> Reply:
    who = r.subject.name
    actions = ActionsBlock(block_id=f"request-{r.id}", elements=[
        _button("Approve", APPROVE, r, "primary",
                f"Restore {who} now; enforcement of this limit pauses until its window ends."),
        _button("Approve for 24h", APPROVE_24H, r, None,
                f"Restore {who} for 24 hours; after that the limit is enforced again."),
        _button("Deny", DENY, r, "danger", f"Keep {who} revoked? You will be asked for a reason."),
    ])
    context = ContextBlock(elements=[MarkdownTextObject(
        text=f"Request {r.id} · expires {when(r.expires_at, tz)} · the requester cannot approve it")])
    blocks = [section(_summary(r)), actions, context]
    return f"Restore request from {r.requester} for {who}", [b.to_dict() for b in blocks]


def decided_message(r: RequestView, tz: ZoneInfo) -> Reply:
    if r.status == "approved":
        how = "for 24 hours" if r.decision == "approve_24h" else ""
        line = f"✅ Approved {how} by <@{r.decided_by}>".replace("  ", " ")
    elif r.status == "denied":
        line = f"❌ Denied by <@{r.decided_by}>" + (f": {plain(r.decision_note)}" if r.decision_note else "")
    else:
        line = "⌛ Expired without a decision"
    at = f" · {when(r.decided_at, tz)}" if r.decided_at else ""
    blocks = [section(_summary(r)), ContextBlock(elements=[MarkdownTextObject(text=f"{line}{at}")])]
    return f"Restore request {r.id}: {r.status}", [b.to_dict() for b in blocks]


def requester_note(r: RequestView) -> str:
    if r.status == "approved":
        return f"✅ Your restore request for `{r.subject.name}` was approved by <@{r.decided_by}>."
    if r.status == "denied":
        why = f" Reason: {plain(r.decision_note)}" if r.decision_note else ""
        return f"❌ Your restore request for `{r.subject.name}` was denied by <@{r.decided_by}>.{why}"
    return f"⌛ Your restore request for `{r.subject.name}` expired without a decision."


def _reason_input(label: str, placeholder: str) -> InputBlock:
    return InputBlock(block_id=REASON_BLOCK, label=label, element=PlainTextInputElement(
        action_id=REASON_INPUT, multiline=True, max_length=500, placeholder=placeholder))


def request_modal(revocation_id: int, subject: str) -> dict[str, Any]:
    return View(type="modal", callback_id=REQUEST_MODAL, private_metadata=str(revocation_id),
                title="Request restore", submit="Send request", close="Cancel",
                blocks=[section(f"Ask an admin to restore Bedrock access for `{subject}`."),
                        _reason_input("Why do you need it back?", "e.g. demo for a customer at 3pm")
                        ]).to_dict()


def deny_modal(request_id: int) -> dict[str, Any]:
    return View(type="modal", callback_id=DENY_MODAL, private_metadata=str(request_id),
                title="Deny request", submit="Deny", close="Cancel",
                blocks=[_reason_input("Tell the requester why", "e.g. over budget this month")]).to_dict()


def _raises(asked: Sequence[RaiseRequestView], raised: Sequence[RaiseView], tz: ZoneInfo) -> list[Any]:
    """Temporary raises in force, and the person's requests for more that wait for a decision."""
    lines = [f"📈 +{r.amount_text} {METRIC_LABEL[r.metric]}/{r.window} until {when(r.expires_at, tz)}"
             for r in raised]
    lines += [f"⏳ your request {r.id} for more {METRIC_LABEL[r.metric]}/{r.window} waits for an approver"
              for r in asked]
    return [section("*Raises*\n" + "\n".join(lines))] if lines else []


def home_view(report: UsageReport | None, periods: list[UsageReport], pending: list[RequestView],
              revocation_id: int | None, asked: Sequence[RaiseRequestView] = (),
              raised: Sequence[RaiseView] = (), *, tz: ZoneInfo) -> dict[str, Any]:
    blocks: list[Any] = [HeaderBlock(text="Your Bedrock usage")]
    if report is None:
        blocks.append(section("No usage recorded for you yet. An admin can provision an inference "
                               "profile for you with `/bedrock provision @you <model>`."))
        return View(type="home", blocks=blocks).to_dict()
    for p in periods:
        t = p.totals
        blocks.append(section(f"*{p.label}*: {t.all_input_tokens:,} tokens in, {t.output_tokens:,} out, "
                               f"{t.requests:,} requests"))
    if report.limits:
        lines = "\n".join(limit_line(s, tz) for s in report.limits)
        blocks += [DividerBlock(), section(f"*Limits*\n{lines}")]
    blocks += _raises(asked, raised, tz)
    blocks.append(DividerBlock())
    if report.revoked:
        blocks.append(section("⛔ *Revoked*: " + plain("; ".join(report.revoked))))
        if pending:
            blocks.append(section(f"⏳ Your restore request {pending[-1].id} is waiting for an admin."))
        elif revocation_id is not None:
            blocks.append(restore_button(revocation_id))
    else:
        blocks.append(section("✅ *Active*: you can call Bedrock."))
    return View(type="home", blocks=blocks[:100]).to_dict()
