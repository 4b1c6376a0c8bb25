"""`bedrock-bot migrate` and `audit verify` as a user runs them."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent
from bot.services import audit
from handlers.main import main


def test_audit_verify_catches_an_edited_row(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            clock: FixedClock) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(str(tmp_path))
    assert main(["migrate"]) == 0
    db = Database(url)
    for i in range(3):
        with db.session_scope() as s:
            audit.record(s, clock, "cli:test", "x", f"t{i}")
    assert main(["audit", "verify"]) == 0
    assert "intact: 3 rows" in capsys.readouterr().out
    with db.session_scope() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(target="forged"))
    assert main(["audit", "verify"]) == 1
    assert "BROKEN at row 2" in capsys.readouterr().err


def test_bad_configuration_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: object,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("BOT_TIMEZONE", "Mars/Olympus")
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("configuration error: BOT_TIMEZONE") and "\n" not in err


@pytest.mark.parametrize(("var", "value", "says"), [
    ("BOT_ALARM_TOPIC_ARN", "alarms", "not an SNS topic ARN"),
    ("BOT_METADATA_KEYS", "userId,tenant id", "is not a requestMetadata key"),
    ("BOT_PRICING_FILE", "/nonexistent/prices.json", "cannot read"),
])
def test_settings_once_checked_only_at_sync_are_checked_at_start(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str],
        var: str, value: str, says: str) -> None:
    """docs/configuration.md used to say these were not validated at start; they are, for every
    subcommand, even one that touches nothing."""
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv(var, value)
    assert main(["manifest", "-q"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"configuration error: {var}") and says in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("with_token", [True, False], ids=["token", "no-token"])
def test_run_job_flush_outbox_sends_what_is_queued(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object, capsys: pytest.CaptureFixture[str],
        with_token: bool) -> None:
    """`run-job` posts to Slack when it has a token: `run-job flush_outbox` sends the queued
    posts (it used to be documented as marking them sent without sending); without a token it
    leaves them queued."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import select

    from bot.models import OutboxMessage
    from tests.fakes.slack_api import FakeSlack

    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", url)
    assert main(["migrate"]) == 0
    db = Database(url)
    past = datetime.now(UTC) - timedelta(minutes=5)
    with db.session_scope() as s:
        s.add(OutboxMessage(kind="post", target="CALERTS01", ts=None, text="kept while Slack was down",
                            blocks=None, attempts=1, next_attempt_at=past, created_at=past))
    with FakeSlack() as slack:
        monkeypatch.setenv("SLACK_API_URL", slack.url)
        if with_token:
            monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-test")
        else:
            monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
        assert main(["run-job", "flush_outbox"]) == 0
        sent = [c.args["text"] for c in slack.calls("chat.postMessage")]
    with db.session_scope() as s:
        sent_at = s.scalars(select(OutboxMessage.sent_at)).one()
    db.dispose()
    if with_token:
        assert sent == ["kept while Slack was down"] and sent_at is not None
        assert "sent=1" in capsys.readouterr().out
    else:
        assert sent == [] and sent_at is None


def test_check_access_lists_every_subject_and_fails_on_an_unblockable_one(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        clock: FixedClock) -> None:
    from bot.services import directory
    from bot.services.directory import Actor, SubjectRef

    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(str(tmp_path))
    assert main(["migrate"]) == 0
    db = Database(url)
    admin = Actor("cli:test")
    with db.session_scope() as s:
        directory.link_principal(s, clock, admin, SubjectRef(name="alice"),
                                 "arn:aws:iam::123456789012:user/alice")
        directory.link_principal(s, clock, admin, SubjectRef(name="bob"),
                                 "arn:aws:sts::123456789012:assumed-role/AWSReservedSSO_Dev_0a1b/bob")
    assert main(["check-access"]) == 1
    out = capsys.readouterr().out
    assert "*alice*: would be blocked" in out and "inline-deny" in out
    assert "*bob*: would NOT be fully blocked" in out and "missing: no method configured" in out
    monkeypatch.setenv("BOT_SSO_METHOD", "tags")
    assert main(["check-access"]) == 0
    assert "aip-tags" in capsys.readouterr().out


def test_iam_policy_permission_set(monkeypatch: pytest.MonkeyPatch, tmp_path: object,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    import json

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.chdir(str(tmp_path))
    assert main(["iam-policy", "--permission-set"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["Sid"] for s in doc["Statement"]] == ["InvokeOwnAllowedProfiles",
                                                   "FoundationModelsOnlyThroughProfiles"]
