"""`bedrock-bot demo`: the real bot, offline, walked through a story.

Real HTTP server, Slack-shaped signed requests, moto server as AWS, the local AIP
registry, a temporary SQLite database, and a local stand-in for the Slack Web API that
prints every message the bot sends. Any failed step makes the exit code non-zero.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from bot.config import Settings, load_settings
from bot.migrate import upgrade
from bot.render.terminal import blocks_to_text, mrkdwn_to_text
from bot.runtime import Services, build_services
from bot.services import audit, directory
from demo.slack_standin import Call, SlackStandIn

ADMIN, ALICE, BOB, CAROL = "UADMIN0001", "UALICE0001", "UBOB000001", "UCAROL0001"
ALERTS = "CALERTS001"
NAMES = {ADMIN: "dana (admin)", ALICE: "alice", BOB: "bob", CAROL: "carol", "UBOT": "bedrock-bot",
         ALERTS: "alerts"}
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ANSWER_WAIT_S = 15.0  # an answer comes after the ack, from another thread: wait for it, never a fixed nap


class DemoFailed(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _print_call(call: Call) -> None:
    """The Slack stand-in's output: every message the bot sends, as readable text."""
    a = call.args
    if call.method.startswith("response_url:"):
        where = "reply (only you can see this)" if a.get("response_type") != "in_channel" else "reply"
    elif call.method in ("chat.postMessage", "chat.update", "chat.postEphemeral"):
        channel = str(a.get("channel"))
        to = "#alerts" if channel == ALERTS else f"DM to {NAMES.get(channel[1:], channel)}" \
            if channel.startswith("D") else NAMES.get(channel, channel)
        where = f"{call.method} → {to}"
    elif call.method == "files.completeUploadExternal":
        print(f"    [slack] file uploaded: {a.get('files')}")
        return
    else:
        return
    text = blocks_to_text(a.get("blocks"), str(a.get("text", "")), NAMES)
    print(f"    [slack] {where}:")
    for line in text.splitlines():
        print(f"      │ {line}")


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.secret = secrets.token_hex(16)
        self.slack = SlackStandIn(on_call=_print_call)
        self.seq = itertools.count()
        self.base_url = ""
        self.services: Services | None = None

    @property
    def svc(self) -> Services:
        assert self.services is not None
        return self.services

    def settings(self, aws_url: str) -> Settings:
        return load_settings(
            None, SLACK_BOT_TOKEN="xoxb-demo", SLACK_SIGNING_SECRET=self.secret,
            SLACK_API_URL=self.slack.url, DATABASE_URL=f"sqlite:///{self.workdir}/demo.db",
            BOT_ADMINS=ADMIN, BOT_PROFILES_BACKEND="local", BOT_ALERT_CHANNEL=ALERTS,
            BOT_DIGEST_CHANNEL=ALERTS, AWS_REGION="us-east-1", AWS_ENDPOINT_URL=aws_url)

    def command(self, user: str, text: str) -> str:
        """POST a signed slash command to the real server; return the reply as text."""
        name = f"demo{next(self.seq)}"
        body = urlencode({"token": "x", "team_id": "T0001", "channel_id": "CGENERAL01",
                          "user_id": user, "user_name": NAMES[user], "command": "/bedrock",
                          "text": text, "response_url": self.slack.response_url(name),
                          "trigger_id": "1.2.3"})
        print(f"\n  {NAMES[user]} types: /bedrock {mrkdwn_to_text(text, NAMES)}")  # as Slack shows it
        started = time.monotonic()
        status = self._post(body)
        if status != 200:
            raise DemoFailed(f"server answered {status}")
        print(f"    (acknowledged in {1000 * (time.monotonic() - started):.0f} ms)")
        reply = self.slack.wait_for(f"response_url:{name}", timeout=15)[0].args
        time.sleep(0.05)  # let the printer finish the alert-channel posts of this step
        return blocks_to_text(reply.get("blocks"), str(reply.get("text", "")), NAMES)

    def interact(self, payload: dict[str, Any]) -> int:
        """POST a signed block_actions / view_submission payload like Slack does."""
        return self._post(urlencode({"payload": json.dumps(payload)}))

    def _post(self, body: str) -> int:
        """POST a form body to the server, signed as Slack signs it; return the HTTP status."""
        ts = str(int(time.time()))
        sig = SignatureVerifier(self.secret).generate_signature(timestamp=ts, body=body) or ""
        req = urllib.request.Request(
            f"{self.base_url}/slack/events", data=body.encode(), method="POST",
            headers={"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": sig,
                     "Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)

    def click(self, user: str, action_id: str, value: str, until: str = "") -> str:
        """Click a button; return the answer posted to its response_url (the listener answers
        after the ack, on another thread), or "" once the Slack call `until` (`views.open` for
        a form, `chat.update` for a decided request's message) has been made."""
        name = f"demo{next(self.seq)}"
        seen = len(self.slack.calls(until)) if until else 0
        print(f"\n  {NAMES[user]} clicks [{action_id}]")
        self.interact({"type": "block_actions", "user": {"id": user, "username": NAMES[user]},
                       "team": {"id": "T0001"}, "api_app_id": "A0001", "token": "x",
                       "trigger_id": f"trigger-{name}", "response_url": self.slack.response_url(name),
                       "channel": {"id": ALERTS}, "container": {"type": "message", "channel_id": ALERTS},
                       "actions": [{"action_id": action_id, "value": value, "type": "button",
                                    "block_id": "b", "action_ts": "1"}]})
        try:
            if until:
                self.slack.wait_for(until, seen + 1, timeout=ANSWER_WAIT_S)
                return ""
            said = self.slack.wait_for(f"response_url:{name}", timeout=ANSWER_WAIT_S)
        except TimeoutError as exc:
            raise DemoFailed(f"no answer to {action_id}: {exc}") from None
        return blocks_to_text(said[0].args.get("blocks"), str(said[0].args.get("text", "")), NAMES)

    def submit(self, user: str, callback_id: str, metadata: str, reason: str) -> None:
        print(f"\n  {NAMES[user]} submits the form: {reason!r}")
        before = _latest_request(self)
        self.interact({"type": "view_submission", "user": {"id": user, "username": NAMES[user]},
                       "team": {"id": "T0001"}, "api_app_id": "A0001", "token": "x",
                       "view": {"id": "V1", "type": "modal", "callback_id": callback_id,
                                "private_metadata": metadata, "state": {"values": {"reason": {
                                    "reason_input": {"type": "plain_text_input", "value": reason}}}}}})
        deadline = time.monotonic() + ANSWER_WAIT_S  # the request row is its answer
        while _latest_request(self) == before:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the {callback_id} form was not taken within {ANSWER_WAIT_S:.0f} s")
            time.sleep(0.05)

    def traffic(self, profile_id: str, input_tokens: int, output_tokens: int, calls: int) -> None:
        cw = self.svc.aws_client("cloudwatch")
        now = datetime.now(UTC)
        data = [("InputTokenCount", input_tokens), ("OutputTokenCount", output_tokens),
                ("Invocations", calls)]
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": n, "Dimensions": [{"Name": "ModelId", "Value": profile_id}],
             "Timestamp": now, "Value": v, "Unit": "Count"} for n, v in data])
        print(f"\n  Bedrock traffic through AIP {profile_id}: {calls} calls, "
              f"{input_tokens:,} tokens in, {output_tokens:,} out (CloudWatch AWS/Bedrock)")


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)
    print(f"    ✓ {what}")


