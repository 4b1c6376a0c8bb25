"""One WSGI app: Slack at /slack/events, SNS at /sns, the gateway API at /v1/…, /healthz, /metrics."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text

from bot.runtime import Services
from handlers.gateway import PATHS as GATEWAY_PATHS
from handlers.gateway import Gateway

log = logging.getLogger(__name__)
ROUTES = ("/slack/events", "/sns", "/healthz", "/metrics", *GATEWAY_PATHS)
MAX_BODY = 1 << 20  # Slack payloads are far smaller; refuse anything bigger unread
StartResponse = Callable[..., Any]


class WsgiApp:
    def __init__(self, services: Services, bolt: App,
                 sns: Callable[[bytes], tuple[int, str]] | None = None,
                 gateway: Gateway | None = None) -> None:
        self.services = services
        self.bolt = bolt
        self.sns = sns
        self.gateway = gateway
        self.counts: Counter[str] = Counter()
        self.started = time.time()

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        # Known routes only: a scanner's random paths must not grow the metrics without bound.
        route = path if path in ROUTES else "other"
        self.counts[f"{method[:8]} {route}"] += 1
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
        if path in GATEWAY_PATHS:  # off (404) unless BOT_GATEWAY_TOKENS is set
            return self.gateway.wsgi(environ) if self.gateway else (404, {}, b"not found")
        if method != "POST" or path not in ("/slack/events", "/sns"):
            return 404, {"content-type": "text/plain"}, b"not found"
        length = _content_length(environ)
        if length is None:
            return 400, {"content-type": "text/plain"}, b"bad Content-Length"
        if length > MAX_BODY:
            return 413, {"content-type": "text/plain"}, b"request body too large"
        body = environ["wsgi.input"].read(length) if length else b""
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
        try:
            request = BoltRequest(body=body.decode("utf-8", "replace"),
                                  query=environ.get("QUERY_STRING", ""), headers=headers)
        except Exception:  # Bolt reads the body before it checks the signature
            return self.unreadable(body, headers, "Bolt could not parse it")
        resp = self.bolt.dispatch(request)
        if resp.status >= 500:
            # Bolt answers 500 when its own middleware, or a listener before ack(), fails on a
            # payload shape it cannot read (our listeners ack before they do any work): a bad
            # request, not a server error. Bolt has logged the details.
            return self.unreadable(body, headers, "Bolt could not handle its shape")
        out = {k: ", ".join(v) for k, v in resp.headers.items()}
        return resp.status, out, (resp.body or "").encode()

    def unreadable(self, body: bytes, headers: dict[str, str], why: str
                   ) -> tuple[int, dict[str, str], bytes]:
        """A Slack request we cannot read: 401 unless Slack signed it (DESIGN §7), else 400."""
        verifier = SignatureVerifier(self.services.settings.slack.signing_secret or "unset")
        if not verifier.is_valid(body, headers.get("x-slack-request-timestamp", ""),
                                 headers.get("x-slack-signature", "")):
            return 401, {"content-type": "application/json"}, b'{"error": "invalid request"}'
        log.warning("signed Slack request refused: %s (%d bytes)", why, len(body))
        return 400, {"content-type": "text/plain"}, b"unreadable Slack request"

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
        if self.gateway is not None:
            lines += self.gateway.metrics_lines()
        return "\n".join(lines) + "\n"


def _content_length(environ: dict[str, Any]) -> int | None:
    """The declared body length; None when it is not a non-negative integer."""
    raw = str(environ.get("CONTENT_LENGTH") or "0").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else None


_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            500: "Internal Server Error",
            503: "Service Unavailable"}
