"""After a run of refusals and faults, every one of them has its audit row and the chain
still verifies (in code and with `bedrock-bot audit verify`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.cli import main as cli_main
from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent
from handlers.sns import SnsEndpoint
from jobs import reconcile
from jobs.scheduler import JobRunner
from tests.fakes.sns_signing import make_notification, write_cert
from tests.hardening.aws_faults import Faults, bot_iam_client, iam_error, inject
from tests.hardening.conftest import World, assert_chain_intact, audit_events, last_audit_id
from tests.harness import ADMIN, BOB, reply_text
from tests.stepped_scheduler import SteppedScheduler, stepped

TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alerts"


def _boom(_: Any) -> None:
    raise RuntimeError("the job fell over")


def test_every_refusal_and_failure_has_its_row_and_the_chain_verifies(
        world: World, db: Database, clock: FixedClock, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = world
    bot = w.bot
    write_cert(tmp_path)
    monkeypatch.setattr(bot.services.settings.aws, "sns_topic_arns", [TOPIC])
    monkeypatch.setattr(bot.services.settings.aws, "sns_cert_dir", str(tmp_path))
    bot.services.__dict__.pop("_certs", None)
    client = bot_iam_client()
    bot.services.overrides["iam"] = client
    bot.services.__dict__.pop("access", None)
    expected: list[tuple[str, str, str]] = []  # (actor, action, outcome)

    def step(expect: tuple[str, str, str], run: Any) -> None:
        mark = last_audit_id(db)
        run()
        rows = [(e.actor, e.action, e.outcome) for e in audit_events(db, mark)]
        assert expect in rows, (expect, rows)
        expected.append(expect)

    step((f"slack:{BOB}", "limit.set", "denied"), lambda: bot.command("limit alice 1M/day", user=BOB))
    step((f"slack:{ADMIN}", "limit.set", "denied"), lambda: bot.command("limit nobody 1M/day"))
    step((f"slack:{BOB}", "access.revoke", "denied"), lambda: bot.command("revoke alice", user=BOB))

    faults = inject(client, Faults("PutUserPolicy", lambda: iam_error("AccessDenied", "no", 403)),
                    monkeypatch)
    step((f"slack:{ADMIN}", "access.revoke", "error"),
         lambda: "AccessDenied" in reply_text(bot.command("revoke alice")))
    faults.times = 0  # IAM answers again

    endpoint = SnsEndpoint(bot.services, bot.services.sns_verifier())
    step(("sns:unverified", "sns.refuse", "denied"), lambda: endpoint(b'{"Type": "Notification"}'))
    forged = make_notification("x", "arn:aws:sns:us-east-1:123456789012:not-ours", timestamp=clock())
    step(("sns:unverified", "sns.refuse", "denied"), lambda: endpoint(json.dumps(forged).encode()))
    step((f"sns:{TOPIC}", "sns.unrecognised", "ok"),
         lambda: endpoint(json.dumps(make_notification("hi", TOPIC, timestamp=clock())).encode()))

    client.put_user_policy(UserName="alice", PolicyName="bedrock-bot-deny-ghost", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "bedrock:InvokeModel",
                                                 "Resource": "*"}]}))
    step(("system:reconcile", "reconcile.deny_unknown", "ok"), lambda: reconcile.run(bot.services))

    runner = JobRunner(bot.services, holder="audit-test", jobs={"usage_sync": _boom},
                       make_scheduler=SteppedScheduler)

    def scheduled() -> None:  # a new leader runs its interval jobs at once
        runner.start()
        assert "usage_sync" in stepped(runner).run_pending()
        runner.shutdown()

    step(("system:scheduler", "job.usage_sync", "error"), scheduled)

    bot.slack.down()  # a change while Slack is down: the change itself is recorded
    step((f"slack:{ADMIN}", "limit.set", "ok"), lambda: bot.command("limit alice 2M/day alarm=off"))
    bot.slack.up()

    assert_chain_intact(db)
    with db.session_scope() as s:
        rows = {(e.actor, e.action, e.outcome) for e in s.scalars(select(AuditEvent))}
    assert set(expected) <= rows

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db.url)
    assert cli_main(["audit", "verify"]) == 0
