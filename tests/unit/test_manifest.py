"""The Slack app manifest (`bedrock-bot manifest [--url …]`): scopes, the slash command, URLs,
Socket Mode, Slack's field limits, and agreement with what the handlers actually register."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot.manifest import (
    BOT_EVENTS,
    BOT_SCOPES,
    COMMAND,
    EVENTS_PATH,
    NAME_MAX,
    build_manifest,
    next_steps,
    normalize_url,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]
URL = "https://bot.example.com"
EXPECTED_SCOPES = {"commands", "chat:write", "chat:write.public", "files:write", "users:read", "im:write",
                   "channels:join", "groups:read"}


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (dotted key path, value) in the manifest."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((f"{path}.{key}".lstrip("."), value))
            out.extend(_walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_walk(value, f"{path}[{i}]"))
    return out


# ------------------------------------------------------------------ HTTP mode


def test_scopes_are_exactly_the_ones_the_bot_uses() -> None:
    bot_scopes = build_manifest(URL)["oauth_config"]["scopes"]["bot"]
    assert set(bot_scopes) == EXPECTED_SCOPES
    assert len(bot_scopes) == len(set(bot_scopes))
    assert set(BOT_SCOPES) == EXPECTED_SCOPES
    assert "user" not in build_manifest(URL)["oauth_config"]["scopes"]  # no user-token scopes


def test_slash_command_escapes_and_points_at_the_events_url() -> None:
    (command,) = build_manifest(URL)["features"]["slash_commands"]
    assert command["command"] == "/bedrock"
    assert command["should_escape"] is True
    assert command["url"] == f"{URL}/slack/events"
    assert command["description"] and command["usage_hint"]


def test_events_and_interactivity_use_the_url() -> None:
    settings = build_manifest(URL)["settings"]
    assert settings["event_subscriptions"] == {"request_url": f"{URL}/slack/events",
                                               "bot_events": ["app_home_opened"]}
    assert settings["interactivity"] == {"is_enabled": True, "request_url": f"{URL}/slack/events"}
    assert settings["socket_mode_enabled"] is False
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_app_home_and_bot_user() -> None:
    features = build_manifest(URL)["features"]
    assert features["app_home"]["home_tab_enabled"] is True
    assert features["app_home"]["messages_tab_enabled"] is True  # the bot's DMs land here
    assert features["app_home"]["messages_tab_read_only_enabled"] is True  # it reads no DMs
    assert features["bot_user"] == {"display_name": "Bedrock Usage Bot", "always_online": True}


def test_every_request_url_is_the_same_https_endpoint() -> None:
    urls = [v for k, v in _walk(build_manifest(URL)) if k.endswith(("url", "request_url"))]
    assert len(urls) == 3
    assert set(urls) == {f"{URL}{EVENTS_PATH}"}


@pytest.mark.parametrize(("given", "base"), [
    ("https://bot.example.com", "https://bot.example.com"),
    ("https://bot.example.com/", "https://bot.example.com"),
    ("  https://bot.example.com//  ", "https://bot.example.com"),
    ("https://Bot.Example.COM", "https://bot.example.com"),
    ("https://bot.example.com:8443", "https://bot.example.com:8443"),
    ("https://example.com/bedrock/", "https://example.com/bedrock"),
    ("https://example.com/bedrock/slack/events", "https://example.com/bedrock"),
    ("https://bot.example.com/slack/events/", "https://bot.example.com"),
    ("HTTPS://bot.example.com", "https://bot.example.com"),
])
def test_urls_are_normalized(given: str, base: str) -> None:
    assert normalize_url(given) == base
    (command,) = build_manifest(given)["features"]["slash_commands"]
    assert command["url"] == base + "/slack/events"


@pytest.mark.parametrize("bad", [
    "",
    "   ",
    "http://bot.example.com",
    "ftp://bot.example.com",
    "bot.example.com",
    "https://",
    "https:///slack/events",
    "https://user:secret@bot.example.com",
    "https://bot.example.com/?team=1",
    "https://bot.example.com/#top",
    "https://bot.example.com?",
    "https://bot.example.com:99999",
    "https://bot.example.com:port",
    "https://bot .example.com",
    "https://bot.example.com/a//b",
])
def test_bad_urls_are_refused_with_one_line(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        build_manifest(bad)
    message = str(err.value)
    assert message and "\n" not in message
    assert "--url" in message


# ------------------------------------------------------------------ Socket Mode


def test_without_url_it_is_a_socket_mode_manifest_with_no_urls() -> None:
    manifest = build_manifest()
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert not [k for k, _ in _walk(manifest) if k.endswith("url")]
    (command,) = manifest["features"]["slash_commands"]
    assert command["should_escape"] is True and "url" not in command
    assert manifest["settings"]["event_subscriptions"] == {"bot_events": ["app_home_opened"]}
    assert manifest["settings"]["interactivity"] == {"is_enabled": True}
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == EXPECTED_SCOPES


# ------------------------------------------------------------------ Slack's limits, output


@pytest.mark.parametrize("url", [None, URL])
def test_fields_are_within_slack_limits(url: str | None) -> None:
    m = build_manifest(url)
    info = m["display_information"]
    assert 1 <= len(info["name"]) <= 35
    assert len(info["description"]) <= 140
    assert 175 <= len(info["long_description"]) <= 4000
    assert re.fullmatch(r"#[0-9a-fA-F]{6}", info["background_color"])
    assert len(m["features"]["bot_user"]["display_name"]) <= 80
    (command,) = m["features"]["slash_commands"]
    assert len(command["command"]) <= 32 and command["command"].startswith("/")
    assert len(command["description"]) <= 2000 and len(command["usage_hint"]) <= 1000


def test_custom_name_and_its_limits() -> None:
    m = build_manifest(URL, name="FinOps Bedrock")
    assert m["display_information"]["name"] == "FinOps Bedrock"
    assert m["features"]["bot_user"]["display_name"] == "FinOps Bedrock"
    for bad in ("", "   ", "x" * (NAME_MAX + 1)):
        with pytest.raises(ValueError):
            build_manifest(URL, name=bad)


def test_to_json_round_trips() -> None:
    manifest = build_manifest(URL)
    text = to_json(manifest)
    assert text.endswith("\n")
    assert json.loads(text) == manifest
    assert build_manifest(URL) == manifest  # a fresh dict each time, same content


# ------------------------------------------------------------------ agrees with the handlers


def _handler_sources() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "handlers").glob("*.py")))


def test_manifest_events_and_command_are_the_ones_the_handlers_register() -> None:
    source = _handler_sources()
    registered_events = set(re.findall(r"""@app\.event\(\s*["']([a-z_]+)["']""", source))
    assert registered_events == set(BOT_EVENTS)
    registered_commands = set(re.findall(r"""@app\.command\(\s*["']([^"']+)["']""", source))
    assert registered_commands == {COMMAND}


def test_channel_scopes_are_the_ones_the_start_up_check_calls_for() -> None:
    """conversations.join needs channels:join (public channels); conversations.info on a private
    channel needs groups:read. bot/slack/channels.py makes exactly those calls."""
    source = (ROOT / "bot" / "slack" / "channels.py").read_text()
    assert ".conversations_join(" in source and ".conversations_info(" in source
    assert {"channels:join", "groups:read"} <= set(BOT_SCOPES)


# ------------------------------------------------------------------ the command and its next steps


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from bot.cli import main

    code = main(["manifest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_json_alone_on_stdout_and_the_next_steps_on_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "--url", URL + "/")
    assert code == 0 and json.loads(out) == build_manifest(URL)
    assert f"{URL}/slack/events" in err and "press Retry" in err and "Event Subscriptions" in err
    assert "SLACK_SIGNING_SECRET" in err
    assert err == next_steps(URL)


def test_cli_socket_mode_explicitly_or_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "--socket")
    assert code == 0 and json.loads(out) == build_manifest(None)
    assert "SLACK_APP_TOKEN" in err and "connections:write" in err and "Retry" not in err
    assert _cli(capsys)[1] == out  # no flag: Socket Mode, as before


def test_cli_quiet_and_conflicting_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "--url", URL, "-q")
    assert code == 0 and json.loads(out) and err == ""
    with pytest.raises(SystemExit) as done:
        _cli(capsys, "--url", URL, "--socket")
    assert done.value.code == 2 and "not allowed with" in capsys.readouterr().err
    code, out, err = _cli(capsys, "--url", "http://bot.example.com")
    assert code == 2 and out == "" and err.startswith("manifest: ") and err.count("\n") == 1


def test_events_path_is_the_one_the_server_routes() -> None:
    assert f'"{EVENTS_PATH}"' in (ROOT / "handlers" / "http.py").read_text()
