"""Requests nobody authenticated (issue 15, items 3, 5, 6 and the headers of 7): a captured
signed Slack request is accepted once; unsigned bodies never reach the log and each refusal
is one escaped line; refusals are counted per reason and minute, not audited one by one;
odd or missing Slack headers are a 401, never a 500."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from moto import mock_aws
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from bot import logline
from bot.clock import FixedClock
from bot.db import Database
from bot.models import SlackSignature
from bot.runtime import Services
from bot.services import replay
from handlers.http import MAX_BODY, WsgiApp
from handlers.refusals import Refusals
from handlers.slack_gate import WINDOW, SlackGate
from handlers.sns import SnsEndpoint
from tests.fakes.signing import signed_headers, slack_signature, slash_command_body
from tests.fakes.sns_signing import make_notification, make_signer, write_cert
from tests.hardening.conftest import World, assert_chain_intact, audit_events, last_audit_id, wsgi_call
from tests.harness import ADMIN, SECRET, Harness, make_settings, running_bot

SLACK = "/slack/events"
FORM = "application/x-www-form-urlencoded"
TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"


def post(app: WsgiApp, body: str | bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    raw = body.encode() if isinstance(body, str) else body
    status, _, out = wsgi_call(app, "POST", SLACK, raw, {"Content-Type": FORM, **headers})
    return status, out


def forged(body: str | bytes) -> dict[str, str]:
    return signed_headers("not-the-secret", body)


def signature_rows(db: Database) -> int:
    with db.session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(SlackSignature)) or 0)


def refusal_rows(db: Database, action: str, after: int = 0) -> list[dict[str, Any]]:
    return [json.loads(e.details) for e in audit_events(db, after) if e.action == action]


def metric(app: WsgiApp, endpoint: str) -> dict[str, float]:
    text = wsgi_call(app, "GET", "/metrics")[2].decode()
    pattern = rf'bedrock_bot_refused_requests_total{{endpoint="{endpoint}",reason="(\w+)"}} ([0-9.e+]+)'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text)}


# ---- item 3: the replay cache ---------------------------------------------------------------------

def test_a_captured_restore_sent_again_is_refused(world: World) -> None:
    """The issue's attack: a signed `restore alice`, re-sent after an admin revoked her again."""
    w = world
    w.bot.command("revoke alice")
    assert w.policies() != []
    app = WsgiApp(w.bot.services, w.bot.app)
    body = slash_command_body("restore alice", user_id=ADMIN, user_name="admin",
                              response_url=w.bot.slack.response_url("first"))
    captured = signed_headers(SECRET, body)
    assert post(app, body, captured)[0] == 200
    assert "Restored" in json.dumps(w.bot.slack.wait_for("response_url:first")[0].args)
    assert w.policies() == []

    w.bot.command("revoke alice")  # an admin revokes her again
    mark = last_audit_id(w.db)
    status, out = post(app, body, captured)  # the captured request, within its 5 minutes
    assert (status, out) == (401, b"invalid request: this signed request was received before")
    w.bot.settle()
    assert w.policies() != [] and audit_events(w.db, mark) == []  # nothing ran
    assert_chain_intact(w.db)


@pytest.fixture
def bot(db: Database, clock: FixedClock) -> Iterator[Harness]:
    with running_bot(db, clock) as harness:
        yield harness


