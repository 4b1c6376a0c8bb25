"""`bedrock-bot serve` with one what-if change applied in-process, for bench_ack_latency.py's `--variant`.

Not shipped code and not a benchmark: it measures what a change to handlers/ would buy before anyone
makes it. The variant comes from BENCH_SERVE_VARIANT:

- `pool32`: Bolt's listener executor gets 32 threads instead of its default 5 (handlers/app.py would pass
  `listener_executor=ThreadPoolExecutor(32)` to `App`);
- `handoff`: the `/bedrock` listener acks and hands the answer to an executor of its own, so Bolt's
  5 listener threads are busy for microseconds per command (handlers/commands.py `register`);
- `inline`: `handoff`, and `App(process_before_response=True)`, so the listener (ack + hand-off) runs in
  the request thread and the 200 goes out as it returns, without Bolt's 10 ms polling for the ack. Only
  sound when every listener hands its work off the same way (handlers/approvals.py does not yet).

- `answers1`: one answer thread instead of one per core (at least 2).
- `switch5ms`: serve keeps Python's default GIL switch interval (5 ms) instead of 1 ms.
- `threads`: every answer on serve's answer threads, no answer processes (BOT_ANSWER_PROCESSES=0:
  what shipped before the processes, bbb96d9).

- `before`: 8fafb28's handlers (the baseline of issue 19): the `/bedrock` listener computes its answer
  in Bolt's listener thread, on a pool of 32, before it returns.

Usage (what the bench runs):  BENCH_SERVE_VARIANT=handoff python bench/serve_variant.py serve …
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slack_bolt.app.app as bolt_app
from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient

import handlers.app as app_module
import handlers.slash as commands
from bot.runtime import Services
from handlers.main import main


def _pool32() -> None:
    original = bolt_app.App.__init__

    def init(self: App, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("listener_executor", ThreadPoolExecutor(max_workers=32))
        original(self, *args, **kwargs)

    bolt_app.App.__init__ = init  # type: ignore[method-assign]


def _handoff() -> None:
    pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="answer")

    def register(app: App, services: Services, answers: object = None) -> None:
        @app.command("/bedrock")
        def bedrock(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
            ack()
            user, text = str(body.get("user_id", "")), str(body.get("text", ""))

            def work() -> None:
                reply_text, blocks = commands.answer(services, client, user, text)
                respond(text=reply_text, blocks=blocks, response_type="ephemeral")

            pool.submit(work)

    commands.register = register


def _inline() -> None:
    _handoff()
    original = bolt_app.App.__init__

    def init(self: App, *args: Any, **kwargs: Any) -> None:
        kwargs["process_before_response"] = True
        original(self, *args, **kwargs)

    bolt_app.App.__init__ = init  # type: ignore[method-assign]


def _before() -> None:
    def register(app: App, services: Services, answers: object = None) -> None:
        @app.command("/bedrock")
        def bedrock(ack: Ack, body: dict[str, Any], respond: Respond, client: WebClient) -> None:
            ack()
            text, blocks = commands.answer(services, client, str(body.get("user_id", "")),
                                           str(body.get("text", "")))
            respond(text=text, blocks=blocks, response_type="ephemeral")

    commands.register = register  # type: ignore[assignment]
    app_module.listener_pool = lambda: ThreadPoolExecutor(max_workers=32, thread_name_prefix="bolt")


def _switch5ms() -> None:
    import handlers.main as main_module
    main_module.SWITCH_INTERVAL = 0.005  # Python's default


def _answers1() -> None:
    from handlers import answers_pool
    original = answers_pool.answer_pool
    app_module.answer_pool = lambda workers=None: original(workers or 1)


def _threads() -> None:
    os.environ["BOT_ANSWER_PROCESSES"] = "0"


VARIANTS = {"pool32": _pool32, "handoff": _handoff, "inline": _inline, "before": _before,
            "switch5ms": _switch5ms, "answers1": _answers1, "threads": _threads}

if __name__ == "__main__":
    VARIANTS[os.environ["BENCH_SERVE_VARIANT"]]()
    sys.exit(main())
