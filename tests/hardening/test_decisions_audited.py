"""Issue 15 item 9: a decision that changes nothing is still a decision — the losing click,
approving a denied request, approving one past its time — and each is audited (`denied`,
the action clicked, the reason). A request past its time says "expired" even before the
sweep has marked it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bot.clock import FixedClock
from bot.flows import approvals
from bot.models import AuditEvent, RestoreRequest
from bot.render import approvals as ui
from bot.services.directory import Actor
from tests.hardening.conftest import World, audit_events, last_audit_id
from tests.hardening.payloads import ADMIN_USER, approve, button
from tests.harness import ADMIN, ALICE, reply_text


@pytest.fixture
def req_id(world: World) -> int:
    world.bot.command("revoke alice")
    world.bot.command("restore alice need it", user=ALICE)
    world.bot.slack.clear()
    with world.db.session_scope() as s:
        return int(s.scalars(select(RestoreRequest.id)).one())


def _click(w: World, action_id: str, req: int, name: str) -> str:
    actions = approve(str(req))
    actions[0]["action_id"] = action_id
    w.bot.action(button(ADMIN_USER, actions, w.bot.slack.response_url(name)))
    w.bot.settle()
    calls = w.bot.slack.calls(f"response_url:{name}")
    return reply_text(calls[0].args) if calls else ""


def _rows(w: World, mark: int) -> list[tuple[str, str, str, dict[str, str]]]:
    return [(e.action, e.target, e.outcome, json.loads(e.details)) for e in audit_events(w.db, mark)]


def test_a_losing_click_is_told_and_audited(world: World, req_id: int) -> None:
    w = world
    assert _click(w, ui.APPROVE, req_id, "first") == ""  # the winner: the message itself changes
    mark = last_audit_id(w.db)
    told = _click(w, ui.APPROVE_24H, req_id, "second")
    assert told == f"Nothing to do: request {req_id} is already approved by <@{ADMIN}>."
    assert _rows(w, mark) == [("request.approve_24h", f"request:{req_id}", "denied",
                               {"reason": told, "status": "approved"})]


def test_approving_a_denied_request_is_told_and_audited(world: World, req_id: int) -> None:
    w = world
    assert approvals.decide(w.bot.services, Actor.slack(ADMIN), req_id, "deny", "over budget") is None
    mark = last_audit_id(w.db)
    told = _click(w, ui.APPROVE, req_id, "late")
    assert told == f"Nothing to do: request {req_id} is already denied by <@{ADMIN}>."
    assert [(a, o, d["status"]) for a, _, o, d in _rows(w, mark)] == [("request.approve", "denied", "denied")]
    assert w.policies() == ["bedrock-bot-deny-alice"]  # still revoked


def test_an_expired_request_not_yet_swept_says_expired(world: World, req_id: int, clock: FixedClock) -> None:
    w = world
    clock.advance(hours=w.bot.settings.bot.request_ttl_hours, minutes=1)
    mark = last_audit_id(w.db)
    told = _click(w, ui.APPROVE, req_id, "expired")
    assert told == f"Nothing to do: request {req_id} has expired; the requester can ask again."
    assert "pending" not in told
    assert [(a, o, d["status"]) for a, _, o, d in _rows(w, mark)] == [
        ("request.approve", "denied", "expired")]
    assert w.policies() == ["bedrock-bot-deny-alice"]
    with w.db.session_scope() as s:  # the sweep still owns the status change
        assert s.get(RestoreRequest, req_id).status == "pending"  # type: ignore[union-attr]
    assert [r.id for r in approvals.expire(w.bot.services)] == [req_id]


def test_every_click_on_a_closed_request_leaves_a_row(world: World, req_id: int) -> None:
    """Three more clicks after the decision: three `denied` rows, and the chain holds."""
    w = world
    _click(w, ui.APPROVE, req_id, "win")
    mark = last_audit_id(w.db)
    for i, action in enumerate((ui.APPROVE, ui.APPROVE_24H, ui.APPROVE)):
        assert _click(w, action, req_id, f"lose{i}").startswith("Nothing to do")
    with w.db.session_scope() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.id > mark)))
    assert [(e.outcome, e.actor) for e in rows] == [("denied", f"slack:{ADMIN}")] * 3
