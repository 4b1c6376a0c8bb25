"""Stopping ``serve`` and ``socket`` on SIGTERM or SIGINT (``docker stop``, an ECS deploy, Ctrl-C).

In a container the bot is PID 1, and the kernel applies no default action to a signal PID 1
has no handler for: without this module SIGTERM did nothing, ``docker stop`` ended in SIGKILL,
and the scheduler lease stayed taken for its whole TTL. On the first signal:

1. the front stops taking requests: waitress's loop ends (requests being answered get its
   5 s) and its listening socket closes; Socket Mode closes its websocket;
2. the SQS poller is told to stop (a message is deleted only after its commit: one cut short
   is delivered again and deduplicated on ``MessageId``), and so is the usage-stream reader
   (bot/flows/usage_stream_loop.py), which gets ``STREAM_GRACE`` to end its page: a page cut
   short is not committed and the next leader reads it again from the checkpoint;
3. the scheduler starts no new job, and running jobs get up to ``JOB_GRACE`` to finish;
4. the scheduler lease is released, so another replica takes over at its next heartbeat
   instead of after the TTL;
5. the process exits 0.

A watchdog ends the process ``STOP_WITHIN`` seconds after the signal whatever still runs
(a job past its grace, a slash command still calling AWS): every job is written to survive
being cut short — plan in the database, call AWS, record; a digest claim goes stale and is
retried; ``reconcile`` repairs drift. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bot.services import leases
from jobs.scheduler import LEASE_NAME

log = logging.getLogger(__name__)
STOP_WITHIN = 10.0  # seconds from the signal to exit (docker stop waits 10 s, ECS 30 s)
JOB_GRACE = 6.0  # of those, what running jobs get before their lease is released anyway
POLLER_GRACE = 1.0
STREAM_GRACE = 2.0  # the usage-stream reader: one GetRecords and one commit at most


class Stopping(SystemExit):
    """Raised in the main thread by the first SIGTERM/SIGINT: ends waitress's loop (which
    catches SystemExit) or Socket Mode's wait."""


class GracefulStop:
    def __init__(self, within: float = STOP_WITHIN, job_grace: float = JOB_GRACE,
                 exit_now: Callable[[int], Any] = os._exit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.within = within
        self.job_grace = job_grace
        self.exit_now = exit_now
        self.clock = clock
        self.signum: int | None = None
        self.deadline: float | None = None
        self.port_file: Path | None = None
        self._finished = False

    def install(self) -> GracefulStop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("%s again: exiting now", name)
            _flush_logs()
            self.exit_now(128 + signum)
            return
        self.signum = signum
        self.deadline = self.clock() + self.within
        log.info("%s: stopping (at most %.0f s)", name, self.within)
        watchdog = threading.Timer(self.within, self._expired)
        watchdog.daemon = True
        watchdog.start()
        raise Stopping(0)

    def _expired(self) -> None:
        busy = [t.name for t in threading.enumerate() if t is not threading.current_thread()
                and not t.daemon and t is not threading.main_thread()]
        log.error("still stopping %.0f s after the signal: exiting; abandoned: %s", self.within,
                  ", ".join(busy) or "nothing but the main thread")
        _flush_logs()
        self.exit_now(1)

    def remaining(self) -> float:
        return self.within if self.deadline is None else max(0.0, self.deadline - self.clock())

    def announce_port(self, path: str | None, port: int) -> None:
        """Write the port serve listens on where the image's HEALTHCHECK looks (BOT_PORT_FILE)."""
        if not path:
            return
        self.port_file = Path(path)
        self.port_file.write_text(f"{port}\n")

    def finish(self, front: Callable[[], Any] | None, background: Any) -> None:
        """Steps 1–4 (idempotent): close the front, stop the poller and the scheduler, free the lease."""
        if self._finished:
            return
        self._finished = True
        _quietly("closing the front", front)
        if self.port_file is not None:
            self.port_file.unlink(missing_ok=True)
        background.stop.set()  # the SQS poller and the usage-stream reader stop at their next wait
        stream = getattr(background, "stream_thread", None)
        if stream is not None:  # its page in flight commits (fenced) or is read again by the next leader
            stream.join(timeout=min(STREAM_GRACE, self.remaining()))
        runner = background.runner
        if runner is not None:
            done = threading.Thread(target=runner.shutdown, kwargs={"wait": True}, name="scheduler-stop",
                                    daemon=True)
            done.start()
            done.join(timeout=min(self.job_grace, max(0.0, self.remaining() - 1.0)))
            if done.is_alive():  # a job is still running: it will be cut short at exit
                log.warning("jobs still running after %.0f s; releasing the lease and leaving them",
                            self.job_grace)
                release_lease(background.services, runner.holder)
        if background.thread is not None:
            background.thread.join(timeout=min(POLLER_GRACE, self.remaining()))
        log.info("stopped")


def release_lease(services: Any, holder: str) -> None:
    try:
        with services.db.session_scope() as session:
            leases.release(session, LEASE_NAME, holder)
    except Exception:
        log.exception("could not release the scheduler lease (%s)", holder)


def _quietly(what: str, step: Callable[[], Any] | None) -> None:
    if step is None:
        return
    try:
        step()
    except Exception:
        log.exception("while %s", what)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a log handler that cannot flush must not stop the exit
            continue
