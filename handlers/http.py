"""One WSGI app: Slack at /slack/events, SNS at /sns, /healthz and /metrics."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App
from slack_bolt.request import BoltRequest
from sqlalchemy import text

from bot.runtime import Services

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # Slack payloads are far smaller; refuse anything bigger unread
StartResponse = Callable[..., Any]


class WsgiApp:
    def __init__(self, services: Services, bolt: App,
                 sns: Callable[[bytes], tuple[int, str]] | None = None) -> None:
        self.services = services
        self.bolt = bolt
        self.sns = sns
        self.counts: Counter[str] = Counter()
        self.started = time.time()

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        self.counts[f"{method} {path}"] += 1
        try:
            status, headers, body = self.route(path, method, environ)
        except Exception:
            log.exception("request to %s failed", path)
            status, headers, body = 500, {"content-type": "text/plain"}, b"internal error"
        self.counts[f"status {status}"] += 1
        start(f"{status} {_REASONS.get(status, 'OK')}", list(headers.items()))
        return [body]

    def route(self, path: str, method: str, environ: dict[str, Any]
              ) -> tuple[int, dict[str, str], bytes]:
        if path == "/healthz" and method == "GET":
            return self.health()
        if path == "/metrics" and method == "GET":
            return 200, {"content-type": "text/plain; version=0.0.4"}, self.metrics().encode()
        if method != "POST" or path not in ("/slack/events", "/sns"):
            return 404, {"content-type": "text/plain"}, b"not found"
        body = _read_body(environ)
        if body is None:
            return 413, {"content-type": "text/plain"}, b"request body too large"
        if path == "/sns":
            if self.sns is None:
                return 404, {"content-type": "text/plain"}, b"SNS is not enabled"
            status, msg = self.sns(body)
            return status, {"content-type": "text/plain"}, msg.encode()
        return self.slack(body, environ)

    def slack(self, body: bytes, environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        resp = self.bolt.dispatch(BoltRequest(body=body.decode("utf-8", "replace"),
                                              query=environ.get("QUERY_STRING", ""),
                                              headers=headers))
        out = {k: ", ".join(v) for k, v in resp.headers.items()}
        return resp.status, out, (resp.body or "").encode()

    def health(self) -> tuple[int, dict[str, str], bytes]:
        try:
            with self.services.db.engine.connect() as conn:
                conn.execute(text("select 1"))
            return 200, {"content-type": "application/json"}, b'{"status":"ok"}'
        except Exception as exc:
            body = json.dumps({"status": "database unavailable", "error": type(exc).__name__})
            return 503, {"content-type": "application/json"}, body.encode()

    def metrics(self) -> str:
        lines = [f"bedrock_bot_uptime_seconds {time.time() - self.started:.0f}"]
        for key, n in sorted(self.counts.items()):
            label = key.replace('"', "")
            lines.append(f'bedrock_bot_http_requests_total{{route="{label}"}} {n}')
        return "\n".join(lines) + "\n"


def _read_body(environ: dict[str, Any]) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length > MAX_BODY:
        return None
    return environ["wsgi.input"].read(length) if length else b""


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}
