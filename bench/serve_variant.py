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
- `uncached`: the replay claim as it was before 2026-12-04 evening, an `insert(...).on_conflict_do_nothing()`
  that SQLAlchemy cannot cache, so it is compiled for every ack.
- `nice19`: answer processes at nice 19 (CFS weight 15) instead of 10 (110).
- `idle`: answer processes under SCHED_IDLE instead of nice 10, so a waking ack thread preempts a
  worker at once instead of at the end of the worker's slice.
- `trace`: the shipped code, with each Slack request's way through serve stamped on CLOCK_MONOTONIC
  (accepted, read and queued for a waitress thread, taken by one, signature and replay claim done,
  answered) in the file BENCH_TRACE names, one line per request; bench_ack_latency.py joins them
  with its client-side times to say where the slowest acks spent their time.

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


def _uncached() -> None:
    from collections.abc import Sequence
    from datetime import datetime

    from sqlalchemy import Connection
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    from bot.models import SlackSignature
    from bot.services import replay

    claim = {name: insert(SlackSignature).on_conflict_do_nothing().returning(SlackSignature.digest)
             for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))}

    def claim_many(conn: Connection, claims: Sequence[tuple[str, datetime]]) -> list[bool]:
        keys = [replay.digest(signature) for signature, _ in claims]
        rows: dict[str, datetime] = {}
        for key, (_, expires_at) in zip(keys, claims, strict=True):
            rows.setdefault(key, expires_at)
        params = [{"digest": k, "expires_at": e} for k, e in rows.items()]
        result = conn.execute(claim[conn.dialect.name], params)
        new = {str(row[0]) for row in result}
        answers = []
        for key in keys:
            answers.append(key in new)
            new.discard(key)
        return answers

    replay.claim_many = claim_many  # type: ignore[assignment]


def _nice19() -> None:
    from handlers import answer_procs
    answer_procs.NICENESS = 19
    answer_procs.AnswerProcesses.__init__.__defaults__ = (lambda: None, 19)  # type: ignore[attr-defined]


def _idle() -> None:
    from handlers.answer_procs import AnswerProcesses

    class Idle(AnswerProcesses):
        def _child(self, *args: Any) -> None:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            super()._child(*args)

    commands.AnswerProcesses = Idle  # type: ignore[misc]


def _trace() -> None:
    import gc
    import io
    import threading
    import time
    from urllib.parse import parse_qs

    from waitress.channel import HTTPChannel
    from waitress.task import ThreadedTaskDispatcher

    from handlers import slack_gate
    from handlers.http import WsgiApp
    from handlers.slack_gate import SlackGate

    out = open(os.environ["BENCH_TRACE"], "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    lock, local = threading.Lock(), threading.local()
    channel_init, add_task = HTTPChannel.__init__, ThreadedTaskDispatcher.add_task
    check, call, purge = SlackGate.check, WsgiApp.__call__, slack_gate.replay.purge

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        self.bench_accepted = time.perf_counter()
        channel_init(self, *args, **kwargs)

    def queued(self: Any, task: Any) -> None:
        task.bench_queued = time.perf_counter()
        add_task(self, task)

    def gate(self: Any, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return check(self, *args)
        finally:
            local.gate = (began, time.perf_counter())

    def purging(*args: Any) -> int:
        began = time.perf_counter()
        try:
            return purge(*args)
        finally:
            local.purge = time.perf_counter() - began

    def wsgi(self: Any, environ: dict[str, Any], start: Any) -> Any:
        entered = time.perf_counter()
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        local.gate, local.purge = (entered, entered), 0.0
        try:
            return call(self, environ, start)
        finally:
            done = time.perf_counter()
            url = (parse_qs(body.decode(errors="replace")).get("response_url") or [""])[0]
            channel = getattr(environ.get("waitress.client_disconnected"), "__self__", None)
            stamps = (getattr(channel, "bench_accepted", 0.0), getattr(channel, "bench_queued", 0.0),
                      entered, *local.gate, done, local.purge)
            with lock:
                out.write("\t".join([url.rsplit("/", 1)[-1], *(repr(t) for t in stamps)]) + "\n")

    def collected(phase: str, info: dict[str, int]) -> None:  # the collector's pauses, as lines of their own
        if phase == "start":
            local.gc_began = time.perf_counter()
        elif hasattr(local, "gc_began"):
            with lock:
                out.write(f"gc{info['generation']}\t{local.gc_began!r}\t{time.perf_counter()!r}\n")

    gc.callbacks.append(collected)
    HTTPChannel.__init__ = init  # type: ignore[method-assign]
    ThreadedTaskDispatcher.add_task = queued  # type: ignore[method-assign]
    SlackGate.check = gate  # type: ignore[method-assign]
    slack_gate.replay.purge = purging  # type: ignore[attr-defined]
    WsgiApp.__call__ = wsgi  # type: ignore[method-assign]


VARIANTS = {"pool32": _pool32, "handoff": _handoff, "inline": _inline, "before": _before,
            "switch5ms": _switch5ms, "answers1": _answers1, "threads": _threads,
            "trace": _trace, "idle": _idle,
            "uncached": _uncached, "nice19": _nice19}

if __name__ == "__main__":
    VARIANTS[os.environ["BENCH_SERVE_VARIANT"]]()
    sys.exit(main())
