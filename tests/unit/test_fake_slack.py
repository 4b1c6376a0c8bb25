from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient, WebhookClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from tests.fakes.signing import signed_headers, slash_command_body
from tests.fakes.slack_api import FakeSlack


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as f:
        yield f


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token="xoxb-test", base_url=fake.url, timeout=5)


def test_url_and_auth_test(fake: FakeSlack, client: WebClient) -> None:
    assert fake.url.startswith("http://127.0.0.1:") and fake.url.endswith("/")
    resp = client.auth_test()
    assert resp["user_id"] == "UBOT" and resp["bot_id"] == "BBOT" and resp["team_id"] == "T0001"
    call = fake.last("auth.test")
    assert call.headers.get("Authorization") == "Bearer xoxb-test"


def test_post_message_blocks_recorded_and_decoded(fake: FakeSlack, client: WebClient) -> None:
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*spend* $12.50"}}
    ]
    first = client.chat_postMessage(channel="C1", text="spend", blocks=blocks)
    second = client.chat_postMessage(channel="C1", text="again", thread_ts=first["ts"])
    assert first["ok"] and first["channel"] == "C1"
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["blocks"] == blocks
    call = fake.calls("chat.postMessage")[0]
    assert call.args["blocks"] == blocks and call.args["text"] == "spend"
    assert fake.last("chat.postMessage").args["thread_ts"] == first["ts"]
    assert len(fake.calls()) == 2
    upd = client.chat_update(channel="C1", ts=first["ts"], text="edited", blocks=blocks)
    assert upd["ts"] == first["ts"] and fake.last("chat.update").args["blocks"] == blocks
    eph = client.chat_postEphemeral(channel="C1", user="U1", text="psst")
    assert eph["ok"] and eph["message_ts"]
    fake.clear()
    assert fake.calls() == []


def test_conversations_open_users_info_views(fake: FakeSlack, client: WebClient) -> None:
    assert client.conversations_open(users="U_ALICE")["channel"]["id"] == "DU_ALICE"
    user = client.users_info(user="U_BOB")["user"]
    assert user["name"] == "u_bob" and user["profile"]["display_name"]
    view = {"type": "home", "blocks": [{"type": "divider"}]}
    published = client.views_publish(user_id="U_ALICE", view=view)
    assert published["view"]["id"] and published["view"]["type"] == "home"
    assert fake.last("views.publish").args["view"] == view
    opened = client.views_open(
        trigger_id="1.2.x",
        view={"type": "modal", "title": {"type": "plain_text", "text": "t"}, "blocks": []},
    )
    updated = client.views_update(
        view_id=opened["view"]["id"],
        view={"type": "modal", "title": {"type": "plain_text", "text": "u"}, "blocks": []},
    )
    assert updated["view"]["id"] == opened["view"]["id"]
    with pytest.raises(SlackApiError) as err:
        client.api_call("no.suchMethod")
    assert err.value.response["error"] == "unknown_method"


def test_files_upload_v2_bytes_roundtrip(
    fake: FakeSlack, client: WebClient, tmp_path: Path
) -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10
    resp = client.files_upload_v2(channel="C1", file=data, filename="chart.png", title="Chart")
    assert resp["file"]["title"] == "Chart"
    file_id = resp["file"]["id"]
    assert fake.uploaded_files() == {file_id: data}
    complete = fake.last("files.completeUploadExternal")
    assert complete.args["channel_id"] == "C1"
    assert complete.args["files"][0]["id"] == file_id
    path = tmp_path / "report.csv"
    path.write_bytes(b"user,usd\nalice,1.5\n")
    resp2 = client.files_upload_v2(channel="C1", file=str(path), title="Report")
    assert fake.uploaded_files()[resp2["file"]["id"]] == b"user,usd\nalice,1.5\n"


def test_response_url_recorded(fake: FakeSlack) -> None:
    url = fake.response_url("r1")
    resp = WebhookClient(url).send(text="done", response_type="ephemeral", replace_original=False)
    assert resp.status_code == 200
    (call,) = fake.wait_for("response_url:r1")
    assert call.args == {"text": "done", "response_type": "ephemeral", "replace_original": False}


def test_fail_next_429_retried_by_rate_limit_handler(fake: FakeSlack) -> None:
    client = WebClient(token="xoxb-test", base_url=fake.url, timeout=5)
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    fake.fail_next("chat.postMessage", error="ratelimited", status=429, retry_after=1)
    started = time.monotonic()
    resp = client.chat_postMessage(channel="C1", text="hi")
    assert resp["ok"] and time.monotonic() - started >= 1.0
    assert len(fake.calls("chat.postMessage")) == 2


def test_fail_next_without_handler_surfaces_error(fake: FakeSlack, client: WebClient) -> None:
    fake.fail_next("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="hi")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "7"
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]


def test_fail_always_and_heal(fake: FakeSlack, client: WebClient) -> None:
    fake.fail_always("users.info", "user_not_found")
    for _ in range(2):
        with pytest.raises(SlackApiError) as err:
            client.users_info(user="U_GONE")
        assert err.value.response["error"] == "user_not_found"
    fake.heal("users.info")
    assert client.users_info(user="U_GONE")["ok"]


def test_down_gives_503(fake: FakeSlack, client: WebClient) -> None:
    fake.down()
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="hi")
    assert err.value.response.status_code == 503
    fake.up()
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]


def test_wait_for_times_out(fake: FakeSlack) -> None:
    with pytest.raises(TimeoutError):
        fake.wait_for("chat.postMessage", timeout=0.05)


def test_slack_bolt_app_against_fake(fake: FakeSlack, client: WebClient) -> None:
    from slack_bolt import App, BoltRequest

    app = App(client=client, signing_secret="s3cret", process_before_response=True)

    @app.command("/bedrock")
    def bedrock(ack: Any, respond: Any, command: dict[str, Any], client: WebClient) -> None:
        ack()
        respond(text=f"got {command['text']}")
        client.chat_postMessage(channel=command["channel_id"], text="audit")

    def signed(body: str, secret: str) -> BoltRequest:
        headers: dict[str, str | Sequence[str]] = {**signed_headers(secret, body)}
        return BoltRequest(body=body, headers=headers)

    body = slash_command_body("usage me", response_url=fake.response_url("r1"))
    resp = app.dispatch(signed(body, "s3cret"))
    assert resp.status == 200
    assert fake.wait_for("response_url:r1")[0].args["text"] == "got usage me"
    assert fake.last("chat.postMessage").args["channel"] == "C_GENERAL"
    forged = app.dispatch(signed(body, "wrong"))
    assert forged.status == 401


def test_multipart_form_parsed_and_set_response(fake: FakeSlack, client: WebClient) -> None:
    fake.set_response("files.upload", {"ok": True, "file": {"id": "F_LEGACY"}})
    resp = client.api_call(
        "files.upload",
        data={"channels": "C1", "filename": "a.txt"},
        files={"file": io.BytesIO(b"raw\x00bytes")},
    )
    assert resp["file"]["id"] == "F_LEGACY"
    call = fake.last("files.upload")
    assert call.headers["Content-Type"].startswith("multipart/form-data")
    assert call.args == {"channels": "C1", "filename": "a.txt", "file": b"raw\x00bytes"}