@contextmanager
def _moto() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # the demo needs the dev extra
        raise DemoFailed("the demo needs moto: pip install -e '.[dev]' (make demo does it)") from exc
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def _http_server(app: Any) -> Iterator[str]:
    import waitress

    port = _free_port()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


def _profile_id(services: Services, subject: str) -> str:
    from sqlalchemy import select

    from bot.models import Profile, Subject

    with services.db.session_scope() as s:
        q = select(Profile.profile_id).join(Subject, Subject.id == Profile.subject_id).where(
            Subject.name == subject)
        return str(s.scalars(q).first())


def story(d: Demo) -> None:
    from jobs import usage_sync

    step("An admin provisions Application Inference Profiles for two users and a team")
    reply = d.command(ADMIN, f"provision <@{ALICE}|alice> {MODEL} cost-center=research")
    expect("application-inference-profile/" in reply, "alice's AIP ARN is in the reply")
    d.command(ADMIN, f"provision <@{BOB}|bob> amazon.nova-lite-v1:0")
    d.command(ADMIN, f"team team-eng add <@{ALICE}|alice> <@{BOB}|bob>")
    reply = d.command(ADMIN, f"provision team-eng {MODEL}")
    expect("team-eng" in reply, "team-eng has its own AIP")
    d.command(ADMIN, f"link <@{ALICE}|alice> arn:aws:iam::123456789012:user/alice")

    step("Traffic arrives and the usage sync reads it from CloudWatch")
    d.traffic(_profile_id(d.svc, "alice"), 1_240_000, 310_000, 420)
    d.traffic(_profile_id(d.svc, "bob"), 380_000, 95_000, 130)
    d.traffic(_profile_id(d.svc, "team-eng"), 2_100_000, 600_000, 800)
    out = usage_sync.run(d.svc)
    expect(out.ok and out.value is not None and out.value.rows >= 3,
           f"usage_sync wrote ledger rows (CloudWatch calls: {out.value.calls if out.value else '-'})")

    step("People look at usage")
    reply = d.command(ALICE, "usage today")
    expect("1.24M" in reply, "alice sees her own 1.24M input tokens")
    reply = d.command(ADMIN, "usage team-eng today")
    expect("3.72M" in reply, "team-eng = its AIP + alice + bob = 3.72M input tokens")
    reply = d.command(CAROL, f"usage <@{ALICE}>")
    expect("your own usage" in reply, "carol (not an admin) may not see alice's usage")
    reply = d.command(BOB, f"provision <@{BOB}|bob> {MODEL}")
    expect("needs the admin role" in reply, "bob (not an admin) may not provision")
    enforcement(d)


