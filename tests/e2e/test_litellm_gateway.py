"""A real LiteLLM proxy (from PyPI) with `bot_litellm.hook`, in front of a mocked model, asking a
real `bedrock-bot serve` before every call (issue 18):

- under the limit calls pass and are counted by the bot;
- past it the next call gets a 429 with the bot's reason;
- the enforce job revokes, the user asks for a restore and an admin clicks Approve in Slack
  (signed requests to the bot), and the next call passes again;
- concurrent calls cannot overshoot a limit;
- an unknown caller is refused, and with the bot unreachable the hook fails closed (default).

Two subprocesses (the bot, the proxy) plus `bedrock-bot run-job enforce`; Slack is the local
stand-in. Runs on SQLite and PostgreSQL; the proxy's model answers with `mock_response`, so
nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.db import Database
from bot.models import GatewayCounter, Revocation, Subject
from tests.fakes.signing import interactive_body, signed_headers, slash_command_body
from tests.fakes.slack_api import FakeSlack
from tests.harness import ADMIN, ALERTS, ALICE, SECRET, reply_text

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-gateway-token-0123456789"
MASTER = "sk-e2e-master-key"
COMPLETION_TOKENS = 200  # what the mocked model "writes" per call
BOB = "UBOB0001"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(url: str, doc: Any = None, headers: dict[str, str] | None = None, raw: str | None = None,
          timeout: float = 30) -> tuple[int, str]:
    data = raw.encode() if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json",
                                                          **(headers or {})},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode()
    except OSError as exc:
        return 0, type(exc).__name__


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _start(name: str, cmd: list[str], env: dict[str, str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(name, proc, log)


def _wait_ready(p: Proc, url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if p.proc.poll() is not None:
            pytest.fail(f"{p.name} exited:\n{p.tail()}")
        if _http(url, timeout=2)[0] == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"{p.name} not ready in {seconds}s:\n{p.tail()}")


@dataclass
class World:
    db: Database
    slack: FakeSlack
    bot_url: str
    proxy_url: str
    bot_env: dict[str, str]
    workdir: Path
    bot: Proc
    seq: int = 0

    def command(self, text: str, user: str = ADMIN) -> str:
        self.seq += 1
        name = f"cmd{self.seq}"
        body = slash_command_body(text, user_id=user, user_name=user.lower(),
                                  response_url=self.slack.response_url(name))
        status, _ = _http(f"{self.bot_url}/slack/events", raw=body, headers=signed_headers(SECRET, body))
        assert status == 200
        return reply_text(self.slack.wait_for(f"response_url:{name}", timeout=15)[0].args)

    def interact(self, payload: dict[str, Any]) -> int:
        body = interactive_body(payload)
        headers = {**signed_headers(SECRET, body), "content-type": "application/x-www-form-urlencoded"}
        return _http(f"{self.bot_url}/slack/events", raw=body, headers=headers)[0]

    def chat(self, user: str, max_tokens: int | None = None) -> tuple[int, str]:
        doc: dict[str, Any] = {"model": "claude-haiku", "user": user,
                               "messages": [{"role": "user", "content": "hello there"}]}
        if max_tokens is not None:
            doc["max_tokens"] = max_tokens
        return _http(f"{self.proxy_url}/v1/chat/completions", doc,
                     headers={"authorization": f"Bearer {MASTER}"}, timeout=60)

    def used(self, name: str) -> int:
        """What the bot counted for `name` (its gateway counters: settled input + output)."""
        with self.db.session_scope() as s:
            sid = s.scalar(select(Subject.id).where(Subject.name == name))
            c = s.get(GatewayCounter, sid)
            return (c.settled_input + c.settled_output) if c else 0

    def settled(self, name: str, at_least: int, seconds: float = 15) -> int:
        """The success hook reports after the response is sent: wait for it."""
        deadline = time.monotonic() + seconds
        while (n := self.used(name)) < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        return n


@pytest.fixture
def world(db: Database, tmp_path: Path) -> Iterator[World]:
    if shutil.which("litellm", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("litellm[proxy] is not installed (pip install -e '.[dev]')")
    bot_port, proxy_port = _free_port(), _free_port()
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1"}
    with FakeSlack() as slack:
        bot_env = {**base, "DATABASE_URL": db.url, "SLACK_BOT_TOKEN": "xoxb-e2e",
                   "SLACK_SIGNING_SECRET": SECRET, "SLACK_API_URL": slack.url, "BOT_ADMINS": ADMIN,
                   "BOT_ALERT_CHANNEL": ALERTS, "BOT_TIMEZONE": "UTC", "BOT_PROFILES_BACKEND": "local",
                   "BOT_DRY_RUN": "1", "BOT_GATEWAY_TOKENS": TOKEN,
                   "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_CONFIG_FILE": "/dev/null",
                   "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        bot = _start("bot", [sys.executable, "-m", "handlers.main", "serve", "--host", "127.0.0.1",
                             "--port", str(bot_port), "--no-scheduler"], bot_env, tmp_path)
        config = tmp_path / "litellm.yaml"
        config.write_text(json.dumps({  # JSON is YAML
            "model_list": [{"model_name": "claude-haiku", "litellm_params": {
                "model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
                "mock_response": "a mocked answer", "aws_region_name": "us-east-1"}}],
            "litellm_settings": {"callbacks": ["bot_litellm.hook.handler"]},
            "general_settings": {"master_key": MASTER}}))
        proxy_env = {**base, "BEDROCK_BOT_URL": f"http://127.0.0.1:{bot_port}", "BEDROCK_BOT_TOKEN": TOKEN,
                     "BEDROCK_BOT_SUBJECT_FROM": "end_user", "BEDROCK_BOT_DEFAULT_MAX_TOKENS": "1",
                     "DEFAULT_MOCK_RESPONSE_COMPLETION_TOKEN_COUNT": str(COMPLETION_TOKENS),
                     "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
                     "NO_DOCS": "True", "DISABLE_ADMIN_UI": "True"}
        proxy = _start("litellm", [str(Path(sys.executable).parent / "litellm"), "--config", str(config),
                                   "--host", "127.0.0.1", "--port", str(proxy_port)], proxy_env, tmp_path)
        try:
            _wait_ready(bot, f"http://127.0.0.1:{bot_port}/healthz")
            _wait_ready(proxy, f"http://127.0.0.1:{proxy_port}/health/liveliness")
            yield World(db, slack, f"http://127.0.0.1:{bot_port}", f"http://127.0.0.1:{proxy_port}",
                        bot_env, tmp_path, bot)
        finally:
            proxy.stop()
            bot.stop()


def _button(user: str, action_id: str, value: str, response_url: str) -> dict[str, Any]:
    return {"type": "block_actions", "user": {"id": user, "username": user.lower(), "team_id": "T0001"},
            "api_app_id": "A0001", "token": "x", "trigger_id": f"trig-{action_id}",
            "team": {"id": "T0001", "domain": "t"}, "channel": {"id": ALERTS, "name": "alerts"},
            "container": {"type": "message", "message_ts": "1.1", "channel_id": ALERTS},
            "response_url": response_url,
            "actions": [{"action_id": action_id, "block_id": "b", "value": value, "type": "button",
                         "action_ts": "1.2", "text": {"type": "plain_text", "text": "x"}}]}


def _modal(user: str, metadata: str, reason: str) -> dict[str, Any]:
    return {"type": "view_submission", "team": {"id": "T0001", "domain": "t"},
            "user": {"id": user, "username": user.lower(), "team_id": "T0001"},
            "api_app_id": "A0001", "token": "x", "trigger_id": "t", "response_urls": [],
            "view": {"id": "V1", "team_id": "T0001", "type": "modal", "callback_id": "restore_request_modal",
                     "private_metadata": metadata, "hash": "h", "blocks": [],
                     "state": {"values": {"reason": {"reason_input": {
                         "type": "plain_text_input", "value": reason}}}}}}


def _enforce(w: World) -> None:
    run = subprocess.run([sys.executable, "-m", "handlers.main", "run-job", "enforce"], cwd=w.workdir,
                         env=w.bot_env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


def test_litellm_proxy_asks_the_bot_before_every_call(world: World) -> None:
    w = world
    # subjects made by `team add`: no IAM principal, so nothing here calls AWS
    assert "alice" in w.command(f"team team-e2e add <@{ALICE}|alice>")
    # 1. no limit yet: the call passes and the bot counts what the model used
    status, body = w.chat("alice")
    assert status == 200, body
    one = w.settled("alice", 1)
    assert one >= COMPLETION_TOKENS
    # 2. a limit that two more calls cross: one more fits (estimate: prompt + 1), the one after
    #    it is refused with the bot's reason
    limit = one + one // 2
    assert "tokens/day" in w.command(f"limit alice {limit}/day")
    assert w.chat("alice")[0] == 200
    assert w.settled("alice", 2 * one) == 2 * one
    status, body = w.chat("alice")
    assert status == 429, body
    assert "would be exceeded" in body and "alice's tokens/day limit" in body

    # 3. enforce revokes (over 100%); alice asks for a restore; an admin approves in Slack
    w.slack.clear()
    _enforce(w)
    with w.db.session_scope() as s:
        rev = s.scalars(select(Revocation).where(Revocation.state == "active")).one()
    alert = next(c for c in w.slack.wait_for("chat.postMessage", timeout=15) if c.args["channel"] == ALERTS)
    assert "access revoked for alice" in alert.args["text"]  # no IAM principal: the gateway enforces it
    w.slack.clear()
    status, body = w.chat("alice")
    assert status == 429 and "alice is revoked (limit" in body, body
    assert w.interact(_button(ALICE, "request_restore", str(rev.id), w.slack.response_url("rq"))) == 200
    w.slack.wait_for("views.open", timeout=15)
    assert w.interact(_modal(ALICE, str(rev.id), "customer demo at 3pm")) == 200
    post = next(c for c in w.slack.wait_for("chat.postMessage", count=2, timeout=15)
                if c.args["channel"] == ALERTS and "Restore request" in reply_text(c.args))
    actions = next(b for b in post.args["blocks"] if b["type"] == "actions")
    request_id = actions["elements"][0]["value"]
    assert w.interact(_button(ADMIN, "approve_request", request_id, w.slack.response_url("ok"))) == 200
    assert "Approved" in reply_text(w.slack.wait_for("chat.update", timeout=15)[0].args), \
        [reply_text(c.args) for c in w.slack.calls() if c.method.startswith("response_url")]
    status, body = w.chat("alice")
    assert status == 200, body  # the next call after the approval passes


def test_concurrent_calls_cannot_overshoot_and_the_hook_fails_closed(world: World) -> None:
    w = world
    w.command(f"team team-e2e add <@{BOB}|bob>")
    w.command("limit bob 2000/day")
    # each call reserves prompt + 300 and uses prompt + 200: at most 6 are in flight at once,
    # and a call that settles early gives its unused 100 back, so up to 2000 // (prompt + 200)
    # may pass in all; what must never happen is more usage than the limit
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: w.chat("bob", max_tokens=300), range(16)))
    codes = [c for c, _ in results]
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert set(codes) == {200, 429}, results
    assert codes.count(200) * COMPLETION_TOKENS <= 2000, codes
    used = w.settled("bob", codes.count(200) * COMPLETION_TOKENS)
    assert used <= 2000, used

    # a caller the bot does not know is refused; without the bot the hook fails closed
    status, body = w.chat("nobody")
    assert status == 403 and "unknown subject" in body, body
    w.bot.stop()
    status, body = w.chat("alice")
    assert status == 503 and "quota service unavailable" in body, body
