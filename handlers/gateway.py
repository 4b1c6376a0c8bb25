"""The gateway quota API on the serve port: `POST /v1/quota/check` and `POST /v1/usage`.

`Gateway.handle(method, path, headers, body)` is the whole endpoint (auth, parse, decide,
render); `Gateway.wsgi(environ)` reads a WSGI request into it, so any router can mount it.
Off (404) while `BOT_GATEWAY_TOKENS` is empty. Bad bearer tokens answer 401 and are audited as
a count: one `gateway.unauthorized` row per reason per minute, plus a metric counter.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy.exc import DBAPIError

from bot.errors import BadInput
from bot.gateway_json import MAX_BODY, dumps, error, parse_check, parse_usage
from bot.runtime import Services
from bot.services import audit
from bot.services.quota import Decision, QuotaBook

log = logging.getLogger(__name__)
CHECK, USAGE = "/v1/quota/check", "/v1/usage"
PATHS = (CHECK, USAGE)
JSON = {"content-type": "application/json"}
Response = tuple[int, dict[str, str], bytes]
# Server-side latency buckets for /metrics (seconds): the target is p99 <= 5 ms.
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class UnauthorizedLog:
    """Counts refused bearer tokens per (reason, minute) and audits each count once, when its
    minute is over (a timer, or the next request, writes it) — never one row per request."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.pending: Counter[tuple[str, datetime]] = Counter()
        self.total: Counter[str] = Counter()
        self.lock = threading.Lock()

    def count(self, reason: str, path: str) -> None:
        now = self.services.clock()
        window = now.replace(second=0, microsecond=0)
        with self.lock:
            first = not self.pending
            self.pending[(reason, window)] += 1
            self.total[reason] += 1
        if first:
            delay = (window + timedelta(minutes=1) - now).total_seconds() + 1
            timer = threading.Timer(delay, self.flush)
            timer.daemon = True
            timer.start()

    def flush(self, force: bool = False) -> int:
        """Audit every finished minute (every minute with `force`); returns rows written."""
        now = self.services.clock()
        with self.lock:
            due = {k: n for k, n in self.pending.items()
                   if force or k[1] + timedelta(minutes=1) <= now}
            for k in due:
                del self.pending[k]
        if not due:
            return 0
        try:
            with self.services.db.session_scope() as s:
                for (reason, window), n in sorted(due.items(), key=lambda kv: (kv[0][1], kv[0][0])):
                    audit.record(s, self.services.clock, "gateway:api", "gateway.unauthorized", "/v1",
                                 {"reason": reason, "minute": window.isoformat(), "count": n},
                                 outcome="denied")
        except DBAPIError:
            log.warning("could not audit %d refused gateway requests", sum(due.values()))
            with self.lock:
                self.pending.update(due)
            return 0
        return len(due)


