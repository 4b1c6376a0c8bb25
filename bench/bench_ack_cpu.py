"""CPU time of one `/bedrock` ack inside serve's WSGI app: signature, replay claim, Bolt's dispatch and
the hand-off of the answer (dropped here), with no HTTP server, clients or answers around it.

At pace `ack` in bench_ack_latency.py serve is saturated, so an ack's latency is the CPU of the acks
queued ahead of it: this is the figure that sets it. `uncached` is serve_variant.py's replay claim as
it was before 2026-12-04 (an ON CONFLICT insert SQLAlchemy cannot cache, compiled for every ack),
measured in the same run, rounds interleaved. Run from the repo root:

    .venv/bin/python bench/bench_ack_cpu.py [--db both|sqlite|postgres] [--acks 2000] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_variant
from bench.common import Figures, databases, git_revision, load_average, machine, table
from bot.migrate import upgrade
from bot.services import replay
from demo.slack_standin import SlackStandIn
from tests.fakes.signing import signed_headers, slash_command_body

SECRET = "bench-signing-secret"
ADMIN = "UADMIN0001"


class Dropped(Executor):
    """The answer pool, doing nothing: only the ack's own work is measured."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(None)
        return done


def wsgi_app(url: str, slack: SlackStandIn) -> Any:
    os.environ.update({"DATABASE_URL": url, "SLACK_BOT_TOKEN": "xoxb-bench", "SLACK_SIGNING_SECRET": SECRET,
                       "SLACK_API_URL": slack.url, "BOT_ADMINS": ADMIN, "BOT_PROFILES_BACKEND": "local",
                       "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    from bot.config import load_settings
    from bot.runtime import build_services
    from handlers.server import build_wsgi
    return build_wsgi(build_services(load_settings(env_file=None)), answers=Dropped())


def environ(i: int, text: str) -> dict[str, Any]:
    body = slash_command_body(text, user_id=ADMIN, user_name="admin", channel_id="C0BENCH",
                              response_url=f"http://127.0.0.1:9/response/{i}").encode()
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/slack/events", "QUERY_STRING": "",
           "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
           "CONTENT_TYPE": "application/x-www-form-urlencoded", "wsgi.input": io.BytesIO(body)}
    for key, value in signed_headers(SECRET, body).items():
        env["HTTP_" + key.upper().replace("-", "_")] = value
    return env


def acks(app: Any, first: int, n: int, text: str) -> float:
    """CPU ms per ack over `n` acks (the signed bodies are built before the clock starts)."""
    envs = [environ(i, text) for i in range(first, first + n)]
    statuses: list[str] = []
    began = time.process_time()
    for env in envs:
        app(env, lambda status, headers: statuses.append(status))
    spent = time.process_time() - began
    bad = [s for s in statuses if not s.startswith("200")]
    if bad:
        raise SystemExit(f"an ack was not 200: {bad[0]}")
    return spent / n * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("--acks", type=int, default=2000, help="acks per round and code")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 acks, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.acks, args.rounds = 200, 1
    print(f"machine: {machine()}; revision {git_revision()}")
    print(f"{args.acks:,} signed `/bedrock usage` acks per round and code, {args.rounds} rounds interleaved, "
          "one thread, in process\n")
    shipped_claim, out, rows = replay.claim_many, Figures(), []
    with tempfile.TemporaryDirectory(prefix="bench-ack-cpu-") as tmp, SlackStandIn() as slack:
        for ctx in databases(args.db, tmp, "bench_ack_cpu"):
            with ctx as db:
                upgrade(db.url)
                app, n = wsgi_app(db.url, slack), 0
                acks(app, -args.acks, 200, "usage")  # warm: Bolt's auth.test, pools, caches
                per: dict[str, list[float]] = {"uncached": [], "shipped": []}
                for _ in range(args.rounds):
                    for code in per:
                        if code == "uncached":
                            serve_variant.VARIANTS["uncached"]()
                        per[code].append(acks(app, n, args.acks, "usage"))
                        replay.claim_many = shipped_claim  # type: ignore[assignment]
                        n += args.acks
                before, after = statistics.median(per["uncached"]), statistics.median(per["shipped"])
                rows.append((db.name, f"{before:.3f} ms", f"{after:.3f} ms", f"{after / before:.2f}"))
                out.add(f"{db.name}: CPU of one ack in serve's WSGI app (uncached claim → shipped)",
                        f"{before:.3f} → {after:.3f} ms")
    print(table(("database", "uncached claim (before), median", "shipped, median", "shipped ÷ before"), rows))
    print(f"\nat the end: {load_average()}")
    return out.emit()


if __name__ == "__main__":
    sys.exit(main())
