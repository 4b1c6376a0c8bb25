"""Hostile input from Slack: random command text from a non-admin changes nothing; payloads
of shapes Slack never documented are answered 4xx/200, never 500, and change nothing; a
request body over the cap is refused unread; names and reasons people type cannot ping
@channel or forge links in anything the bot posts; unicode and SQL-looking names are refused
or stored as typed."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from bot.models import Base, RestoreRequest, Revocation, Subject
from handlers.http import MAX_BODY, WsgiApp
from tests.fakes.signing import interactive_body, slash_command_body
from tests.hardening.conftest import (
    ALICE_ARN,
    MODEL,
    World,
    assert_chain_intact,
    audit_events,
    last_audit_id,
    signed_post,
    slack_json,
    snapshot,
)
from tests.hardening.payloads import ADMIN_USER, approve, button, view_submission
from tests.harness import ADMIN, ALERTS, ALICE, BOB, reply_text, waitress_serving

# ---- random text from a non-admin -------------------------------------------------------------

WORDS = ["usage", "limit", "limits", "unlimit", "provision", "profiles", "link", "team", "meter",
         "revoke", "restore", "audit", "admins", "digest", "help", "add", "remove", "alice", "bob",
         "team-eng", f"<@{ALICE}>", f"<@{BOB}|bob>", f"<@{ADMIN}>", "5M/week", "$200/month", "1M/24h",
         "warn=50", "action=notify", "alarm=off", "input", "requests", MODEL, ALICE_ARN, "owner",
         "approver", "cost-center=ml", "userId=alice", "&lt;!channel&gt;", "<!channel>", "today", "7d",
         "100", "0", "-1", "'; DROP TABLE subjects;--", "ålice", "\u202eecila", "😀"]
TOKEN = st.one_of(st.sampled_from(WORDS), st.text(max_size=24))
COMMAND_TEXT = st.one_of(
    st.text(max_size=120),
    st.lists(TOKEN, min_size=1, max_size=6).map(" ".join),
    st.tuples(st.sampled_from(WORDS[:15]), st.lists(TOKEN, max_size=5)).map(
        lambda t: " ".join([t[0], *t[1]])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=COMMAND_TEXT)
def test_random_text_from_a_non_admin_changes_nothing(revoked_world: World, text: str) -> None:
    w = revoked_world
    before = snapshot(w.db)
    reply = reply_text(w.bot.command(text, user=BOB))
    assert reply.strip() and "Traceback" not in reply and "went wrong" not in reply, reply
    assert snapshot(w.db) == before


@pytest.fixture
def revoked_world(world: World) -> Iterator[World]:
    world.bot.command("limit alice 5M/week")
    world.bot.command("revoke alice")
    world.bot.slack.clear()
    yield world
    assert_chain_intact(world.db)


def test_every_refusal_of_a_non_admin_is_audited(revoked_world: World) -> None:
    w = revoked_world
    for text in ("limit alice 1M/day", "revoke alice", "unlimit alice", "provision bob " + MODEL,
                 f"link <@{BOB}|bob> arn:aws:iam::123456789012:user/bob", "team team-x add <@U0NEW01>",
                 f"admins add <@{BOB}> owner", "restore alice please"):
        mark = last_audit_id(w.db)
        w.bot.command(text, user=BOB)
        rows = audit_events(w.db, mark)
        assert [(e.actor, e.outcome) for e in rows] == [(f"slack:{BOB}", "denied")], (text, rows)


# ---- payloads of unexpected shapes, through the WSGI app `serve` runs -------------------------------

FORM, JSON = "application/x-www-form-urlencoded", "application/json"
DEEP = "[" * 100_000 + "]" * 100_000


def shapes(url: str) -> dict[str, tuple[str, str]]:
    """Signed bodies Slack never documented; `url` is the response_url buttons carry."""
    def click(user: Any, actions: Any) -> str:
        return interactive_body(button(user, actions, url))

    def modal(view: Any) -> str:
        return interactive_body(view_submission(view))

    return {
        "missing user": (click(None, approve("1")), FORM),
        "user is a string": (click("U1", approve("1")), FORM),
        "user without id": (click({}, approve("1")), FORM),
        "actions is an object": (click(ADMIN_USER, {"a": 1}), FORM),
        "actions is empty": (click(ADMIN_USER, []), FORM),
        "actions holds strings": (click(ADMIN_USER, ["approve_request"]), FORM),
        "value not digits": (click(ADMIN_USER, approve("1; DROP TABLE x")), FORM),
        "value huge": (click(ADMIN_USER, approve("9" * 5000)), FORM),
        "value negative": (click(ADMIN_USER, approve("-1")), FORM),
        "value an object": (click(ADMIN_USER, approve({"id": 1})), FORM),
        "unknown action id": (click(ADMIN_USER, [{"action_id": "rm_rf", "value": "1"}]), FORM),
        "view without state": (modal({"type": "modal", "callback_id": "restore_request_modal",
                                      "private_metadata": "1"}), FORM),
        "view state is a list": (modal({"type": "modal", "callback_id": "restore_request_modal",
                                        "private_metadata": "1", "state": []}), FORM),
        "view is a string": (modal("restore_request_modal"), FORM),
        "view without type": (modal({"callback_id": "restore_request_modal"}), FORM),
        "unknown callback id": (modal({"type": "modal", "callback_id": "zzz"}), FORM),
        "payload is an array": (urlencode({"payload": "[1, 2]"}), FORM),
        "payload is a string": (urlencode({"payload": '"block_actions"'}), FORM),
        "payload is null": (urlencode({"payload": "null"}), FORM),
        "payload is not json": (urlencode({"payload": "{"}), FORM),
        "payload nested deeply": (urlencode({"payload": DEEP}), FORM),
        "payload without type": (urlencode({"payload": json.dumps({"user": ADMIN_USER})}), FORM),
        "json body is an array": ("[1, 2, 3]", JSON),
        "json event is a list": (json.dumps({"type": "event_callback", "event": [1]}), JSON),
        "json event without type": (json.dumps({"type": "event_callback", "event": {"user": "U1"}}), JSON),
        "app_home_opened user is an object": (json.dumps({
            "type": "event_callback", "team_id": "T0001", "api_app_id": "A0001",
            "event": {"type": "app_home_opened", "user": {"id": ALICE}, "tab": "home"}}), JSON),
        "form without command": ("a=b&c=d", FORM),
        "slash command without user or text": (urlencode({"command": "/bedrock", "response_url": url}), FORM),
        "slash command text over the limit": (slash_command_body("usage " + "x" * 5000, user_id=ADMIN,
                                                                 response_url=url), FORM),
        "slash command from an unknown command": (slash_command_body("help", command="/rm-rf"), FORM),
    }


SHAPES = shapes("")


def test_unexpected_payload_shapes_never_500_and_change_nothing(revoked_world: World) -> None:
    w = revoked_world
    w.bot.command("restore alice need it", user=ALICE)  # a pending request for the clicks to aim at
    app = WsgiApp(w.bot.services, w.bot.app)
    before = snapshot(w.db)
    wrong: dict[str, int] = {}
    for shape, (body, ctype) in shapes(w.bot.slack.response_url("shape")).items():
        status, _, _ = signed_post(app, body, content_type=ctype)
        if status not in (200, 400, 404):
            wrong[shape] = status
    assert wrong == {}
    assert snapshot(w.db) == before


def test_forged_requests_of_odd_shapes_are_401(revoked_world: World) -> None:
    """§7: a forged request is 401 whatever its body, before anything tries to read it."""
    app = WsgiApp(revoked_world.bot.services, revoked_world.bot.app)
    statuses = {shape: signed_post(app, body, content_type=ctype, secret="not-the-secret")[0]
                for shape, (body, ctype) in SHAPES.items()}
    assert {shape for shape, status in statuses.items() if status != 401} == set()


def test_odd_button_values_get_a_polite_answer(revoked_world: World) -> None:
    w = revoked_world
    app = WsgiApp(w.bot.services, w.bot.app)
    for i, value in enumerate(("abc", "9" * 5000, "-1", "")):
        url = w.bot.slack.response_url(f"odd{i}")
        assert signed_post(app, interactive_body(button(ADMIN_USER, approve(value), url)))[0] == 200
        told = reply_text(w.bot.slack.wait_for(f"response_url:odd{i}")[0].args)
        assert "does not name a request" in told
    url = w.bot.slack.response_url("nope")
    assert signed_post(app, interactive_body(button(ADMIN_USER, approve("424242"), url)))[0] == 200
    assert "no restore request 424242" in reply_text(w.bot.slack.wait_for("response_url:nope")[0].args)


def test_app_home_button_refusal_reaches_the_clicker(revoked_world: World) -> None:
    w = revoked_world
    w.bot.command("restore alice")  # not revoked any more: the Home button is refused
    w.bot.slack.clear()
    payload = button({"id": ALICE, "username": "alice", "team_id": "T0001"},
                      [{"action_id": "request_restore", "block_id": "revocation-1", "value": "1",
                        "type": "button", "action_ts": "1.2"}])
    payload["container"] = {"type": "view", "view_id": "V0HOME"}
    payload["view"] = {"id": "V0HOME", "type": "home"}
    app = WsgiApp(w.bot.services, w.bot.app)
    assert signed_post(app, interactive_body(payload))[0] == 200
    told = [c for c in w.bot.slack.wait_for("chat.postMessage", timeout=3)
            if c.args["channel"] == f"D{ALICE}"]
    assert told and "not revoked" in reply_text(told[0].args)


# ---- the request body cap ---------------------------------------------------------------------------

class _Unreadable:
    def read(self, *_: Any) -> bytes:
        raise AssertionError("an over-sized body must be refused without reading it")


@pytest.fixture
def bare_app() -> WsgiApp:
    """Enough of the app for what happens before a body is read (no database, no Bolt)."""
    return WsgiApp(cast(Any, None), cast(Any, None), sns=lambda body: (200, "ok"))


@pytest.mark.parametrize("path", ["/slack/events", "/sns"])
def test_body_over_the_cap_is_refused_unread(bare_app: WsgiApp, path: str) -> None:
    assert _call_with_input(bare_app, path, _Unreadable(), str(MAX_BODY + 1))[0] == 413


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", " ", "١٢"])
def test_malformed_content_length_is_400(bare_app: WsgiApp, length: str) -> None:
    assert _call_with_input(bare_app, "/slack/events", _Unreadable(), length)[0] == 400


def _call_with_input(app: WsgiApp, path: str, stream: Any, length: str) -> tuple[int, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"] = int(status.split()[0])

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "CONTENT_LENGTH": length,
               "CONTENT_TYPE": FORM, "wsgi.input": stream}
    body = b"".join(app(environ, start))
    return seen["status"], {}, body


def test_chunked_body_over_the_cap_is_refused_by_the_real_server(bare_app: WsgiApp) -> None:
    """Without a Content-Length (chunked), waitress buffers the body and then tells the app its length."""
    with waitress_serving(bare_app) as port:
        def chunks() -> Iterator[bytes]:
            for _ in range(MAX_BODY // 65536 + 2):
                yield b"x" * 65536

        req = urllib.request.Request(f"http://127.0.0.1:{port}/slack/events", data=chunks(), method="POST",
                                     headers={"Content-Type": FORM, "Transfer-Encoding": "chunked"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status = resp.status
        except urllib.error.HTTPError as err:
            status = err.code
        assert status == 413


# ---- escaping: what people type cannot ping or forge links ------------------------------------------

PINGS = ("<!channel>", "<!here>", "<!everyone>", "<@U0HACKER>", "<http://evil.example|click here>",
         "<#C0SECRET>", "<!subteam^S0ADMINS>")
HOSTILE = "<!channel> <!here> <!everyone> <@U0HACKER> <http://evil.example|click here> <#C0SECRET> " \
          "<!subteam^S0ADMINS>"


def _escaped_everywhere(w: World, where: str) -> None:
    sent = slack_json(w.bot)
    for ping in PINGS:
        assert ping not in sent, f"{ping} reached Slack unescaped ({where})"


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "entities"])
def test_revoke_reason_is_escaped(world: World, encoded: bool) -> None:
    w = world
    text = HOSTILE.replace("<", "&lt;").replace(">", "&gt;") if encoded else HOSTILE
    assert "Revoked" in reply_text(w.bot.command(f"revoke alice {text}"))
    alert = next(c for c in w.bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS)
    assert "click here" in reply_text(alert.args)  # the reason is shown, as text
    _escaped_everywhere(w, "revoke reason")
    with w.db.session_scope() as s:  # and stored as typed
        assert s.scalars(select(Revocation.note)).one() == HOSTILE


def test_restore_request_reasons_are_escaped(world: World) -> None:
    w = world
    w.bot.command("revoke alice")
    w.bot.slack.clear()
    w.bot.command(f"restore alice {HOSTILE}", user=ALICE)  # a non-admin files a request
    posted = [c for c in w.bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS]
    assert posted and "click here" in reply_text(posted[0].args)
    _escaped_everywhere(w, "restore request by slash command")

    w.bot.command("restore alice")  # admin restores; alice is revoked again, asks by the modal
    w.bot.command("revoke alice")
    w.bot.slack.clear()
    with w.db.session_scope() as s:
        rev_id = max(s.scalars(select(Revocation.id)))
    resp = w.bot.action(view_submission({"id": "V1", "type": "modal", "callback_id": "restore_request_modal",
                               "private_metadata": str(rev_id), "hash": "h", "blocks": [],
                               "state": {"values": {"reason": {"reason_input": {
                                   "type": "plain_text_input", "value": HOSTILE}}}}}))
    assert resp.status == 200
    w.bot.slack.wait_for("chat.postMessage", count=2)
    _escaped_everywhere(w, "restore request by modal")
    with w.db.session_scope() as s:
        assert set(s.scalars(select(RestoreRequest.reason))) == {HOSTILE}


def test_deny_note_is_escaped(world: World) -> None:
    w = world
    w.bot.command("revoke alice")
    w.bot.command("restore alice please", user=ALICE)
    w.bot.slack.clear()
    with w.db.session_scope() as s:
        req_id = s.scalars(select(RestoreRequest.id)).one()
    resp = w.bot.action({"type": "view_submission", "team": {"id": "T0001"}, "api_app_id": "A0001",
                         "user": {"id": ADMIN, "username": "admin", "team_id": "T0001"},
                         "view": {"id": "V2", "type": "modal", "callback_id": "deny_request_modal",
                                  "private_metadata": str(req_id), "hash": "h", "blocks": [],
                                  "state": {"values": {"reason": {"reason_input": {
                                      "type": "plain_text_input", "value": HOSTILE}}}}}})
    assert resp.status == 200
    w.bot.slack.wait_for("chat.update")
    w.bot.slack.wait_for("chat.postMessage")
    _escaped_everywhere(w, "deny note")


def test_linked_arn_in_the_alert_channel_is_escaped(world: World) -> None:
    """An IAM path may hold < ! > characters, and `link` announces the ARN in the alert channel."""
    w = world
    arn = "arn:aws:iam::123456789012:user/<!channel>/<!here>/bob"
    assert "Linked" in reply_text(w.bot.command(f"link <@{BOB}|bob> {arn}"))
    posts = [c for c in w.bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS]
    assert len(posts) == 1
    sent = json.dumps([c.args for c in posts])
    assert "<!channel>" not in sent and "<!here>" not in sent


def test_error_replies_escape_the_echoed_input(world: World) -> None:
    """Refusals quote what was typed; the quote must not become a mention or a link either."""
    w = world
    for text in (f"usage {HOSTILE}", f"limit {HOSTILE} 5M/week", f"revoke {HOSTILE}",
                 f"provision alice {MODEL} note={HOSTILE}", f"team {HOSTILE} add <@{BOB}>"):
        reply = w.bot.command(text)
        assert reply_text(reply).startswith("⚠️")
        for block in reply.get("blocks") or []:
            for ping in PINGS:
                assert ping not in json.dumps(block), (text, block)


# ---- unicode and SQL-looking names ----------------------------------------------------------------------

SQLISH = "team-x'; DROP TABLE subjects;--"
NAMES = [SQLISH, "team-x';DROP-TABLE-subjects;--", "ålice", "ＡＬＩＣＥ", "😀", "\u202eecila", "al\u200bice",
         "Robert');DROP", "%27OR%201=1", "team-ü", "alice\x07", "team-\t"]


def test_odd_subject_names_are_refused_or_stored_as_typed(world: World) -> None:
    w = world
    tables = {t.name for t in Base.metadata.sorted_tables}
    for name in NAMES:
        with w.db.session_scope() as s:
            known = set(s.scalars(select(Subject.name)))
        for text in (f"provision {name} {MODEL}", f"team {name} add <@{BOB}|bob>", f"limit {name} 5M/week",
                     f"usage {name}", f"revoke {name}", f"link {name} arn:aws:iam::123456789012:user/x"):
            reply = reply_text(w.bot.command(text))
            assert "went wrong" not in reply and "Traceback" not in reply, (text, reply)
        with w.db.session_scope() as s:
            new = set(s.scalars(select(Subject.name))) - known - {"bob"}
        assert new <= {name.lower()}, (name, new)  # refused, or stored exactly as typed
    assert tables <= set(inspect(w.db.engine).get_table_names())
    assert_chain_intact(w.db)


@pytest.mark.parametrize("label", ["ålice", "émile",
                                   "\u202eecila", "😀"])
def test_mention_labels_with_unicode_make_a_recognisable_name(world: World, label: str) -> None:
    """Slack sends the handle in the mention; it is normalised to [a-z0-9._-]: refused, or a
    recognisable ASCII form of the handle (or the user id), never a fragment of it."""
    import unicodedata

    w = world
    reply = reply_text(w.bot.command(f"provision <@U0UNI001|{label}> {MODEL}"))
    with w.db.session_scope() as s:
        names = list(s.scalars(select(Subject.name).where(Subject.slack_user_id == "U0UNI001")))
    ascii_form = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode().lower()
    if not names:
        assert reply.startswith("⚠️") and "went wrong" not in reply, reply
    else:
        # the folded handle, suffixed with the user id when that name is taken, or the id itself
        assert names[0] in (ascii_form, f"{ascii_form}-u0uni001", "u0uni001"), names


@pytest.mark.parametrize("text", ["team alice\x00 add <@UBOB0001|bob>", "revoke alice because\x00"])
def test_nul_bytes_are_refused_not_crashed(world: World, request: pytest.FixtureRequest, text: str) -> None:
    mark = last_audit_id(world.db)
    reply = reply_text(world.bot.command(text))
    assert "went wrong" not in reply
    assert audit_events(world.db, mark) != []


def test_unparseable_text_is_audited(world: World) -> None:
    mark = last_audit_id(world.db)
    assert reply_text(world.bot.command("limit alice 5 apples", user=BOB)).startswith("⚠️")
    assert [e.outcome for e in audit_events(world.db, mark)] == ["denied"]


def test_sql_looking_reason_is_stored_literally(world: World) -> None:
    w = world
    w.bot.command(f"revoke alice {SQLISH}")
    with w.db.session_scope() as s:
        assert s.scalars(select(Revocation.note)).one() == SQLISH
        assert s.scalars(select(Subject.name)).all() == ["alice"]
    assert {t.name for t in Base.metadata.sorted_tables} <= set(inspect(w.db.engine).get_table_names())