class Gateway:
    def __init__(self, services: Services, book: QuotaBook | None = None) -> None:
        bot = services.settings.bot
        self.tokens = [t.encode() for t in bot.gateway_tokens]
        self.book = book or QuotaBook(services.db, services.clock, services.prices, services.tz,
                                      services.week_start,
                                      hold=timedelta(seconds=bot.gateway_reservation_seconds))
        self.refused = UnauthorizedLog(services)
        self.counts: Counter[str] = Counter()
        self.latency: dict[str, list[int]] = {p: [0] * (len(BUCKETS) + 1) for p in PATHS}
        self.latency_sum: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    # -- HTTP ------------------------------------------------------------------------------

    def wsgi(self, environ: dict[str, Any]) -> Response:
        """Read a WSGI request (bounded body) and handle it."""
        raw = str(environ.get("CONTENT_LENGTH") or "0").strip()
        if not (raw.isascii() and raw.isdigit()):
            return 400, JSON, error("bad Content-Length")
        if int(raw) > MAX_BODY:
            return 413, JSON, error(f"body over {MAX_BODY} bytes")
        body = environ["wsgi.input"].read(int(raw)) if int(raw) else b""
        auth = str(environ.get("HTTP_AUTHORIZATION", ""))
        return self.handle(environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""),
                           {"authorization": auth}, body)

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Response:
        if not self.enabled or path not in PATHS:
            return 404, {"content-type": "text/plain"}, b"not found"
        if self.refused.pending:  # a finished minute of refusals not yet audited (the timer's backup)
            self.refused.flush()
        if method != "POST":
            return 405, {**JSON, "allow": "POST"}, error("use POST")
        why = self._unauthorized(headers.get("authorization", ""))
        if why:
            self.refused.count(why, path)
            return 401, {**JSON, "www-authenticate": 'Bearer realm="bedrock-bot"'}, error(
                "a valid Authorization: Bearer token is required")
        started = time.perf_counter()
        try:
            status, out = self._check(body) if path == CHECK else self._usage(body)
        except BadInput as exc:
            status, out = 400, error(str(exc))
        except DBAPIError:
            log.warning("gateway %s: database unavailable", path, exc_info=True)
            status, out = 503, error("database unavailable")
        self._observe(path, status, time.perf_counter() - started)
        return status, dict(JSON), out

    def _unauthorized(self, header: str) -> str | None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "missing"
        given = token.strip().encode()
        ok = False
        for known in self.tokens:  # every token compared, in constant time each
            ok |= hmac.compare_digest(given, known)
        return None if ok else "wrong"

    def _check(self, body: bytes) -> tuple[int, bytes]:
        decision = self.book.check(parse_check(body))
        self.counts["check allowed" if decision.allowed else "check denied"] += 1
        return 200, dumps(render_decision(decision))

    def _usage(self, body: bytes) -> tuple[int, bytes]:
        done = self.book.usage(parse_usage(body))
        self.counts["usage duplicate" if done.duplicate else "usage counted"] += 1
        return 202, dumps({"accepted": True, "request_id": done.request_id, "duplicate": done.duplicate,
                           "counted_by": done.counted_by, "reservation": done.reservation})

    # -- metrics ---------------------------------------------------------------------------

    def _observe(self, path: str, status: int, seconds: float) -> None:
        self.counts[f"{path} {status}"] += 1
        i = next((n for n, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
        self.latency[path][i] += 1
        self.latency_sum[path] += int(seconds * 1e6)

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: the WSGI router registers the gateway in its
        own registry, so these series appear on /metrics next to the HTTP ones."""
        refused = CounterMetricFamily("bedrock_bot_gateway_unauthorized",
                                      "Gateway requests refused for their bearer token", labels=["reason"])
        for reason, n in sorted(self.refused.total.items()):
            refused.add_metric([reason], n)
        events = CounterMetricFamily("bedrock_bot_gateway_events",
                                     "Gateway checks and usage reports, by outcome", labels=["event"])
        for event, n in sorted(self.counts.items()):
            events.add_metric([event], n)
        latency = HistogramMetricFamily("bedrock_bot_gateway_seconds",
                                        "Gateway answer time in the process", labels=["path"])
        for path in PATHS:
            running, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), list(self.latency[path]), strict=True):
                running += n
                buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
            latency.add_metric([path], buckets, self.latency_sum[path] / 1e6)
        yield from (refused, events, latency)


def render_decision(d: Decision) -> dict[str, Any]:
    return {
        "allowed": d.allowed, "subject": d.subject, "reason": d.reason, "reservation": d.reservation,
        "expires_at": d.expires_at.isoformat() if d.expires_at else None,
        "limits": [{"owner": s.rule.owner, "window": s.rule.window, "metric": s.rule.metric,
                    "unit": _unit(s.rule.metric), "used": s.used, "reserved": s.reserved,
                    "limit": s.rule.amount, "remaining": s.remaining, "action": s.rule.action,
                    "suspended_until": s.rule.suspended_until.isoformat() if s.rule.suspended_until else None,
                    "resets_at": s.rule.resets_at.isoformat() if s.rule.resets_at else None}
                   for s in d.limits],
    }


def _unit(metric: str) -> str:
    return "micro_usd" if metric == "cost_usd" else ("requests" if metric == "requests" else "tokens")
