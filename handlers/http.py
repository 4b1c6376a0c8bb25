"""The HTTP front door `serve` runs: a small path router in front of Bolt's WSGI adapter.

`POST /slack/events` goes to `slack_bolt.adapter.wsgi.SlackRequestHandler`, `POST /sns` to the
SNS endpoint, `POST /v1/quota/check` and `POST /v1/usage` to the gateway quota API
(handlers/gateway.py; 404 while it is off), `GET /healthz` answers 200 or 503 (database),
`GET /metrics` is prometheus_client's text format from a registry of this app's own (the
gateway's series included). Around Bolt the router keeps what Bolt does not: a body cap
checked before anything is read, 404/405, and no 500 for a Slack body Bolt cannot read.

Nothing unauthenticated reaches Bolt: a Slack request must carry a valid signature and not be
a replay (`handlers/slack_gate.py`) first, so Bolt never parses, or logs, a forged body. What
is refused before authentication (there, and SNS messages that do not verify) is logged in one
line, counted, and audited once per reason and minute (`handlers/refusals.py`).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app
from prometheus_client.process_collector import ProcessCollector
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from sqlalchemy import text

from bot.aws.sns import SnsRejected
from bot.db import reading
from bot.runtime import Services
from handlers.gateway import PATHS as GATEWAY_PATHS
from handlers.gateway import Gateway
from handlers.refusals import Refusals, sns_kind
from handlers.slack_gate import SlackGate
from handlers.sns import SnsEndpoint

log = logging.getLogger(__name__)
SLACK_PATH = "/slack/events"
# The one method each route answers; anything else on a known route is 405.
ROUTES = {SLACK_PATH: "POST", "/sns": "POST", "/healthz": "GET", "/metrics": "GET",
          **dict.fromkeys(GATEWAY_PATHS, "POST")}
MAX_BODY = 1 << 20  # Slack payloads are far smaller; refuse anything bigger unread
TEXT = "text/plain; charset=utf-8"
STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}
StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]
Answer = tuple[int, Headers, bytes]
SnsHandler = Callable[[bytes], tuple[int, str]]


class HttpMetrics:
    """The app's own registry (never prometheus_client's global one: two apps in one process,
    as in the tests, must not collide). Labels come from fixed sets only, so a scanner's
    random paths and methods cannot grow the series without bound."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bedrock_bot_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        started = time.time()
        uptime = Gauge("bedrock_bot_uptime_seconds", "Seconds since this app was built",
                       registry=self.registry)
        uptime.set_function(lambda: time.time() - started)
        ProcessCollector(registry=self.registry)  # memory, CPU, open files (Linux /proc)

    def count(self, method: str, route: str, status: int) -> None:
        known = method if method in ("GET", "POST", "HEAD", "PUT", "DELETE") else "other"
        self.requests.labels(known, route, str(status)).inc()


