"""The gateway API's JSON: parsing is strict and one-line, the OpenAPI file matches the code,
and the LiteLLM hook's pure helpers map identities and usage as documented."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.errors import BadInput
from bot.gateway_json import _CHECK_KEYS, _USAGE_KEYS, parse_check, parse_usage
from bot.services.quota import Ask, Counters, Decision, LimitState, Rule, caps, limit_state
from handlers.gateway import render_decision

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


def _b(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_a_check_and_a_usage_parse() -> None:
    c = parse_check(_b({"principal_arn": "arn:aws:iam::123456789012:role/x", "estimated_tokens": 5}))
    assert c.who.principal_arn and c.estimated_tokens == 5 and c.model is None
    u = parse_usage(_b({"slack_user_id": "U012ABC", "request_id": "chatcmpl-1", "output_tokens": 7}))
    assert (u.input_tokens, u.output_tokens, u.tokens, u.reservation) == (0, 7, 7, None)


@pytest.mark.parametrize("body", [b"\xff", b"", b"null", b'"x"', _b({"subject": "Alice"}),
                                  _b({"subject": "a" * 65}), _b({"slack_user_id": "alice"}),
                                  _b({"principal_arn": "arn:aws:s3:::bucket"}), b"{" * 100000,
                                  _b({"subject": "alice", "estimated_tokens": 50_000_001}),
                                  _b({"subject": "alice", "model": "a b"})])
def test_bad_checks_are_refused_in_one_line(body: bytes) -> None:
    with pytest.raises(BadInput) as err:
        parse_check(body)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200


def _schema() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docs" / "gateway-openapi.yaml").read_text())["components"]["schemas"]


def test_the_openapi_file_names_exactly_the_fields_the_code_reads_and_writes() -> None:
    schemas = _schema()
    assert set(schemas["CheckRequest"]["allOf"][1]["properties"]) == _CHECK_KEYS
    assert set(schemas["UsageRequest"]["allOf"][1]["properties"]) == _USAGE_KEYS
    rule = Rule(1, 2, "alice", "tokens", "day", 100, "revoke", NOW, 10, None)
    doc = render_decision(Decision(True, "alice", "within limits", "0" * 32,
                                   (LimitState(rule, 10, 5),), NOW))
    assert set(doc) == set(schemas["Decision"]["required"])
    assert set(doc["limits"][0]) == set(schemas["LimitState"]["required"])


def test_caps_take_the_tightest_enforced_limit_per_owner_and_metric() -> None:
    day = Rule(1, 7, "alice", "tokens", "day", 1000, "revoke", NOW, 400, None)
    week = Rule(2, 7, "alice", "tokens", "week", 5000, "revoke", NOW, 4800, None)
    notify = Rule(3, 7, "alice", "requests", "day", 1, "notify", NOW, 9, None)
    suspended = Rule(4, 8, "team-x", "tokens", "day", 1, "revoke", NOW, 9, datetime(2027, 1, 1, tzinfo=UTC))
    snaps = {7: Counters(settled_input=30, settled_output=20)}
    # week: 5000 - 4800 + 50 settled at snapshot = 250 beats day's 1000 - 400 + 50 = 650
    assert caps([day, week, notify, suspended], snaps, NOW) == {7: {"tokens": 250}}
    now = Counters(reserved_tokens=100, settled_input=80, settled_output=20)
    s = limit_state(week, snaps[7], now)
    assert (s.used, s.reserved, s.remaining) == (4850, 100, 50)
    assert s.breached_by(Ask(51)) and not s.breached_by(Ask(50))


def test_the_litellm_hook_maps_identities_and_usage() -> None:
    hook = pytest.importorskip("bot_litellm.hook")
    assert hook.who("Alice@Example.com") == {"subject": "alice"}
    assert hook.who("U012ABC") == {"slack_user_id": "U012ABC"}
    arn = "arn:aws:iam::123456789012:role/x"
    assert hook.who(arn) == {"principal_arn": arn}

    class Key:
        metadata = {"bedrock_subject": "team-eng"}
        user_id = "default_user_id"  # LiteLLM's master key: not a person
        team_alias = "ml"

    assert hook.subject_of(Key(), {"user": "bob"}, ("user_id", "key_metadata")) == {"subject": "team-eng"}
    assert hook.subject_of(Key(), {"user": "bob"}, ("user_id", "end_user")) == {"subject": "bob"}
    assert hook.subject_of(Key(), {}, ("user_id",)) is None
    assert hook.bare_model("bedrock/converse/anthropic.claude-3-haiku-20240307-v1:0") == \
        "anthropic.claude-3-haiku-20240307-v1:0"
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "cache_read_input_tokens": 600,
             "cache_creation_input_tokens": 100}

    class Response:
        pass

    r = Response()
    r.usage = usage  # type: ignore[attr-defined]
    assert hook.usage_of(r) == {"input_tokens": 300, "output_tokens": 50, "cache_read_tokens": 600,
                                "cache_write_tokens": 100}
    with pytest.raises(ValueError, match="BEDROCK_BOT_URL"):
        hook.HookSettings.from_env({"BEDROCK_BOT_TOKEN": "x"})
    with pytest.raises(ValueError, match="SUBJECT_FROM"):
        hook.HookSettings.from_env({"BEDROCK_BOT_URL": "http://b", "BEDROCK_BOT_TOKEN": "x",
                                    "BEDROCK_BOT_SUBJECT_FROM": "nope"})
    s = hook.HookSettings.from_env({"BEDROCK_BOT_URL": "http://b/", "BEDROCK_BOT_TOKEN": "x"})
    assert (s.url, s.fail_open) == ("http://b", False)
    assert s.subject_from == ("key_metadata", "user_id", "team_alias")
