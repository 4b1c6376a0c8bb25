"""Shared pieces of the hardening suite: the `replicas` marker, a moto-backed bot with alice
provisioned and linked, database snapshots ("nothing changed but the audit log") and a WSGI
caller that goes through `handlers.http.WsgiApp` exactly as `serve` does."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sqlalchemy import select

from bot.clock import FixedClock
from bot.db import Database
from bot.models import AuditEvent, Base
from bot.services import audit
from handlers.http import WsgiApp
from tests.fakes.signing import signed_headers
from tests.harness import ALICE, SECRET, Harness, running_bot

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ACCOUNT = "123456789012"
ALICE_ARN = f"arn:aws:iam::{ACCOUNT}:user/alice"
# Tables whose rows a refusal may add to: the audit log (always), the Slack outbox (a
# post that failed is kept for a retry, when the outbox exists) and the replay cache (every
# signed Slack request through `WsgiApp` leaves its signature there for 5 minutes).
SIDE_TABLES = frozenset({"audit_events", "outbox", "slack_signatures"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "replicas: starts real `bedrock-bot serve` processes on PostgreSQL (slow, ~30 s)")


# ---- database snapshots ------------------------------------------------------------------------

def snapshot(db: Database, skip: frozenset[str] = SIDE_TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but `skip`, in a stable order: equal snapshots, unchanged state."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name in skip:
                continue
            rows = conn.execute(select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def audit_events(db: Database, after: int = 0) -> list[AuditEvent]:
    with db.session_scope() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.id > after).order_by(AuditEvent.id)))


def last_audit_id(db: Database) -> int:
    events = audit_events(db)
    return events[-1].id if events else 0


def assert_chain_intact(db: Database) -> None:
    with db.session_scope() as s:
        result = audit.verify(s)
    assert result.ok, f"audit chain broken at {result.broken_id}: {result.reason}"


# ---- a bot on moto with alice provisioned and linked ---------------------------------------------

@dataclass
class World:
    bot: Harness
    iam: Any
    cloudwatch: Any
    db: Database

    def policies(self, user: str = "alice") -> list[str]:
        return list(self.iam.list_user_policies(UserName=user)["PolicyNames"])


@pytest.fixture
def world(db: Database, clock: FixedClock) -> Iterator[World]:
    with mock_aws(), running_bot(db, clock) as bot:
        iam = boto3.client("iam", region_name="us-east-1")
        cw = boto3.client("cloudwatch", region_name="us-east-1")
        bot.services.overrides.update(iam=iam, cloudwatch=cw)
        iam.create_user(UserName="alice")
        bot.command(f"provision <@{ALICE}|alice> {MODEL}")
        bot.command(f"link <@{ALICE}|alice> {ALICE_ARN}")
        bot.slack.clear()
        yield World(bot, iam, cw, db)


# ---- WSGI --------------------------------------------------------------------------------------

def wsgi_call(app: WsgiApp, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None, content_length: str | None = None,
              remote_addr: str = "203.0.113.7") -> tuple[int, dict[str, str], bytes]:
    """One request through the WSGI app, as waitress would hand it over."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "REMOTE_ADDR": remote_addr,
        "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length,
        "wsgi.input": io.BytesIO(body), "SERVER_NAME": "localhost", "SERVER_PORT": "3000",
        "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1",
    }
    for key, value in (headers or {}).items():
        if key.lower() == "content-type":
            environ["CONTENT_TYPE"] = value
        else:
            environ["HTTP_" + key.upper().replace("-", "_")] = value
    seen: dict[str, Any] = {}

    def start(status: str, hdrs: list[tuple[str, str]]) -> None:
        seen["status"], seen["headers"] = int(status.split()[0]), dict(hdrs)

    out = b"".join(app(environ, start))
    return seen["status"], seen["headers"], out


def signed_post(app: WsgiApp, body: str | bytes, content_type: str = "application/x-www-form-urlencoded",
                secret: str = SECRET) -> tuple[int, dict[str, str], bytes]:
    raw = body.encode() if isinstance(body, str) else body
    headers = signed_headers(secret, raw)
    headers["Content-Type"] = content_type
    return wsgi_call(app, "POST", "/slack/events", raw, headers)


def slack_json(bot: Harness) -> str:
    """Everything the bot sent to Slack, as one JSON string (to look for unescaped text)."""
    return json.dumps([{"method": c.method, "args": c.args} for c in bot.slack.calls()],
                      ensure_ascii=False, default=str)
