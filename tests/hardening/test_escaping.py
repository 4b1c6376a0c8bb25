"""Issue 15 item 8: everything people type reaches Slack as literal text. One function,
`bot.render.text.plain` (prose) with `code` (inside a code span), neutralises mentions,
links, mrkdwn markers (`* _ ~` and backticks, triple ones included), line-leading block
quotes, and shows bidi overrides and zero-width characters instead of passing them on."""

from __future__ import annotations

import re
import string

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from bot.models import RestoreRequest
from bot.render.text import code, plain
from tests.hardening.conftest import World, slack_json
from tests.harness import ADMIN, ALERTS, ALICE, BOB, reply_text

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"
INVISIBLE = set(BIDI + ZERO_WIDTH + "\u2028\u2029")
SPECIALS = "&<>*_~`"
HOSTILE_BITS = ["<!channel>", "<!here>", "<@U0HACKER>", "<http://evil.example|click>", "*bold*",
                "_it_", "~gone~", "`x`", "```block```", "> quote", "&lt;!here&gt;", *BIDI, *ZERO_WIDTH]
TEXT = st.one_of(st.text(max_size=80),
                 st.lists(st.sampled_from(HOSTILE_BITS) | st.text(max_size=6), max_size=12).map("".join))
SAFE_ASCII = st.text(alphabet="".join(c for c in string.printable if c not in SPECIALS + "\r\x0b\x0c"))


def _inert(out: str) -> None:
    assert "<" not in out and ">" not in out  # no mention, link or broadcast can open
    assert not re.search(r"&(?!amp;|lt;|gt;)", out)  # every & is one of the three entities
    assert not INVISIBLE & set(out)
    assert not any(ord(c) < 32 and c not in "\n\t" for c in out)


@given(TEXT)
def test_plain_output_is_never_active(text: str) -> None:
    out = plain(text)
    _inert(out)
    assert not set("*_~`") & set(out)
    assert not re.search(r"^[ \t]*&gt;", out, re.MULTILINE)  # no block quote either


@given(TEXT)
def test_code_output_is_one_inert_span(text: str) -> None:
    out = code(text)
    assert out.startswith("`") and out.endswith("`") and "`" not in out[1:-1]
    assert "\n" not in out
    _inert(out[1:-1])


@given(SAFE_ASCII)
def test_ordinary_text_is_unchanged(text: str) -> None:
    if not re.search(r"^[ \t]*>", text, re.MULTILINE):
        assert plain(text) == text
    assert code(text.replace("\n", " ")) == f"`{text.replace(chr(10), ' ')}`"


def test_invisible_characters_are_shown_not_dropped() -> None:
    assert plain("ab\u202edc") == "ab[U+202E]dc"
    assert plain("a\u200bb") == "a[U+200B]b"
    assert code("user/x\u2066y") == "`user/x[U+2066]y`"


# ---- through the running bot, to the alert channel --------------------------------------------------

REASON = "\u202eriaf\u202c *urgent* _now_ ~old~ ```rm -rf``` `x` <!here>"


def _raw_markup(w: World) -> list[str]:
    sent = slack_json(w.bot)
    return [bit for bit in ("\u202e", "\u202c", "*urgent*", "_now_", "~old~", "```", "`x`", "<!here>")
            if bit in sent]


def test_revoke_reason_reaches_the_alert_channel_as_literal_text(world: World) -> None:
    w = world
    assert "Revoked" in reply_text(w.bot.command(f"revoke alice {REASON}"))
    alert = next(c for c in w.bot.slack.calls("chat.postMessage") if c.args["channel"] == ALERTS)
    assert "urgent" in reply_text(alert.args) and "[U+202E]" in reply_text(alert.args)
    assert _raw_markup(w) == []


def test_request_reason_and_deny_note_are_literal(world: World) -> None:
    w = world
    w.bot.command("revoke alice")
    w.bot.slack.clear()
    w.bot.command(f"restore alice {REASON}", user=ALICE)
    with w.db.session_scope() as s:
        req_id = s.scalars(select(RestoreRequest.id)).one()
    resp = w.bot.action({"type": "view_submission", "team": {"id": "T0001"}, "api_app_id": "A0001",
                         "user": {"id": ADMIN, "username": "admin", "team_id": "T0001"},
                         "view": {"id": "V2", "type": "modal", "callback_id": "deny_request_modal",
                                  "private_metadata": str(req_id), "hash": "h", "blocks": [],
                                  "state": {"values": {"reason": {"reason_input": {
                                      "type": "plain_text_input", "value": REASON}}}}}})
    assert resp.status == 200
    w.bot.slack.wait_for("chat.update")
    w.bot.settle()
    assert "urgent" in slack_json(w.bot)
    assert _raw_markup(w) == []


def test_linked_arn_in_a_revocation_alert_is_escaped(world: World) -> None:
    """The revoke alert lists the principals' ARNs; an IAM path may hold `<!channel>`."""
    w = world
    arn = "arn:aws:iam::123456789012:user/<!channel>/`x`/bob"
    w.iam.create_user(UserName="bob", Path="/<!channel>/`x`/")
    assert "Linked" in reply_text(w.bot.command(f"link <@{BOB}|bob> {arn}"))
    w.bot.slack.clear()
    assert "Revoked" in reply_text(w.bot.command("revoke bob"))
    sent = slack_json(w.bot)
    assert "<!channel>" not in sent and "`x`" not in sent


def test_metadata_value_in_the_alert_channel_is_literal(world: World) -> None:
    w = world
    reply = reply_text(w.bot.command("meter team=a`<!here>`b alice"))
    assert reply.startswith("✅"), reply
    sent = slack_json(w.bot)
    assert "<!here>" not in sent
    # the value's backticks would close the code span it is shown in: look-alikes instead
    assert "`team=a\u02cb&lt;!here&gt;\u02cbb`" in sent
