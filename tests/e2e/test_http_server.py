"""The WSGI app behind `serve`, over real HTTP (waitress), with signed Slack requests."""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.clock import FixedClock
from bot.db import Database
from handlers.http import MAX_BODY, WsgiApp
from tests.fakes.signing import signed_headers, slash_command_body
from tests.harness import ADMIN, SECRET, Harness, running_bot, waitress_serving


@pytest.fixture
def server(sqlite_db: Database, clock: FixedClock) -> Iterator[tuple[str, Harness]]:
    with running_bot(sqlite_db, clock) as bot, waitress_serving(WsgiApp(bot.services, bot.app)) as port:
        yield f"http://127.0.0.1:{port}", bot


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    return _request(url, "POST", body, headers)[0]


def _request(url: str, method: str, body: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status), {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), {k.lower(): v for k, v in err.headers.items()}, err.read()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _requests(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], method: str, route: str,
              status: int) -> float:
    key = (("method", method), ("route", route), ("status", str(status)))
    return samples.get(("bedrock_bot_http_requests_total", key), 0.0)


def test_healthz_and_metrics(server: tuple[str, Harness]) -> None:
    base, _ = server
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
        assert resp.status == 200 and b'"ok"' in resp.read()
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        assert b"bedrock_bot_http_requests_total" in resp.read()


def test_signed_command_over_http(server: tuple[str, Harness]) -> None:
    base, bot = server
    body = slash_command_body("help", user_id=ADMIN, response_url=bot.slack.response_url("h"))
    assert _post(f"{base}/slack/events", body.encode(), signed_headers(SECRET, body)) == 200
    reply = bot.slack.wait_for("response_url:h")[0].args
    assert "/bedrock commands" in reply["text"]


def test_forged_and_oversized_requests(server: tuple[str, Harness]) -> None:
    base, bot = server
    body = slash_command_body("help", user_id=ADMIN)
    assert _post(f"{base}/slack/events", body.encode(), signed_headers("nope", body)) == 401
    big = b"x" * (MAX_BODY + 1)
    assert _post(f"{base}/slack/events", big, signed_headers(SECRET, big)) == 413
    assert _post(f"{base}/elsewhere", b"", {}) == 404
    assert bot.slack.calls("response_url:h") == []


def test_each_route_answers_one_method_and_unknown_paths_are_404(server: tuple[str, Harness]) -> None:
    base, bot = server
    for path, allowed in (("/slack/events", "POST"), ("/sns", "POST"), ("/healthz", "GET"),
                          ("/metrics", "GET")):
        wrong = "GET" if allowed == "POST" else "POST"
        status, headers, _ = _request(f"{base}{path}", wrong, b"" if wrong == "POST" else None)
        assert (status, headers.get("allow")) == (405, allowed), path
    assert _request(f"{base}/slack/events/../healthz", "GET")[0] == 404
    assert _request(f"{base}/", "GET")[0] == 404
    assert _post(f"{base}/sns", b"{}", {"Content-Type": "text/plain"}) == 404  # no SNS in this app
    assert bot.slack.calls() == []


def test_metrics_count_requests_by_method_route_and_status(server: tuple[str, Harness]) -> None:
    base, _ = server
    for _ in range(2):
        _request(f"{base}/healthz", "GET")
    _request(f"{base}/wp-login.php", "GET")
    _request(f"{base}/healthz", "DELETE")
    body = slash_command_body("help", user_id=ADMIN)
    _post(f"{base}/slack/events", body.encode(), signed_headers("forged", body))
    status, headers, page = _request(f"{base}/metrics", "GET")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _samples(page.decode())
    assert _requests(samples, "GET", "/healthz", 200) == 2
    assert _requests(samples, "GET", "other", 404) == 1  # random paths share one series
    assert _requests(samples, "DELETE", "/healthz", 405) == 1
    assert _requests(samples, "POST", "/slack/events", 401) == 1
    assert samples[("bedrock_bot_uptime_seconds", ())] >= 0
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert not any("wp-login" in str(key) for key in samples)
    # prometheus_client negotiates the format: a scraper asking for OpenMetrics gets it
    status, headers, page = _request(f"{base}/metrics", "GET",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["content-type"].startswith("application/openmetrics-text") and page.endswith(b"# EOF\n")


def test_two_apps_in_one_process_keep_their_own_metrics(server: tuple[str, Harness]) -> None:
    """Each app has its own registry: a second app neither collides with the first nor sees its counts."""
    base, bot = server
    _request(f"{base}/healthz", "GET")
    other = WsgiApp(bot.services, bot.app)
    assert _requests(_samples(_wsgi_get(other, "/metrics")), "GET", "/healthz", 200) == 0
    _wsgi_get(other, "/healthz")
    assert _requests(_samples(_wsgi_get(other, "/metrics")), "GET", "/healthz", 200) == 1
    assert _requests(_samples(_request(f"{base}/metrics", "GET")[2].decode()), "GET", "/healthz", 200) == 1


def _wsgi_get(app: WsgiApp, path: str) -> str:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.input": io.BytesIO(b"")}
    return b"".join(app(environ, cast(Any, lambda status, headers: None))).decode()