def enforcement(d: Demo) -> None:
    from jobs import usage_sync

    step("A limit is set and crossed: access is revoked by an IAM deny policy")
    iam = d.svc.aws_client("iam")
    iam.create_user(UserName="alice")
    d.command(ADMIN, "limit alice 2M/day warn=50,80")
    usage_sync.run(d.svc)  # alice is at 78% already: the 50% warning is posted and DMed
    warned = [c for c in d.slack.calls("chat.postMessage") if "of a limit" in str(c.args.get("text", ""))]
    expect(bool(warned), "alice is warned before the limit is reached")
    d.traffic(_profile_id(d.svc, "alice"), 600_000, 100_000, 90)
    usage_sync.run(d.svc)
    policy = iam.get_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-alice")["PolicyDocument"]
    print(f"\n  IAM user alice now has inline policy bedrock-bot-deny-alice:\n      {json.dumps(policy)}")
    expect(policy["Statement"][0]["Effect"] == "Deny", "the deny policy is on alice's IAM user")

    step("alice asks for access back; four eyes hold even for an approver; the admin approves")
    d.command(ADMIN, f"admins add <@{ALICE}> approver")
    with d.svc.db.session_scope() as s:
        from bot.services.access import active
        from bot.services.directory import SubjectRef, get

        rev_id = active(s, get(s, SubjectRef(name="alice")).id)[-1].id
    d.click(ALICE, "request_restore", str(rev_id), until="views.open")
    expect(bool(d.slack.calls("views.open")), "a form opened asking alice why")
    d.submit(ALICE, "restore_request_modal", str(rev_id), "customer demo at 3pm")
    req_id = _latest_request(d)
    told = d.click(ALICE, "approve_request", str(req_id))
    expect("four eyes" in told, "alice, an approver, still cannot approve her own request")
    d.click(ADMIN, "approve_request", str(req_id), until="chat.update")
    names = iam.list_user_policies(UserName="alice")["PolicyNames"]
    expect(names == [], "the deny policy is gone: alice can call Bedrock again")
    digest(d)


def digest(d: Demo) -> None:
    from datetime import timedelta

    step("The daily digest is posted with a chart")
    # The story's traffic is from today; the digest covers yesterday, so run it "tomorrow".
    real = d.svc.clock
    d.svc.clock = lambda: real() + timedelta(days=1)
    try:
        reply = d.command(ADMIN, "digest")
    finally:
        d.svc.clock = real
    expect("Digest for" in reply and "uploaded" in reply, "the digest was posted with its chart")
    files = d.slack.uploaded_files()
    expect(len(files) == 1 and next(iter(files.values())).startswith(b"\x89PNG"), "the chart is a PNG")
    path = d.workdir / "digest-chart.png"
    path.write_bytes(next(iter(files.values())))
    print(f"\n  chart saved to {path}")


def _latest_request(d: Demo) -> int:
    from sqlalchemy import func, select

    from bot.models import RestoreRequest

    with d.svc.db.session_scope() as s:
        return int(s.scalar(select(func.max(RestoreRequest.id))) or 0)


def step(title: str) -> None:
    print(f"\n=== {title}")


def verify_audit(d: Demo) -> None:
    step("The audit log is intact")
    with d.svc.db.session_scope() as s:
        result = audit.verify(s)
        denied = [e for e in audit.recent(s, limit=100) if e.outcome == "denied"]
    expect(result.ok, f"audit verify: {result.rows} rows, chain intact")
    expect(len(denied) >= 3, f"all {len(denied)} refusals are in the audit log with outcome 'denied'")


def run_demo(keep: bool = False, steps: Callable[[Demo], None] = story) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bedrock-bot-demo-"))
    for k, v in {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    d = Demo(workdir)
    started = time.monotonic()
    try:
        with d.slack, _moto() as aws_url:
            settings = d.settings(aws_url)
            upgrade(settings.db.url)
            d.services = build_services(settings)
            with d.svc.db.session_scope() as s:
                directory.bootstrap_admins(s, d.svc.clock, settings.bot.admins)
            from handlers.app import create_app, slack_client
            from handlers.http import WsgiApp

            app = WsgiApp(d.svc, create_app(settings, d.svc, slack_client(settings)))
            with _http_server(app) as url:
                d.base_url = url
                print(f"bedrock-bot demo: server {url}, AWS (moto) {aws_url}, "
                      f"Slack stand-in {d.slack.url}, database {workdir}/demo.db")
                steps(d)
                verify_audit(d)
    except DemoFailed as exc:
        print(f"\n✗ demo step failed: {exc}", file=sys.stderr)
        return 1
    print(f"\n✓ demo finished in {time.monotonic() - started:.1f} s; files in {workdir}")
    return 0
