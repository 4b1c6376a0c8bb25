"""Secrets never appear in logs, replies, Slack messages, the audit log or command output:
a full run at DEBUG (provision, usage, limit, breach, revoke, SNS, approval, digest, reconcile,
AWS and Slack and database failures) with every log record and stdout/stderr captured."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.cli import main as cli_main
from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent, Profile, RestoreRequest
from bot.runtime import Services
from handlers.app import create_app, slack_client
from handlers.http import WsgiApp
from handlers.sns import SnsEndpoint
from jobs import daily_digest, reconcile, usage_sync
from tests.fakes.signing import slash_command_body
from tests.fakes.slack_api import FakeSlack
from tests.fakes.sns_signing import make_notification, write_cert
from tests.hardening.conftest import ALICE_ARN, MODEL, signed_post, wsgi_call
from tests.hardening.payloads import ADMIN_USER, approve, button
from tests.harness import ADMIN, ALERTS, ALICE, SECRET, make_settings, reply_text, running_bot

BOT_TOKEN = "xoxb-0000HARDENING-bot-token-4711"
APP_TOKEN = "xapp-1-HARDENING-app-token-0815"
AWS_SECRET = "HARDENINGawsSecretKey/0123456789abcdefXYZ"
AWS_SESSION = "HARDENINGawsSessionToken0123456789"
DB_PASSWORD = "pg-HARDENING-pw-9f3c"
TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"
ROOT = Path(__file__).resolve().parents[2]
SECRETS = (BOT_TOKEN, APP_TOKEN, SECRET, AWS_SECRET, AWS_SESSION, DB_PASSWORD)


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_SESSION)
    monkeypatch.setenv("AWS_SECURITY_TOKEN", AWS_SESSION)
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)


@pytest.fixture
def db_with_password(db: Database) -> Iterator[Database]:
    """The test database, reached with a password in the URL (PostgreSQL trust auth ignores it)."""
    if db.dialect != "postgresql":
        yield db
        return
    url = make_url(db.url).set(password=DB_PASSWORD).render_as_string(hide_password=False)
    with_pw = Database(url)
    yield with_pw
    with_pw.dispose()


def test_a_full_run_leaks_no_secret(db_with_password: Database, clock: FixedClock, tmp_path: Path,
                                    secret_env: None, caplog: pytest.LogCaptureFixture,
                                    capfd: pytest.CaptureFixture[str],
                                    request: pytest.FixtureRequest) -> None:
    caplog.set_level(logging.DEBUG)
    # botocore's own wire log (DEBUG) prints request headers: test_verbose_mode_* covers it.
    # (Not caplog.set_level: that would raise the capturing handler's level to INFO too.)
    botocore_log = logging.getLogger("botocore")
    request.addfinalizer(partial(botocore_log.setLevel, botocore_log.level))
    botocore_log.setLevel(logging.INFO)
    db = db_with_password
    write_cert(tmp_path)
    replies: list[str] = []
    with mock_aws(), running_bot(db, clock, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN,
                                 BOT_DIGEST_CHANNEL="CDIGEST01", BOT_SNS_TOPIC_ARNS=TOPIC,
                                 BOT_SNS_CERT_DIR=str(tmp_path)) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        bot.services.overrides.update(iam=iam, cloudwatch=cw)
        iam.create_user(UserName="alice")
        app = WsgiApp(bot.services, bot.app, sns=SnsEndpoint(bot.services, bot.services.sns_verifier()))

        def say(text: str, user: str = ADMIN) -> None:
            replies.append(reply_text(bot.command(text, user=user)))

        say(f"provision <@{ALICE}|alice> {MODEL}")
        say(f"link <@{ALICE}|alice> {ALICE_ARN}")
        say("limit alice 1M/day alarm=off")
        say("usage alice")
        say("limit alice 1M/day", user=ALICE)  # refused: not an admin
        say("limit alice 5 apples")  # unparseable
        with db.session_scope() as s:
            pid = s.scalars(select(Profile.profile_id)).one()
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": "InputTokenCount", "Dimensions": [{"Name": "ModelId", "Value": pid}],
             "Timestamp": clock() - timedelta(minutes=10), "Value": 2_000_000, "Unit": "Count"}])
        bot.slack.fail_next("chat.postMessage", status=429, retry_after=1)  # the breach alert waits
        assert usage_sync.run(bot.services).ok  # breach → revoked
        say("revoke alice and stay out")
        say("usage alice")
        alarm = json.dumps({"AlarmName": "bedrock-bot-limit-1", "NewStateValue": "ALARM",
                            "NewStateReason": "Threshold Crossed", "StateChangeTime": clock().isoformat(),
                            "Trigger": {"MetricName": "InputTokenCount", "Threshold": 1}})
        env = json.dumps(make_notification(alarm, TOPIC, timestamp=clock())).encode()
        assert wsgi_call(app, "POST", "/sns", env)[0] == 200
        assert wsgi_call(app, "POST", "/sns", b'{"Type": "Notification"}')[0] == 403
        say("restore alice need it for the demo", user=ALICE)
        with db.session_scope() as s:
            req_id = s.scalars(select(RestoreRequest.id)).one()
        body = slash_command_body("usage", user_id=ADMIN, response_url=bot.slack.response_url("w"))
        assert signed_post(app, body)[0] == 200
        assert signed_post(app, body, secret="forged")[0] == 401
        click = button(ADMIN_USER, approve(str(req_id)), bot.slack.response_url("click"))
        assert bot.action(click).status == 200
        bot.slack.wait_for("chat.update")
        daily_digest.run(bot.services)
        iam.put_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-ghost",
                            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                                {"Effect": "Deny", "Action": "bedrock:InvokeModel", "Resource": "*"}]}))
        reconcile.run(bot.services)
        bot.slack.down()
        say("revoke alice again")  # Slack down: alerts go to the outbox
        bot.slack.up()
        assert wsgi_call(app, "GET", "/healthz")[0] == 200
        metrics = wsgi_call(app, "GET", "/metrics")[2].decode()
        sent = json.dumps([c.args for c in bot.slack.calls()], default=str)
        with db.session_scope() as s:
            audit_text = json.dumps([(e.actor, e.action, e.target, e.details)
                                     for e in s.scalars(select(AuditEvent))])

    _unreachable_database_run(clock, replies)

    out, err = capfd.readouterr()
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    formatted = caplog.text
    assert len(caplog.records) > 100  # DEBUG from our code, Bolt, slack_sdk, botocore, SQLAlchemy
    for where, text in (("log records", logs), ("formatted logs", formatted), ("stdout", out),
                        ("stderr", err), ("replies", "\n".join(replies)), ("Slack messages", sent),
                        ("audit log", audit_text), ("/metrics", metrics)):
        assert _leaks(text) == [], f"a secret appears in the {where}"


def _unreachable_database_run(clock: FixedClock, replies: list[str]) -> None:
    """A database that does not answer: its errors are logged and answered, without the URL's password."""
    url = f"postgresql+psycopg://bot:{DB_PASSWORD}@127.0.0.1:1/bot"
    with FakeSlack() as slack:
        settings = make_settings(url, slack.url, SLACK_BOT_TOKEN=BOT_TOKEN)
        services = Services(settings, Database(url), clock)
        app = WsgiApp(services, create_app(settings, services, slack_client(settings)))
        status, _, health = wsgi_call(app, "GET", "/healthz")
        assert status == 503
        replies.append(health.decode())
        body = slash_command_body("usage", user_id=ADMIN, response_url=slack.response_url("down"))
        assert signed_post(app, body)[0] == 200
        replies.append(reply_text(slack.wait_for("response_url:down", timeout=10)[0].args))
        services.db.dispose()


