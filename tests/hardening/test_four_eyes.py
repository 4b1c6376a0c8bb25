"""Issue 15 item 10: four eyes hold for admins too. An admin whose own access a restore would
give back (the revoked user, or a member of the revoked team) files a request like anyone
else, and cannot decide one; an owner's break-glass restores at once, only with a reason,
audited as `access.break_glass` and announced in the alert channel."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from bot.errors import BadInput
from bot.models import RestoreRequest, Revocation
from bot.render import approvals as ui
from bot.slash import grammar as g
from bot.slash import registry
from tests.hardening.conftest import MODEL, World, audit_events, last_audit_id
from tests.hardening.payloads import approve, button
from tests.harness import ADMIN, ALERTS, ALICE, reply_text

ANN = "UADMIN02"  # a second admin (not an owner)


@pytest.fixture
def admins(world: World) -> World:
    w = world
    assert reply_text(w.bot.command(f"admins add <@{ANN}> admin")).startswith("✅")
    for who, name in ((ANN, "ann"), (ADMIN, "boss")):
        w.bot.command(f"provision <@{who}|{name}> {MODEL}")
    w.bot.slack.clear()
    return w


def _states(w: World) -> list[str]:
    with w.db.session_scope() as s:
        return list(s.scalars(select(Revocation.state).order_by(Revocation.id)))


def _requests(w: World) -> list[tuple[str, str]]:
    with w.db.session_scope() as s:
        rows = s.scalars(select(RestoreRequest).order_by(RestoreRequest.id))
        return [(r.requester, r.status) for r in rows]


def _alerts(w: World) -> str:
    w.bot.settle()
    return json.dumps([c.args for c in w.bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS],
                      ensure_ascii=False)


def test_an_admin_asks_for_their_own_access_back(admins: World) -> None:
    w = admins
    w.bot.command(f"revoke <@{ANN}|ann> leaked key")
    mark = last_audit_id(w.db)
    told = reply_text(w.bot.command(f"restore <@{ANN}|ann>", user=ANN))
    assert told.startswith("⚠️ four eyes") and "reason" in told
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)] == [("access.restore", "denied")]
    assert _states(w) == ["active"]

    assert "with the admins" in reply_text(w.bot.command(f"restore <@{ANN}|ann> rotated it", user=ANN))
    assert _states(w) == ["active"] and _requests(w) == [(ANN, "pending")]
    assert "Restore request" in _alerts(w)


def test_an_admin_in_a_revoked_team_asks_too(admins: World) -> None:
    w = admins
    w.bot.command(f"team team-eng add <@{ANN}|ann> <@{ALICE}|alice>")
    w.bot.command("revoke team-eng")
    assert "with the admins" in reply_text(w.bot.command("restore team-eng demo at 3", user=ANN))
    assert _states(w) == ["active"]
    assert "✅ Restored" in reply_text(w.bot.command("restore team-eng"))  # the owner is not in it
    assert _states(w) == ["restored"]


def test_nobody_decides_a_request_for_their_own_team(admins: World) -> None:
    w = admins
    w.bot.command(f"team team-eng add <@{ANN}|ann> <@{ALICE}|alice>")
    w.bot.command("revoke team-eng")
    w.bot.command("restore team-eng need it", user=ALICE)
    with w.db.session_scope() as s:
        req = int(s.scalars(select(RestoreRequest.id)).one())
    mark = last_audit_id(w.db)
    for action in (ui.APPROVE, ui.APPROVE_24H, ui.DENY):
        name = f"ann-{action}"
        actions = approve(str(req))
        actions[0]["action_id"] = action
        w.bot.action(button({"id": ANN, "username": "ann", "team_id": "T0001"}, actions,
                            w.bot.slack.response_url(name)))
        told = reply_text(w.bot.slack.wait_for(f"response_url:{name}")[0].args)
        assert "would restore your own access" in told
    assert [e.outcome for e in audit_events(w.db, mark)] == ["denied"] * 3
    assert _requests(w) == [(ALICE, "pending")] and _states(w) == ["active"]
    w.bot.action(button({"id": ADMIN, "username": "boss", "team_id": "T0001"}, approve(str(req)),
                        w.bot.slack.response_url("boss")))
    w.bot.settle()
    assert _requests(w) == [(ALICE, "approved")] and _states(w) == ["restored"]


def test_an_owner_breaks_the_glass_with_a_reason_loudly(admins: World) -> None:
    w = admins
    w.bot.command(f"revoke <@{ADMIN}|boss> suspicious calls", user=ANN)
    assert reply_text(w.bot.command(f"restore <@{ADMIN}|boss>")).startswith("⚠️ four eyes")
    w.bot.slack.clear()
    mark = last_audit_id(w.db)
    told = reply_text(w.bot.command(f"restore <@{ADMIN}|boss> break-glass prod *incident* <!here>"))
    assert told.startswith("✅ Restored"), told
    assert _states(w) == ["restored"]
    alerts = _alerts(w)
    assert (f"🚨 break-glass restore by <@{ADMIN}> for `boss`: "
            "prod \u2217incident\u2217 &lt;!here&gt;") in alerts
    rows = [(e.action, e.target, e.outcome, json.loads(e.details)) for e in audit_events(w.db, mark)]
    assert rows[0] == ("access.break_glass", "user:boss", "ok", {"reason": "prod *incident* <!here>"})
    assert ("access.restore", "ok") in [(a, o) for a, _, o, _ in rows]


def test_break_glass_is_for_owners_only(admins: World) -> None:
    w = admins
    w.bot.command(f"revoke <@{ANN}|ann> leaked key")
    w.bot.slack.clear()
    mark = last_audit_id(w.db)
    told = reply_text(w.bot.command(f"restore <@{ANN}|ann> break-glass I am sure", user=ANN))
    assert told.startswith("⚠️") and "owner role" in told
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)] == [("access.break_glass", "denied")]
    assert _states(w) == ["active"] and "break-glass" not in _alerts(w)


def test_break_glass_needs_a_reason(admins: World) -> None:
    w = admins
    w.bot.command(f"revoke <@{ADMIN}|boss>", user=ANN)
    mark = last_audit_id(w.db)
    told = reply_text(w.bot.command(f"restore <@{ADMIN}|boss> break-glass"))
    assert told.startswith("⚠️ a break-glass restore needs a reason")
    assert [(e.action, e.outcome) for e in audit_events(w.db, mark)] == [("command.parse", "denied")]
    assert _states(w) == ["active"]


def test_restore_grammar_and_help() -> None:
    cmd = registry.parse("restore alice BREAK-GLASS the prod outage")
    assert cmd == g.Restore("restore", g.parse_subject("alice", "restore"), reason="the prod outage",
                            break_glass=True)
    assert registry.parse("restore alice break glass").break_glass is False  # type: ignore[attr-defined]
    with pytest.raises(BadInput, match="needs a reason"):
        registry.parse("restore alice break-glass   ")
    assert "break-glass <reason>" in registry.usage_line("restore")