class WsgiApp:
    """The WSGI callable: route by path, check the method, cap the body, hand over."""

    def __init__(self, services: Services, bolt: App, sns: SnsHandler | None = None,
                 gateway: Gateway | None = None, now: Callable[[], float] = time.time) -> None:
        self.services = services
        self.slack = SlackRequestHandler(bolt, path=SLACK_PATH)
        self.sns = sns
        self.gateway = gateway
        self.metrics = HttpMetrics()
        self.refusals = Refusals(services, self.metrics.registry)
        self.gate = SlackGate(services, now)
        if gateway is not None:  # its counters and latency histograms, in the same /metrics
            self.metrics.registry.register(gateway)
        # prometheus_client's own WSGI app: it negotiates the format (text or OpenMetrics) and gzip.
        self.exporter = make_wsgi_app(self.metrics.registry)

    def __call__(self, environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        route = path if path in ROUTES else "other"
        try:
            status, headers, body = self.route(route, method, environ)
        except Exception:
            log.exception("request to %s failed", route)
            status, headers, body = _plain(500, "internal error")
        self.metrics.count(method, route, status)
        start(STATUS_LINES.get(status) or f"{status} {HTTPStatus(status).phrase}", headers)
        self.refusals.flush()  # the audit rows of refusals whose minute is over, if any
        return [body]

    def close(self) -> None:
        """The server stops: audit what refusals are still only counted."""
        self.refusals.flush(force=True)

    def route(self, route: str, method: str, environ: dict[str, Any]) -> Answer:
        allowed = ROUTES.get(route)
        if allowed is None:
            return _plain(404, "not found")
        if route in GATEWAY_PATHS:  # off (404) unless BOT_GATEWAY_TOKENS is set; it answers 405 itself
            if self.gateway is None:
                return _plain(404, "not found")
            code, fields, payload = self.gateway.wsgi(environ)
            return code, list(fields.items()), payload
        if method != allowed:
            status, headers, body = _plain(405, "method not allowed")
            return status, [*headers, ("allow", allowed)], body
        if route == "/healthz":
            return self.health()
        if route == "/metrics":
            return _call(self.exporter, environ)
        if route == "/sns" and self.sns is None:
            return _plain(404, "SNS is not enabled")
        length = _content_length(environ)
        if length is None:
            return _plain(400, "bad Content-Length")
        if length > MAX_BODY:
            return _plain(413, "request body too large")
        body = environ["wsgi.input"].read(length) if length else b""
        if self.sns is not None and route == "/sns":
            return self.to_sns(self.sns, body, environ)
        refused = self.gate.check(body, environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP"),
                                  environ.get("HTTP_X_SLACK_SIGNATURE"))
        if refused is not None:
            self.refusals.refuse("slack", refused.reason, refused.detail, len(body), _source(environ))
            return _plain(401, f"invalid request: {refused.detail}")
        return self.to_bolt(body, environ)

    def to_sns(self, sns: SnsHandler, body: bytes, environ: dict[str, Any]) -> Answer:
        """The SNS endpoint, with its refusals counted here rather than audited one by one."""
        if not isinstance(sns, SnsEndpoint):
            return _plain(*sns(body))
        try:
            envelope = sns.verifier.verify(body)
        except SnsRejected as exc:
            self.refusals.refuse("sns", sns_kind(exc.reason), exc.reason, len(body), _source(environ))
            return _plain(403, exc.reason)
        return _plain(*sns.act(envelope))

    def to_bolt(self, body: bytes, environ: dict[str, Any]) -> Answer:
        """Bolt's adapter, on the body already read (so the cap held and it can be re-checked)."""
        inner = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
        try:
            status, headers, out = _call(self.slack, inner)
        except Exception:  # Bolt parses the body before it checks the signature
            return self.unreadable(body, environ, "Bolt could not parse it")
        if status >= 500:
            # Bolt answers 500 when its own middleware, or a listener before ack(), fails on a
            # payload shape it cannot read (our listeners ack before they do any work): a bad
            # request, not a server error. The Bolt error handler has logged and audited it.
            return self.unreadable(body, environ, "Bolt could not handle its shape")
        return status, headers, out

    def unreadable(self, body: bytes, environ: dict[str, Any], why: str) -> Answer:
        """A signed Slack request we cannot read (the gate let only signed ones through): 400."""
        log.warning("signed Slack request refused: %s (%d bytes from %s)", why, len(body),
                    _source(environ))
        return _plain(400, "unreadable Slack request")

    def health(self) -> Answer:
        try:
            with reading(), self.services.db.engine.connect() as conn:
                conn.execute(text("select 1"))
            return 200, [("content-type", "application/json")], b'{"status":"ok"}'
        except Exception as exc:
            body = json.dumps({"status": "database unavailable", "error": type(exc).__name__})
            return 503, [("content-type", "application/json")], body.encode()


def _call(app: Callable[[dict[str, Any], Any], Iterable[bytes]], environ: dict[str, Any]) -> Answer:
    """Run an inner WSGI app and keep its answer, so the router can count or replace it."""
    started = _Started()
    body = b"".join(app(environ, started))
    return started.status, started.headers, body


class _Started:
    """A start_response that keeps what an inner app answered."""

    def __init__(self) -> None:
        self.status: int = 500
        self.headers: Headers = []

    def __call__(self, status: str, headers: Headers, exc_info: Any = None, /
                 ) -> Callable[[bytes], object]:
        self.status, self.headers = int(status.split()[0]), list(headers)
        return _no_write


def _no_write(data: bytes) -> object:
    raise RuntimeError("the inner apps return their body; they never write")


def _plain(status: int, message: str) -> Answer:
    return status, [("content-type", TEXT)], message.encode()


def _source(environ: dict[str, Any]) -> str:
    """The peer address for the log (escaped where it is logged); never a forwarded header."""
    return str(environ.get("REMOTE_ADDR") or "unknown")


def _content_length(environ: dict[str, Any]) -> int | None:
    """The declared body length; None when it is not a non-negative integer."""
    raw = str(environ.get("CONTENT_LENGTH") or "0").strip()
    return int(raw) if raw.isascii() and raw.isdigit() else None
