"""What `serve` and `socket` check at start (handlers/preflight.py, bot/slack/channels.py),
against the fake Slack Web API:

- the bot token (auth.test) and, in Socket Mode, the app-level token: each refusal is one line
  naming the variable and the fix, exit 2; Slack unreachable is exit 1;
- the alert and digest channels: public ones are joined, private ones checked; a channel the
  bot cannot use is logged, audited and told to the owners once a day (or, with no owners, in
  the other channel).

The clients here have no retry handlers: a refusal is answered at once, nothing sleeps.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from sqlalchemy import select

from bot.clock import FixedClock
from bot.config import REGION_HINT
from bot.db import Database
from bot.models import AuditEvent
from bot.slack.channels import ensure_member
from handlers import preflight
from tests.fakes.slack_api import FakeSlack
from tests.harness import ADMIN, ALERTS, Harness, make_settings, running_bot

DIGESTS = "CDIGEST01"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def _client(slack: FakeSlack) -> WebClient:
    return WebClient(token="xoxb-test", base_url=slack.url)


def _check(slack: FakeSlack, capsys: pytest.CaptureFixture[str], socket_mode: bool = False,
           client: WebClient | None = None, **extra: str) -> tuple[int | None, str]:
    settings = make_settings("sqlite://", slack.url, SLACK_APP_TOKEN="xapp-test", **extra)
    try:
        me = preflight.check(settings, client or _client(slack), socket=socket_mode,
                             prog="socket" if socket_mode else "serve")
    except SystemExit as done:
        return int(done.code or 0), capsys.readouterr().err
    assert me.user_id == "UBOT" and me.bot_id == "BBOT"
    return None, capsys.readouterr().err


# ---- the tokens ------------------------------------------------------------------------


def test_a_good_token_passes_quietly(slack: FakeSlack, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(slack, capsys) == (None, "")
    assert len(slack.calls("auth.test")) == 1


@pytest.mark.parametrize(("error", "says"), [
    ("invalid_auth", "Slack does not accept SLACK_BOT_TOKEN (invalid_auth): copy it again"),
    ("not_authed", "no token was sent: SLACK_BOT_TOKEN is empty"),
    ("account_inactive", "deactivated workspace or a deleted bot user (account_inactive)"),
    ("token_revoked", "SLACK_BOT_TOKEN was revoked (token_revoked)"),
    ("token_expired", "SLACK_BOT_TOKEN expired (token_expired)"),
    ("not_allowed_token_type", "must start with xoxb-"),
    ("team_access_not_granted", "Slack refused SLACK_BOT_TOKEN: team_access_not_granted"),
])
def test_each_refusal_is_one_line_and_exit_2(slack: FakeSlack, capsys: pytest.CaptureFixture[str],
                                             error: str, says: str) -> None:
    slack.fail_always("auth.test", error)
    code, err = _check(slack, capsys)
    assert code == 2 and err.startswith("serve: ") and says in err and err.count("\n") == 1


def test_a_user_token_is_not_a_bot_token(slack: FakeSlack, capsys: pytest.CaptureFixture[str]) -> None:
    slack.set_response("auth.test", {"ok": True, "team": "T", "user": "dana", "user_id": "UDANA"})
    code, err = _check(slack, capsys)
    assert code == 2 and "not a bot token (it acts as user 'dana')" in err


def test_slack_unreachable_is_exit_1(slack: FakeSlack, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/api/"
    code, err = _check(slack, capsys, client=WebClient(token="xoxb-test", base_url=dead))
    assert code == 1 and f"cannot reach Slack at {slack.url}" in err and err.count("\n") == 1


def test_slack_having_trouble_is_exit_1(slack: FakeSlack, capsys: pytest.CaptureFixture[str]) -> None:
    slack.down()
    code, err = _check(slack, capsys)
    assert code == 1 and "service_unavailable" in err and "try again" in err


def test_socket_mode_checks_the_app_token_too(slack: FakeSlack, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(slack, capsys, socket_mode=True) == (None, "")
    assert slack.last("apps.connections.open").headers.get("Authorization") == "Bearer xapp-test"
    slack.fail_always("apps.connections.open", "not_allowed_token_type")
    code, err = _check(slack, capsys, socket_mode=True)
    assert code == 2 and err.startswith("socket: SLACK_APP_TOKEN is the wrong kind of token")
    assert "must start with xapp-" in err


def test_no_region_stops_start_before_slack_is_asked(slack: FakeSlack, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key)
    code, err = _check(slack, capsys)
    assert (code, err) == (2, f"serve: {REGION_HINT}\n")
    assert slack.calls("auth.test") == []


# ---- channels: what Slack answers --------------------------------------------------------


def test_a_public_channel_is_joined(slack: FakeSlack) -> None:
    check = ensure_member(_client(slack), "CPUBLIC1")
    assert (check.ok, check.joined, check.problem) == (True, True, "")
    slack.set_response("conversations.join", {"ok": True, "channel": {"id": "CPUBLIC1"},
                                              "warning": "already_in_channel",
                                              "response_metadata": {"warnings": ["already_in_channel"]}})
    assert ensure_member(_client(slack), "CPUBLIC1").joined is False


@pytest.mark.parametrize(("join", "info", "ok", "problem"), [
    ("method_not_supported_for_channel_type", {"is_private": True, "is_member": True}, True, ""),
    ("method_not_supported_for_channel_type", {"is_private": True, "is_member": False}, False,
     "is private and the bot is not a member: invite it there"),
    ("channel_not_found", "channel_not_found", False, "was not found: it does not exist, or it is private"),
    ("method_not_supported_for_channel_type", "missing_scope", False, "lacks groups:read"),
    ("is_archived", None, False, "is archived"),
    ("missing_scope", None, False, "lacks the channels:join scope"),
])
def test_what_each_answer_means(slack: FakeSlack, join: str, info: Any, ok: bool, problem: str) -> None:
    slack.fail_always("conversations.join", join)
    if isinstance(info, str):
        slack.fail_always("conversations.info", info)
    elif info is not None:
        slack.set_response("conversations.info", {"ok": True, "channel": {"id": "CPRIV", **info}})
    check = ensure_member(_client(slack), "CPRIV")
    assert check.ok is ok and problem in check.problem and not check.transient


def test_slack_trouble_while_joining_is_transient(slack: FakeSlack) -> None:
    slack.down()
    check = ensure_member(_client(slack), "CPUBLIC1")
    assert not check.ok and check.transient


# ---- channels: who is told ---------------------------------------------------------------


@pytest.fixture
def bot(db: Database, clock: FixedClock) -> Iterator[Harness]:
    with running_bot(db, clock, BOT_DIGEST_CHANNEL=DIGESTS) as h:
        yield h


def _channel_audits(db: Database, channel: str) -> list[str]:
    with db.session_scope() as s:
        return list(s.scalars(select(AuditEvent.outcome).where(
            AuditEvent.action == "slack.channel", AuditEvent.target == f"channel:{channel}")))


def _dms(h: Harness) -> list[str]:
    return [str(c.args.get("text")) for c in h.slack.calls("chat.postMessage")
            if str(c.args.get("channel", "")).startswith("D")]


def test_public_channels_are_joined_and_nobody_is_bothered(bot: Harness) -> None:
    checks = preflight.join_channels(bot.services, _client(bot.slack), "UBOT")
    assert [(c.channel, c.ok) for c in checks] == [(ALERTS, True), (DIGESTS, True)]
    assert _dms(bot) == [] and _channel_audits(bot.services.db, DIGESTS) == []


def test_a_private_channel_without_the_bot_is_told_to_the_owner_once_a_day(
        bot: Harness, clock: FixedClock) -> None:
    def join() -> None:
        preflight.join_channels(bot.services, _client(bot.slack), "UBOT")

    bot.slack.fail_always("conversations.join", "method_not_supported_for_channel_type")
    bot.slack.set_response("conversations.info", {"ok": True, "channel": {"is_private": True,
                                                                           "is_member": False}})
    join()
    [dm, other] = _dms(bot)  # both channels are private here: one DM each
    assert {dm.split("<#")[1][:9], other.split("<#")[1][:9]} == {ALERTS, DIGESTS}
    assert "is private and the bot is not a member" in dm and "`/invite <@UBOT>`" in dm
    assert bot.slack.last("conversations.open").args["users"] == ADMIN
    clock.advance(hours=23)
    join()  # a restart the same day: audited again, nobody DMed again
    assert len(_dms(bot)) == 2 and _channel_audits(bot.services.db, DIGESTS) == ["error", "error"]
    clock.advance(hours=2)
    join()
    assert len(_dms(bot)) == 4


def test_with_no_owners_the_other_channel_is_told(db: Database, clock: FixedClock) -> None:
    with running_bot(db, clock, BOT_DIGEST_CHANNEL=DIGESTS, BOT_ADMINS="") as h:
        def answer(call: Any) -> None:  # runs before the fake answers this very call
            if call.method == "conversations.join" and call.args.get("channel") == DIGESTS:
                h.slack.fail_next("conversations.join", "is_archived", status=200)

        h.slack.on_call = answer
        preflight.join_channels(h.services, _client(h.slack), "UBOT")
        posts = [c.args for c in h.slack.calls("chat.postMessage")]
        assert [p["channel"] for p in posts] == [ALERTS]
        assert f"<#{DIGESTS}> (BOT_DIGEST_CHANNEL): it is archived" in posts[0]["text"]
        assert _dms(h) == []


def test_socket_stops_at_a_refused_app_token_before_touching_the_database(
        slack: FakeSlack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any) -> None:
    from handlers.main import main

    monkeypatch.chdir(tmp_path)
    for key, value in {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_APP_TOKEN": "xapp-revoked",
                       "SLACK_API_URL": slack.url, "DATABASE_URL": f"sqlite:///{tmp_path}/bot.db"}.items():
        monkeypatch.setenv(key, value)
    slack.fail_always("apps.connections.open", "invalid_auth")
    with pytest.raises(SystemExit) as done:
        main(["socket"])
    assert done.value.code == 2
    assert capsys.readouterr().err.startswith("socket: Slack does not accept SLACK_APP_TOKEN (invalid_auth)")
    assert not (tmp_path / "bot.db").exists()