def test_verbose_mode_keeps_aws_credentials_out_of_the_log(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
               "DATABASE_URL": f"sqlite:///{tmp_path}/bot.db", "BOT_PROFILES_BACKEND": "local",
               "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "AKIAHARDENING", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
               "AWS_SESSION_TOKEN": AWS_SESSION, "AWS_CONFIG_FILE": "/dev/null",
               "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        done = subprocess.run([sys.executable, "-m", "handlers.main", "-v", "run-job", "usage_sync"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "botocore" in done.stderr  # the verbose log did cover the AWS calls
    assert _leaks(done.stdout + done.stderr) == []


@pytest.mark.parametrize("form", ["userinfo", "query"])
def test_migrate_output_hides_the_database_password(pg_url: str, form: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str],
                                                    request: pytest.FixtureRequest) -> None:
    url = make_url(pg_url)
    if form == "userinfo":
        url = url.set(password=DB_PASSWORD)
    else:
        url = url.update_query_dict({"password": DB_PASSWORD})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    assert cli_main(["migrate"]) == 0
    out, err = capfd.readouterr()
    assert "database at head" in out
    assert _leaks(out + err) == []


def test_a_bad_database_url_is_reported_without_its_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"mysql://bot:{DB_PASSWORD}@db/bot")
    assert cli_main(["migrate"]) == 2
    out, err = capfd.readouterr()
    assert "DATABASE_URL" in err and _leaks(out + err) == []


def test_settings_repr_hides_every_secret() -> None:
    settings: Any = make_settings(f"postgresql+psycopg://bot:{DB_PASSWORD}@db/bot", "http://127.0.0.1:9/api/",
                                  SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN)
    assert _leaks(repr(settings)) == []


def test_slack_tokens_are_hidden_in_settings_repr() -> None:
    settings = make_settings("sqlite:///x.db", "http://127.0.0.1:9/api/", SLACK_BOT_TOKEN=BOT_TOKEN,
                             SLACK_APP_TOKEN=APP_TOKEN)
    assert _leaks(repr(settings.slack)) == []
    assert ALERTS not in (BOT_TOKEN, APP_TOKEN)  # the names above are distinct from real ids
