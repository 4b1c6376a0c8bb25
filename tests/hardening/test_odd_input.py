"""Issue 15 item 7 (input): numbers people send are ASCII digits, range-checked, and every
odd one gets a clear one-line refusal and an audit row — never a crash, and never "the
database is not answering" for an id PostgreSQL's int4 cannot hold. A listener failure that
no flow step audited is audited by the listener that answers it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from bot.flows import reports
from bot.models import RestoreRequest
from bot.render import approvals as ui
from bot.render import messages
from handlers.http import WsgiApp
from handlers.replies import DB_DOWN, SORRY
from tests.fakes.signing import interactive_body
from tests.hardening.conftest import World, audit_events, last_audit_id, signed_post
from tests.hardening.payloads import ADMIN_USER, approve, button
from tests.harness import ADMIN, ALICE, reply_text


@pytest.mark.parametrize("text", ["audit ²", "audit alice ³", "audit ١٢", "audit alice 1²", "audit ⅷ"])
def test_non_ascii_digits_in_a_command_are_refused_and_audited(world: World, text: str) -> None:
    mark = last_audit_id(world.db)
    reply = reply_text(world.bot.command(text))
    assert reply.startswith("⚠️") and "went wrong" not in reply, reply
    assert "Usage: `/bedrock audit" in reply
    assert [(e.action, e.outcome) for e in audit_events(world.db, mark)] == [("command.parse", "denied")]


@pytest.mark.parametrize("text", ["audit 0", "audit 101", "audit alice 99999999999999999999"])
def test_counts_out_of_range_are_refused_and_audited(world: World, text: str) -> None:
    mark = last_audit_id(world.db)
    reply = reply_text(world.bot.command(text))
    assert reply.startswith("⚠️") and "between 1 and 100" in reply, reply
    assert [(e.action, e.outcome) for e in audit_events(world.db, mark)] == [("command.parse", "denied")]


@pytest.fixture
def pending(world: World) -> int:
    """alice revoked and asking: a real request id for the buttons to aim near."""
    world.bot.command("revoke alice")
    world.bot.command("restore alice need it", user=ALICE)
    world.bot.slack.clear()
    with world.db.session_scope() as s:
        return int(s.scalars(select(RestoreRequest.id)).one())


# 10 digits and more overflow PostgreSQL's int4 (2,147,483,647); superscripts and other
# non-ASCII digits pass str.isdigit() but not int()
ODD_IDS = ["²", "¹²", "١", "12345678901", "9999999999", "2147483648", " 1", "1 ", "+1", "0x1", "1_0"]


@pytest.mark.parametrize("value", ODD_IDS)
def test_odd_button_values_are_refused_and_audited(world: World, pending: int, value: str) -> None:
    w = world
    app = WsgiApp(w.bot.services, w.bot.app)
    mark = last_audit_id(w.db)
    url = w.bot.slack.response_url("odd")
    assert signed_post(app, interactive_body(button(ADMIN_USER, approve(value), url)))[0] == 200
    told = reply_text(w.bot.slack.wait_for("response_url:odd")[0].args)
    assert told == "⚠️ that button does not name a request"
    assert DB_DOWN not in told
    rows = audit_events(w.db, mark)
    assert [(e.action, e.target, e.outcome) for e in rows] == [("request.approve", "slack", "denied")]
    with w.db.session_scope() as s:
        assert s.get(RestoreRequest, pending).status == "pending"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["²", "12345678901"])
def test_odd_private_metadata_in_a_modal_is_refused_and_audited(world: World, pending: int,
                                                                value: str) -> None:
    w = world
    mark = last_audit_id(w.db)
    resp = w.bot.action({"type": "view_submission", "team": {"id": "T0001"}, "api_app_id": "A0001",
                         "user": ADMIN_USER,
                         "view": {"id": "V2", "type": "modal", "callback_id": ui.DENY_MODAL,
                                  "private_metadata": value, "hash": "h", "blocks": [],
                                  "state": {"values": {ui.REASON_BLOCK: {ui.REASON_INPUT: {
                                      "type": "plain_text_input", "value": "no"}}}}}})
    assert resp.status == 200
    dm = w.bot.slack.wait_for("chat.postMessage")[0].args  # a modal has no response_url: a DM
    assert dm["channel"] == f"D{ADMIN}" and "does not name a request" in reply_text(dm)
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)] == [("request.deny", "denied")]


def test_the_largest_id_int4_holds_is_looked_up_not_crashed(world: World, pending: int) -> None:
    w = world
    mark = last_audit_id(w.db)
    w.bot.action(button(ADMIN_USER, approve("999999999"), w.bot.slack.response_url("big")))
    told = reply_text(w.bot.slack.wait_for("response_url:big")[0].args)
    assert "no restore request 999999999" in told
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)] == [("request.approve", "denied")]


# ---- a failure outside any flow step still ends in a reply and an audit row ---------------------

def _boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError("renderer broke")


def test_a_button_failure_outside_a_step_is_answered_and_audited(
        world: World, pending: int, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    monkeypatch.setattr(ui, "deny_modal", _boom)
    mark = last_audit_id(w.db)
    w.bot.action(button(ADMIN_USER, [{"action_id": ui.DENY, "block_id": "b", "value": str(pending),
                                      "type": "button", "action_ts": "1.2"}],
                        w.bot.slack.response_url("deny")))
    assert reply_text(w.bot.slack.wait_for("response_url:deny")[0].args) == SORRY
    rows = [(e.action, e.target, e.outcome, json.loads(e.details)) for e in audit_events(w.db, mark)]
    assert rows == [("request.deny", f"request:{pending}", "error",
                     {"reason": "RuntimeError: renderer broke"})]


def test_a_command_failure_outside_a_step_is_answered_and_audited(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    monkeypatch.setattr(messages, "audit_reply", _boom)
    mark = last_audit_id(w.db)
    assert w.bot.command("audit")["text"] == SORRY
    rows = [(e.actor, e.action, e.outcome) for e in audit_events(w.db, mark)]
    assert rows == [(f"slack:{ADMIN}", "command", "error")]


def test_a_failure_a_step_audited_is_not_audited_twice(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports.audit, "recent", _boom)  # inside the step: the step audits it
    mark = last_audit_id(world.db)
    assert world.bot.command("audit")["text"] == SORRY
    assert [(e.action, e.outcome) for e in audit_events(world.db, mark)] == [("audit.view", "error")]
