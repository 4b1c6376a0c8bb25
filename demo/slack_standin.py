"""A local stand-in for the Slack Web API over real HTTP, so the demo runs offline.

It answers the Web API methods the bot calls (and its response_url and file uploads) the
way Slack does, records every call and hands each one to ``on_call``: the demo prints them.
The tests' fake (tests/fakes/slack_api.py) extends it with failure injection.

Usage::

    with SlackStandIn(on_call=print) as slack:
        client = WebClient(token="xoxb-demo", base_url=slack.url)
        client.chat_postMessage(channel="C1", text="hi")
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

JSON_ARGS = ("blocks", "attachments", "view", "files", "metadata")
AUTH_TEST: dict[str, Any] = {"url": "https://fake.slack.com/", "team": "Fake Team", "user": "bot"}
AUTH_TEST |= {"team_id": "T0001", "user_id": "UBOT", "bot_id": "BBOT"}
Answer = tuple[int, dict[str, str], bytes]  # HTTP status, headers, body


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _decode_json_args(args: dict[str, Any]) -> dict[str, Any]:
    for key in JSON_ARGS:
        value = args.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                args[key] = json.loads(value)
    return args


def _parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        return {}
    if ctype == "application/json":
        parsed = json.loads(body.decode("utf-8"))
        return parsed if isinstance(parsed, dict) else {"_json": parsed}
    if ctype == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\n\r\n".encode()
        msg = BytesParser(policy=HTTP).parsebytes(head + body)
        out: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = cast(bytes, part.get_payload(decode=True) or b"")
            is_file = part.get_filename() is not None
            out[str(name)] = payload if is_file else payload.decode("utf-8")
        return out
    return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's backlog is 5: a burst of 20+ replies would see SYNs dropped and retried 1 s later.
    request_queue_size = 128
    standin: SlackStandIn


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._handle(self.rfile.read(length) if length else b"")

    def _handle(self, body: bytes) -> None:
        url = urlsplit(self.path)
        status, headers, payload = self.server.standin._dispatch(
            url.path, url.query, dict(self.headers.items()), body
        )
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class SlackStandIn:
    """Local HTTP stand-in for the Slack Web API; thread safe; records every call.

    Calls are named by API method, ``response_url:<name>`` or ``upload:<file_id>``.
    """

    def __init__(self, on_call: Callable[[Call], None] | None = None) -> None:
        self.on_call = on_call  # the demo prints each call as it arrives
        self._cond = threading.Condition()  # reentrant: _answer overrides may take it again
        self._calls: list[Call] = []
        self._uploads: dict[str, bytes] = {}
        self._seq = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SlackStandIn:
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.standin = self
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name="slack-standin", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server, self._thread = None, None

    def __enter__(self) -> SlackStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root(self) -> str:
        if self._server is None:
            raise RuntimeError("the Slack stand-in is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """Base URL for ``WebClient(base_url=...)``; ends with "/"."""
        return f"{self.root}/api/"

    def response_url(self, name: str = "r1") -> str:
        return f"{self.root}/response/{name}"

    def calls(self, method: str | None = None) -> list[Call]:
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._matching(method)) >= count, timeout):
                seen = [c.method for c in self._calls]
                raise TimeoutError(f"waited {timeout}s for {count}x {method!r}; saw {seen}")
            return self._matching(method)

    def uploaded_files(self) -> dict[str, bytes]:
        with self._cond:
            return dict(self._uploads)

    def _matching(self, method: str) -> list[Call]:
        return [c for c in self._calls if c.method == method]

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq:08d}"

    def _next_ts(self) -> str:
        self._seq += 1
        micros = 1_700_000_000_000_000 + 100 * self._seq
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _dispatch(self, path: str, query: str, headers: dict[str, str], body: bytes) -> Answer:
        parts = path.strip("/").split("/", 1)
        kind, name = parts[0], parts[1] if len(parts) > 1 else ""
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if kind == "upload":
            method, args = f"upload:{name}", {"file_id": name, "length": len(body)}
        else:
            args = dict(parse_qsl(query, keep_blank_values=True))
            args.update(_parse_body(ctype, body))
            method = name if kind == "api" else f"response_url:{name}"
        with self._cond:
            call = Call(method, _decode_json_args(args), headers)
            self._calls.append(call)
            self._cond.notify_all()
            if self.on_call is not None:
                self.on_call(call)
            return self._answer(kind, name, method, args, body)

    def _answer(self, kind: str, name: str, method: str, args: dict[str, Any],
                body: bytes) -> Answer:
        """Slack's answer to a recorded call; called with the lock held."""
        if kind == "upload":
            self._uploads[name] = body
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, b"OK"
        if kind == "response":
            return self._json(200, {"ok": True})
        if kind != "api":
            return self._json(404, {"ok": False, "error": "not_found"})
        return self._json(200, self._respond(method, args))

    @staticmethod
    def _json(status: int, data: dict[str, Any], extra: dict[str, str] | None = None) -> Answer:
        headers = {"Content-Type": "application/json; charset=utf-8", **(extra or {})}
        return status, headers, json.dumps(data).encode("utf-8")

    def _respond(self, method: str, a: dict[str, Any]) -> dict[str, Any]:
        ok: dict[str, Any] = {"ok": True}
        if method == "auth.test":
            return ok | AUTH_TEST
        if method in ("chat.postMessage", "chat.postEphemeral", "chat.update"):
            ts = a.get("ts") if method == "chat.update" else self._next_ts()
            message: dict[str, Any] = {
                k: a[k] for k in ("text", "blocks", "attachments", "thread_ts") if k in a
            }
            message |= {"type": "message", "user": "UBOT", "bot_id": "BBOT", "ts": ts}
            extra = {"message_ts": ts} if method == "chat.postEphemeral" else {}
            return ok | {"channel": a.get("channel"), "ts": ts, "message": message} | extra
        if method in ("conversations.join", "conversations.info"):  # a public channel; the bot is in it
            channel = {"id": a.get("channel"), "is_channel": True, "is_private": False, "is_member": True}
            return ok | {"channel": channel}
        if method == "apps.connections.open":
            return ok | {"url": "wss://fake.slack.invalid/link"}
        if method == "conversations.open":
            users = str(a.get("users", "")).replace(",", "")
            return ok | {"channel": {"id": a.get("channel") or f"D{users}"}}
        if method in ("views.publish", "views.open", "views.update"):
            view = a.get("view") if isinstance(a.get("view"), dict) else {}
            view_id = a.get("view_id") or self._next_id("V")
            return ok | {"view": cast(dict[str, Any], view) | {"id": view_id, "hash": "h1"}}
        if method == "users.info":
            uid = str(a.get("user", ""))
            profile = {"display_name": uid.lower()}
            user = {"id": uid, "name": uid.lower(), "real_name": f"User {uid}", "profile": profile}
            return ok | {"user": user}
        if method == "files.getUploadURLExternal":
            file_id = self._next_id("F")
            return ok | {"upload_url": f"{self.root}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = a.get("files") if isinstance(a.get("files"), list) else []
            out = [{"id": f.get("id"), "title": f.get("title")} for f in cast(list[Any], files)]
            return ok | {"files": out}
        return {"ok": False, "error": "unknown_method"}