def test_replicas_share_the_cache_and_a_race_has_one_winner(bot: Harness) -> None:
    """Two apps stand for two replicas: they share only the database."""
    a, b = WsgiApp(bot.services, bot.app), WsgiApp(bot.services, bot.app)
    body = slash_command_body("help", user_id=ADMIN, response_url=bot.slack.response_url("h1"))
    headers = signed_headers(SECRET, body)
    assert post(a, body, headers)[0] == 200
    assert post(b, body, headers)[0] == 401

    body = slash_command_body("help", user_id=ADMIN, response_url=bot.slack.response_url("h2"))
    headers = signed_headers(SECRET, body)
    start, statuses = threading.Barrier(8), []

    def send(app: WsgiApp) -> None:
        start.wait()
        statuses.append(post(app, body, headers)[0])

    threads = [threading.Thread(target=send, args=(app,)) for app in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(statuses) == [200] + [401] * 7
    bot.settle()


def test_a_slack_retry_is_signed_anew_and_accepted(bot: Harness) -> None:
    """Slack re-signs a retry with its own timestamp: a new signature, not a replay."""
    app = WsgiApp(bot.services, bot.app)
    body = json.dumps({"type": "url_verification", "challenge": "c1", "token": "t"})
    first = signed_headers(SECRET, body)
    retry = {**signed_headers(SECRET, body, int(first["X-Slack-Request-Timestamp"]) + 1),
             "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    assert first["X-Slack-Signature"] != retry["X-Slack-Signature"]
    assert post(app, body, {**first, "Content-Type": "application/json"})[0] == 200
    assert post(app, body, {**retry, "Content-Type": "application/json"})[0] == 200
    assert signature_rows(bot.services.db) == 2


def _services(db: Database, clock: FixedClock) -> Services:
    return Services(make_settings(db.url, "http://127.0.0.1:9"), db, clock)


def test_only_verified_signatures_are_stored_and_expired_ones_are_purged(db: Database,
                                                                         clock: FixedClock) -> None:
    now = 1_780_000_000
    gate = SlackGate(_services(db, clock), now=lambda: float(now))
    with db.session_scope() as s:  # left by earlier requests: long expired, and only just
        replay.claim(s, "v0=" + "a" * 64, datetime.fromtimestamp(now - 600, UTC))
        replay.claim(s, "v0=" + "b" * 64, datetime.fromtimestamp(now - 30, UTC))
    for body in ("a=1", "payload=%7B", "x" * 1000):  # forged: refused, nothing written
        headers = signed_headers("not-the-secret", body, now)
        ts, sig = headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]
        refused = gate.check(body.encode(), ts, sig)
        assert refused is not None and refused.reason == "bad_signature"
    assert signature_rows(db) == 2

    sig = slack_signature(SECRET, now, "a=1")
    assert gate.check(b"a=1", str(now), sig) is None  # the first claim also purges
    with db.session_scope() as s:
        kept = {row.digest: row.expires_at for row in s.scalars(select(SlackSignature))}
    # the long-expired row is gone; one expired less than a minute ago stays (clock skew)
    assert set(kept) == {replay.digest("v0=" + "b" * 64), replay.digest(sig)}
    assert kept[replay.digest(sig)] == datetime.fromtimestamp(now + WINDOW, UTC)
    refused = gate.check(b"a=1", str(now), sig)
    assert refused is not None and refused.reason == "replay"


def test_with_the_database_down_the_replay_check_lets_signed_requests_through(
        clock: FixedClock, caplog: pytest.LogCaptureFixture) -> None:
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    gate = SlackGate(_services(down, clock))
    headers = signed_headers(SECRET, "a=1")
    with caplog.at_level(logging.WARNING):
        assert gate.check(b"a=1", headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"]) is None
    assert "replay check skipped, the database is not answering: OperationalError" in caplog.text
    down.dispose()


# ---- item 7 (headers): odd or missing headers are a 401 -------------------------------------------

BAD_PAYLOAD = "payload=%7B%22type%22%3A"  # `payload={"type":` — not JSON


def _header_cases() -> dict[str, tuple[bytes, dict[str, str]]]:
    good = signed_headers(SECRET, BAD_PAYLOAD)
    ts, sig = good["X-Slack-Request-Timestamp"], good["X-Slack-Signature"]
    body = BAD_PAYLOAD.encode()
    return {
        "no headers at all": (body, {}),
        "no timestamp": (body, {"X-Slack-Signature": sig}),
        "no signature": (body, {"X-Slack-Request-Timestamp": ts}),
        "empty timestamp": (body, {"X-Slack-Request-Timestamp": "", "X-Slack-Signature": sig}),
        "timestamp not a number": (body, {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": sig}),
        "timestamp in superscripts": (body, {"X-Slack-Request-Timestamp": "¹²³", "X-Slack-Signature": sig}),
        "timestamp in Arabic-Indic digits": (body, {"X-Slack-Request-Timestamp": "١٧٠٠٠٠٠٠٠٠",
                                                    "X-Slack-Signature": sig}),
        "timestamp with underscores": (body, {"X-Slack-Request-Timestamp": f"{ts[:4]}_{ts[4:]}",
                                              "X-Slack-Signature": sig}),
        "timestamp negative": (body, {"X-Slack-Request-Timestamp": "-1", "X-Slack-Signature": sig}),
        "timestamp huge": (body, {"X-Slack-Request-Timestamp": "9" * 40, "X-Slack-Signature": sig}),
        "signature not ASCII": (body, {"X-Slack-Request-Timestamp": ts,
                                       "X-Slack-Signature": "v0=é" + "0" * 63}),
        "signature not hex": (body, {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v1=zz"}),
        "body not UTF-8": (b"payload=\xff\xfe", {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig}),
    }


@pytest.mark.parametrize("case", sorted(_header_cases()))
def test_odd_or_missing_slack_headers_are_401_not_500(bot: Harness, case: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    body, headers = _header_cases()[case]
    app = WsgiApp(bot.services, bot.app)
    with caplog.at_level(logging.INFO):
        status, out = post(app, body, headers)
    assert status == 401, (case, out)
    assert out.startswith(b"invalid request: ") and b"\n" not in out
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert signature_rows(bot.services.db) == 0


# ---- item 5: unauthenticated bodies stay out of the log -------------------------------------------

FAKE_LINE = "2026-11-25 10:30:00,000 INFO bot.flows.access: alice restored by UADMIN0001"


@pytest.fixture
def one_line_log() -> Iterator[io.StringIO]:
    """The root handler `bedrock-bot` installs (bot/logline.py), writing to a buffer."""
    out = io.StringIO()
    handler, root = logline.handler(out), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def logged_bot(one_line_log: io.StringIO, db: Database, clock: FixedClock) -> Iterator[Harness]:
    """A bot built after logging is at INFO, as `serve` builds it: Bolt copies the root level
    into its own loggers when the app is made."""
    with running_bot(db, clock) as harness:
        yield harness


def test_an_unsigned_body_cannot_forge_a_log_line(logged_bot: Harness, one_line_log: io.StringIO,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    app = WsgiApp(logged_bot.services, logged_bot.app)
    body = f"command=%2Fbedrock&text=restore\n{FAKE_LINE}\n"
    start = len(one_line_log.getvalue())
    with caplog.at_level(logging.INFO):
        assert post(app, body, forged(body))[0] == 401
    lines = one_line_log.getvalue()[start:].splitlines()
    assert len(lines) == 1, lines
    assert "slack request refused: bad_signature" in lines[0]
    assert f"{len(body)} bytes from 203.0.113.7" in lines[0]
    for record in caplog.records:  # nothing logged the body, with or without the formatter
        assert "alice restored" not in record.getMessage() and "\n" not in record.getMessage()


def test_twenty_unsigned_one_mib_bodies_add_bounded_log_output(
        logged_bot: Harness, one_line_log: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    app = WsgiApp(logged_bot.services, logged_bot.app)
    start = len(one_line_log.getvalue().encode())
    with caplog.at_level(logging.DEBUG):
        for i in range(20):
            body = f"text={i}&" + "A" * (MAX_BODY - 10)
            assert post(app, body, forged(body))[0] == 401
    written = len(one_line_log.getvalue().encode()) - start
    logged = sum(len(r.getMessage()) for r in caplog.records)
    assert written < 20 * 400 and logged < 20 * 300, (written, logged)


def test_the_formatter_keeps_every_record_on_one_bounded_line(one_line_log: io.StringIO) -> None:
    log = logging.getLogger("tests.logline")
    log.warning("a\nfake line\r\x1b[31mred\u2028\u202eevil %s", "x" * (5 * MAX_BODY))
    try:
        raise ValueError("bad input:\n" + FAKE_LINE)
    except ValueError:
        log.exception("failed\n%s", FAKE_LINE)
    lines = one_line_log.getvalue().splitlines()
    assert len(lines) == 2
    assert "a\\nfake line\\r\\x1b[31mred\\u2028\\u202eevil" in lines[0]
    assert len(lines[0]) < logline.MAX_MESSAGE + 200 and "chars, cut]" in lines[0]
    assert "Traceback" in lines[1] and "ValueError: bad input:\\n2026" in lines[1]
    assert len(lines[1]) < logline.MAX_MESSAGE + logline.MAX_TRACE + 200


def test_the_cli_logs_through_the_one_line_formatter(tmp_path: Path) -> None:
    script = (
        "import logging\n"
        "from bot.cli import build_parser, run\n"
        "parser, _ = build_parser()\n"
        "run(parser, ['iam-policy'])\n"
        "logging.getLogger('t').warning('one\\ntwo')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2],
                          env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                               "AWS_REGION": "us-east-1"})
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1 and "WARNING t: one\\ntwo" in done.stderr


# ---- item 6: refusals counted per reason and minute ------------------------------------------------

@pytest.fixture
def sns_bot(db: Database, clock: FixedClock, tmp_path: Path) -> Iterator[Harness]:
    write_cert(tmp_path)
    extra = {"BOT_SNS_TOPIC_ARNS": TOPIC, "BOT_SNS_CERT_DIR": str(tmp_path)}
    with mock_aws(), running_bot(db, clock, **extra) as harness:
        yield harness


def _junk(clock: FixedClock) -> dict[str, bytes]:
    """One body per reason a stranger's POST to /sns is refused for."""
    foreign_host = make_notification("x", TOPIC, timestamp=clock())
    foreign_host["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
    return {
        "malformed": b"{not json",
        "topic_not_allowed": json.dumps(make_notification("x", TOPIC + "-evil", timestamp=clock())).encode(),
        "bad_certificate": json.dumps(foreign_host).encode(),
        "bad_signature": json.dumps(make_notification("x", TOPIC, timestamp=clock(),
                                                      key=make_signer().key)).encode(),
        "stale": json.dumps(make_notification("x", TOPIC, timestamp=clock() - timedelta(hours=2))).encode(),
    }


def test_300_junk_posts_to_sns_make_a_handful_of_audit_rows(sns_bot: Harness, clock: FixedClock) -> None:
    db = sns_bot.services.db
    endpoint = SnsEndpoint(sns_bot.services, sns_bot.services.sns_verifier())
    app = WsgiApp(sns_bot.services, sns_bot.app, sns=endpoint)
    mark, junk = last_audit_id(db), _junk(clock)
    for i in range(300):
        reason = sorted(junk)[i % len(junk)]
        status, _, out = wsgi_call(app, "POST", "/sns", junk[reason])
        assert status == 403 and b"\n" not in out
    assert refusal_rows(db, "sns.refuse", mark) == []  # the minute is not over yet

    clock.advance(seconds=60)
    assert wsgi_call(app, "GET", "/healthz")[0] == 200  # the next request writes the tallies
    rows = refusal_rows(db, "sns.refuse", mark)
    assert sorted(r["reason"] for r in rows) == sorted(junk)  # one row per reason
    assert {r["reason"]: r["count"] for r in rows} == dict.fromkeys(junk, 60)
    assert all(r["sources"] == ["203.0.113.7"] and r["window"] == "2026-11-25T10:30:00+00:00" for r in rows)
    assert metric(app, "sns") == dict.fromkeys(junk, 60.0)
    assert [e.outcome for e in audit_events(db, mark)] == ["denied"] * 5
    assert_chain_intact(db)


def test_forged_slack_requests_are_counted_not_audited_one_by_one(bot: Harness, clock: FixedClock) -> None:
    db = bot.services.db
    app = WsgiApp(bot.services, bot.app)
    mark = last_audit_id(db)
    for i in range(40):
        body = f"command=%2Fbedrock&text=revoke+alice+{i}"
        assert post(app, body, forged(body) if i % 2 else {})[0] == 401
    clock.advance(minutes=1)
    app.close()  # the server stops: what is still counted is written
    rows = refusal_rows(db, "slack.refuse", mark)
    assert {r["reason"]: r["count"] for r in rows} == {"bad_signature": 20, "missing_header": 20}
    assert metric(app, "slack") == {"bad_signature": 20.0, "missing_header": 20.0}
    assert app.refusals.flush(force=True) == 0  # written once


def test_tallies_survive_a_database_outage(db: Database, clock: FixedClock) -> None:
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    services = SimpleNamespace(db=down, clock=clock)
    refusals = Refusals(cast(Services, services), CollectorRegistry())
    for _ in range(3):
        refusals.refuse("sns", "malformed", "body is not valid JSON", 9, "198.51.100.1")
    clock.advance(minutes=1)
    refusals.refuse("sns", "malformed", "body is not valid JSON", 9, "198.51.100.2")
    assert refusals.pending() == 4  # the first minute could not be written: kept
    services.db = db
    clock.advance(seconds=30)
    assert refusals.flush() == 0  # no new try until the next minute, however many requests come
    clock.advance(seconds=30)
    assert refusals.flush() == 2
    rows = refusal_rows(db, "sns.refuse")
    assert [(r["count"], r["sources"]) for r in rows] == [(3, ["198.51.100.1"]), (1, ["198.51.100.2"])]
    down.dispose()


def test_an_unknown_reason_is_a_bug_not_a_new_series(bot: Harness) -> None:
    refusals = Refusals(bot.services, CollectorRegistry())
    with pytest.raises(ValueError):
        refusals.refuse("slack", "anything\nelse", "", 0, "")
    assert refusals.pending() == 0


def test_refused_sns_from_the_queue_poller_are_still_one_row_each(sns_bot: Harness) -> None:
    """Messages from the SQS queue passed AWS auth to get there: each refusal is audited."""
    endpoint = SnsEndpoint(sns_bot.services, sns_bot.services.sns_verifier(max_age=None))
    mark = last_audit_id(sns_bot.services.db)
    for _ in range(3):
        assert endpoint(b"{not json")[0] == 403
    assert len(refusal_rows(sns_bot.services.db, "sns.refuse", mark)) == 3


def test_a_source_address_with_a_newline_is_stored_and_logged_escaped(
        bot: Harness, clock: FixedClock, one_line_log: io.StringIO) -> None:
    app = WsgiApp(bot.services, bot.app)
    status, _, _ = wsgi_call(app, "POST", SLACK, b"a=1", {"Content-Type": FORM},
                             remote_addr="198.51.100.9\n" + FAKE_LINE)
    assert status == 401
    assert len(one_line_log.getvalue().splitlines()) == 1
    clock.advance(minutes=1)
    app.close()
    (row,) = refusal_rows(bot.services.db, "slack.refuse")
    (source,) = row["sources"]
    assert "\n" not in source and source.startswith("198.51.100.9\\n2026")
