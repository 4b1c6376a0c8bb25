from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import pytest
from slack_sdk.signature import Clock, SignatureVerifier

from tests.fakes.signing import (
    event_body,
    interactive_body,
    signed_headers,
    slack_signature,
    slash_command_body,
)

VECTOR_PATH = Path(__file__).resolve().parents[1] / "vectors" / "slack" / "signature-vector.json"


class FixedClock(Clock):
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    return json.loads(VECTOR_PATH.read_text())


def test_documented_vector_reproduces(vector: dict[str, Any]) -> None:
    sig = slack_signature(vector["signing_secret"], vector["timestamp"], vector["body"])
    assert sig == vector["expected_signature"]
    as_bytes = vector["body"].encode()
    assert slack_signature(vector["signing_secret"], int(vector["timestamp"]), as_bytes) == sig


def test_documented_vector_accepted_by_slack_sdk(vector: dict[str, Any]) -> None:
    verifier = SignatureVerifier(
        vector["signing_secret"], clock=FixedClock(float(vector["timestamp"]))
    )
    assert (
        verifier.generate_signature(timestamp=vector["timestamp"], body=vector["body"])
        == vector["expected_signature"]
    )
    assert verifier.is_valid(vector["body"], vector["timestamp"], vector["expected_signature"])
    headers = signed_headers(vector["signing_secret"], vector["body"], vector["timestamp"])
    assert headers["X-Slack-Signature"] == vector["expected_signature"]
    assert verifier.is_valid_request(vector["body"], headers)


def test_stale_or_tampered_requests_rejected(vector: dict[str, Any]) -> None:
    ts = int(vector["timestamp"])
    headers = signed_headers(vector["signing_secret"], vector["body"], ts)
    stale = SignatureVerifier(vector["signing_secret"], clock=FixedClock(ts + 301))
    assert not stale.is_valid_request(vector["body"], headers)
    fresh = SignatureVerifier(vector["signing_secret"], clock=FixedClock(ts + 299))
    assert fresh.is_valid_request(vector["body"], headers)
    assert not fresh.is_valid_request(vector["body"] + "x", headers)
    wrong = SignatureVerifier("another-secret", clock=FixedClock(ts))
    assert not wrong.is_valid_request(vector["body"], headers)


def test_signed_headers_default_to_now() -> None:
    body = slash_command_body("usage me")
    headers = signed_headers("s3cret", body)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert SignatureVerifier("s3cret").is_valid_request(body, headers)


def test_slash_command_body_shape() -> None:
    body = slash_command_body(
        "limit set @bob 50 USD/day", response_url="http://127.0.0.1:1/response/r1"
    )
    fields = parse_qsl(body, keep_blank_values=True)
    assert [k for k, _ in fields] == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    ]
    form = dict(fields)
    assert form["text"] == "limit set @bob 50 USD/day"
    assert form["command"] == "/bedrock"
    assert form["user_id"] == "U_ALICE" and form["team_id"] == "T0001"
    assert form["response_url"] == "http://127.0.0.1:1/response/r1"
    assert "command=%2Fbedrock" in body and "text=limit+set+%40bob" in body


def test_interactive_and_event_bodies() -> None:
    payload = {"type": "block_actions", "user": {"id": "U_ALICE"}, "actions": []}
    form = parse_qs(interactive_body(payload))
    assert list(form) == ["payload"]
    assert json.loads(form["payload"][0]) == payload

    envelope = json.loads(event_body({"type": "app_home_opened", "user": "U_ALICE"}))
    assert envelope["type"] == "event_callback"
    assert envelope["team_id"] == "T0001"
    assert envelope["event"] == {"type": "app_home_opened", "user": "U_ALICE"}
    assert envelope["event_id"].startswith("Ev")
    other = json.loads(event_body({"type": "x"}, team_id="T0002"))
    assert other["team_id"] == "T0002" and other["event_id"] != envelope["event_id"]
