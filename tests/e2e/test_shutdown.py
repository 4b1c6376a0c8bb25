"""A real `bedrock-bot serve` process, stopped by SIGTERM (docker stop, an ECS deploy) or SIGINT:
it exits 0 within 10 s and the scheduler lease is free the moment it has gone, so another
replica can take over at its next heartbeat instead of after the lease's 90 s.

Also at start (handlers/preflight.py): `serve` asks Slack who it is (auth.test) and joins its
channels, and a refused token stops it before it touches the database, with one line.

On SQLite and on PostgreSQL; the process talks to a moto server (AWS) and a FakeSlack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select

from bot.db import Database
from bot.migrate import upgrade
from bot.models import AuditEvent, Lease
from tests.conftest import _pg_reachable, drop_pg_schema, new_pg_schema_url
from tests.fakes.slack_api import FakeSlack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ALERTS, DIGESTS, OWNER = "CALERTS01", "CDIGEST01", "UOWNER001"
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _eventually(what: str, probe: Callable[[], T | None], seconds: float) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def aws_url() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/bot.db"
        return
    if not _pg_reachable():
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required but not reachable")
        pytest.skip("PostgreSQL not reachable")
    url, schema = new_pg_schema_url()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


def _env(db_url: str, slack: FakeSlack, aws_url: str, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1", "DATABASE_URL": db_url, "SLACK_BOT_TOKEN": "xoxb-shutdown",
        "SLACK_SIGNING_SECRET": "shh", "SLACK_API_URL": slack.url, "BOT_ADMINS": OWNER,
        "BOT_ALERT_CHANNEL": ALERTS, "BOT_DIGEST_CHANNEL": DIGESTS, "BOT_PROFILES_BACKEND": "local",
        "AWS_ENDPOINT_URL": aws_url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "BOT_PORT_FILE": str(home / "serve.port"),
    }


def _serve(env: dict[str, str], workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    log = workdir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "handlers.main", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--threads", "4"],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _up(proc: subprocess.Popen[bytes], log: Path, port: int) -> bool:
    if proc.poll() is not None:
        pytest.fail(f"serve exited {proc.returncode}:\n{log.read_text()}")
    return _healthz(port)


def _lease(db: Database) -> str | None:
    with db.session_scope() as s:
        return s.execute(select(Lease.holder).where(Lease.name == "scheduler")).scalar_one_or_none()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_serve_and_frees_the_lease_at_once(
        sig: signal.Signals, db_url: str, slack: FakeSlack, aws_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    db = Database(db_url)
    port = _free_port()
    proc, log = _serve(_env(db_url, slack, aws_url, tmp_path), tmp_path, port)
    try:
        _eventually("serve answers /healthz", lambda: _up(proc, log, port), 40)
        holder = _eventually("serve holds the scheduler lease", lambda: _lease(db), 20)
        assert f":{proc.pid}:" in holder
        # the image's HEALTHCHECK reads the port serve really listens on (here --port)
        assert (tmp_path / "serve.port").read_text().strip() == str(port)

        proc.send_signal(sig)
        code = proc.wait(timeout=10)
        output = log.read_text()
        assert code == 0, output
        assert _lease(db) is None, "the lease must be free as soon as the process is gone"
        assert f"{sig.name}: stopping" in output and "stopped" in output
        assert not (tmp_path / "serve.port").exists()
        assert not _healthz(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        db.dispose()

    # At start it asked Slack who it is and joined both channels.
    assert slack.calls("auth.test")
    assert {c.args["channel"] for c in slack.calls("conversations.join")} == {ALERTS, DIGESTS}


def test_a_refused_token_stops_serve_before_it_starts(
        slack: FakeSlack, aws_url: str, tmp_path: Path) -> None:
    slack.fail_always("auth.test", "invalid_auth")
    db_file = tmp_path / "bot.db"
    proc = subprocess.run([sys.executable, "-m", "handlers.main", "serve", "--port", str(_free_port())],
                          cwd=tmp_path, env=_env(f"sqlite:///{db_file}", slack, aws_url, tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("serve:")]
    assert lines == ["serve: Slack does not accept SLACK_BOT_TOKEN (invalid_auth): copy it again from "
                     "the app's settings (OAuth & Permissions → Bot User OAuth Token)"]
    assert not db_file.exists(), "nothing was migrated"


def test_a_private_channel_the_bot_is_not_in_is_reported_to_the_owner(
        slack: FakeSlack, aws_url: str, tmp_path: Path) -> None:
    """The digest channel is private: join says method_not_supported_for_channel_type and
    conversations.info says the bot is not a member. The owner gets one DM naming the fix,
    an audit row records it, and a second start within the day does not DM again."""
    slack.fail_always("conversations.join", "method_not_supported_for_channel_type")
    slack.set_response("conversations.info", {"ok": True, "channel": {
        "id": DIGESTS, "is_private": True, "is_member": False}})
    url = f"sqlite:///{tmp_path}/bot.db"
    env = _env(url, slack, aws_url, tmp_path) | {"BOT_ALERT_CHANNEL": ""}
    for _ in range(2):
        port = _free_port()
        proc, log = _serve(env, tmp_path, port)
        try:
            _eventually("serve answers /healthz", lambda: _up(proc, log, port), 40)  # noqa: B023
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert "is private and the bot is not a member" in log.read_text()

    opened = [c for c in slack.calls("conversations.open") if c.args.get("users") == OWNER]
    dms = [c for c in slack.calls("chat.postMessage") if str(c.args.get("channel", "")).startswith("D")
           and DIGESTS in str(c.args.get("text"))]
    assert len(opened) == 1 and len(dms) == 1
    assert "/invite <@UBOT>" in dms[0].args["text"] and "BOT_DIGEST_CHANNEL" in dms[0].args["text"]
    db = Database(url)
    try:
        with db.session_scope() as s:
            rows = s.execute(select(AuditEvent.actor, AuditEvent.outcome).where(
                AuditEvent.action == "slack.channel", AuditEvent.target == f"channel:{DIGESTS}")).all()
        assert rows == [("system:startup", "error")] * 2
    finally:
        db.dispose()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_read_only_answers_come_from_worker_processes_that_end_with_serve(
        db_url: str, slack: FakeSlack, aws_url: str, tmp_path: Path) -> None:
    """serve forks BOT_ANSWER_PROCESSES workers at start: a read-only command (`usage`, `help`)
    is answered at its response_url by one of them and sees what serve's own threads just wrote
    (`team`, `limit`: writes stay in serve), and SIGTERM ends the workers with serve."""
    from tests.fakes.signing import signed_headers, slash_command_body

    env = _env(db_url, slack, aws_url, tmp_path) | {"BOT_ANSWER_PROCESSES": "2"}
    port = _free_port()
    proc, log = _serve(env, tmp_path, port)
    try:
        _eventually("serve answers /healthz", lambda: _up(proc, log, port), 40)
        workers = _children(proc.pid)
        assert len(workers) == 2, log.read_text()
        expected = {"usage": "no usage yet", "help": "/bedrock commands: help, usage",
                    "team": "added to `team-eng`", "limit": "5M tokens/day", "limits": "1 limits"}

        def ask(name: str, text: str) -> None:
            body = slash_command_body(text, user_id=OWNER, response_url=slack.response_url(name))
            req = urllib.request.Request(f"http://127.0.0.1:{port}/slack/events", data=body.encode(),
                                         headers=signed_headers("shh", body), method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200

        def answered(name: str) -> str:
            try:
                calls = _eventually(f"the {name} answer", lambda: slack.calls(f"response_url:{name}"), 60)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; serve's log ends:\n{log.read_text()[-3000:]}") from None
            return str(calls[-1].args.get("text"))

        for name, text in (("usage", "usage"), ("help", "help"), ("team", f"team team-eng add <@{OWNER}>"),
                           ("limit", "limit team-eng 5M/day"), ("limits", "limits team-eng")):
            ask(name, text)
            assert expected[name] in answered(name)
        # Stopped workers hold the read, not the write; the read is answered once they go on.
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        ask("held", "limits team-eng")
        ask("write", "limit team-eng 6M/day")
        assert "6M tokens/day" in answered("write")
        assert not slack.calls("response_url:held")
        for w in workers:
            os.kill(w, signal.SIGCONT)
        assert "1 limits" in answered("held")
        # Workers killed with answers owed (a worker may still be exiting when the next command
        # comes): serve's watcher rescues what each owed on its threads, then answers there.
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        ask("owed", "usage")
        for w in workers:
            os.kill(w, signal.SIGKILL)
        _eventually("the workers are gone", lambda: all(_gone(w) for w in workers), 5)
        ask("after", "help")
        assert expected["help"] in answered("after")
        assert "0 in, 0 out" in answered("owed")
        assert "answers owed" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
        _eventually("the workers end with serve", lambda: all(_gone(w) for w in workers), 5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


def test_socket_mode_forks_its_answer_worker_before_the_socket_client_starts_threads(
        slack: FakeSlack, aws_url: str, tmp_path: Path) -> None:
    """The Socket Mode client starts threads as it is built, and a fork after that is refused:
    `socket` forks first, and SIGTERM stops the worker with it."""
    env = _env(f"sqlite:///{tmp_path}/bot.db", slack, aws_url, tmp_path) | {
        "SLACK_APP_TOKEN": "xapp-1-A0001-1-shutdowntest", "BOT_ANSWER_PROCESSES": "1"}
    log = tmp_path / "socket.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "handlers.main", "socket", "--no-scheduler"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        workers = _eventually("socket forks its answer worker",
                              lambda: _children(proc.pid) if proc.poll() is None else None, 40)
        assert len(workers) == 1, log.read_text()
        _eventually("socket is connected", lambda: "Bolt app is running" in log.read_text(), 40)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
        _eventually("the worker ends with socket", lambda: all(_gone(w) for w in workers), 5)
        assert "answer worker answer-0 stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
