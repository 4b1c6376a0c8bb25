"""Answers to read-only `/bedrock` commands in worker processes forked at start-up (issue 19).

Listeners ack in the request thread and hand the answer off. On answer *threads* an ack still
shared the GIL with every answer computing beside it: a `usage` phase acked twice as slowly as
a `help` phase although nothing on the ack path had changed. Worker processes have their own
interpreters, and they run at a lower CPU priority (`niceness`), so the kernel lets an ack's
thread preempt them the moment it is runnable.

The workers are forked by `start()` before the process has any other thread (a fork copies only
the calling thread, so a lock another thread held would stay held in the child forever) and after
`gc.freeze()`, so the child shares the parent's pages instead of copying them. A child inherits
the services built so far and drops the parent's database connections without closing them
(SQLAlchemy's rule for forks). Each worker has its own pipe (a queue shared by the workers has a
lock that a killed worker would keep forever): `submit` writes a small tuple to the worker with the
fewest jobs outstanding and never waits for one; the worker writes the job's number back when it
is done. Inside a worker, `THREADS` threads take the jobs: an answer spends much of its time
waiting (on PostgreSQL, on Slack's response_url, on users.info), and one at a time a worker would
answer no faster than Slack replies; its threads share a GIL with each other, never with an ack.
A thread of the parent's watches the pipes: a worker found dead (its pipe ends, or waitpid says so)
has its outstanding jobs answered again on the caller's thread pool at once (`rescue`: read-only
answers, so at worst one is posted twice), and the others carry on.

When no worker can be used (threads were already running, the database is SQLite in memory, every
worker died, the workers are MAX_PENDING behind) `submit` returns False and the caller answers on
its thread pool, as before.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkProcess

log = logging.getLogger(__name__)
Job = tuple[str, ...]
NICENESS = 10  # CFS weight 110 against an ack's 1024: the worker yields a core within a tick
PARENT_CHECK_S = 2.0  # a worker whose parent died exits within this (it gets no SIGTERM)
MAX_PENDING = 200  # jobs outstanding per worker (a few KB of pipe); past it, answer on threads
THREADS = 4  # answer threads in each worker


@dataclass
class _Worker:
    proc: ForkProcess
    conn: Connection  # the parent's end of this worker's pipe
    pending: dict[int, Job] = field(default_factory=dict)  # by job number, until done


class AnswerProcesses:
    """`workers` forked processes that each run `run(job)` for the jobs submitted to them."""

    def __init__(self, run: Callable[[Job], None], workers: int, rescue: Callable[[Job], object],
                 after_fork: Callable[[], None] = lambda: None, niceness: int = NICENESS) -> None:
        self.run, self.count, self.rescue = run, workers, rescue
        self.after_fork, self.niceness = after_fork, niceness
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()  # one submit writes a pipe at a time
        self._numbers = itertools.count()
        self._closing = threading.Event()

    def start(self) -> bool:
        """Fork the workers; False (and nothing started) when forking is not safe here."""
        if self.count < 1:
            return False
        if threading.active_count() > 1:
            log.warning("answer processes not started: %d threads already run (a fork copies only "
                        "one); answers stay on threads", threading.active_count())
            return False
        ctx, parent = multiprocessing.get_context("fork"), os.getpid()
        for i in range(self.count):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=self._child, args=(theirs, parent), name=f"answer-{i}", daemon=True)
            proc.start()
            theirs.close()
            self._workers.append(_Worker(proc, ours))
        threading.Thread(target=self._watch, name="answer-watch", daemon=True).start()
        log.info("answers to read-only commands run in %d worker processes", self.count)
        return True

    def _watch(self) -> None:
        """Count done jobs as they are reported and rescue a dead worker's owed answers at once,
        not only when the next command is submitted (there may be none for a long time)."""
        while not self._closing.is_set():
            with self._lock:
                conns = [w.conn for w in self._workers]
            if not conns:
                return
            with contextlib.suppress(OSError, ValueError):  # a pipe closed meanwhile: look again
                wait(conns, timeout=PARENT_CHECK_S)
            with self._lock:
                if self._closing.is_set():
                    return
                for w in list(self._workers):
                    self._settle(w)

    def submit(self, job: Job) -> bool:
        """Send `job` to the least busy live worker; False when none can take it."""
        with self._lock:  # the watcher keeps `pending` current: no pipe is read on the ack's path
            if not self._workers:
                return False
            w = min(self._workers, key=lambda w: len(w.pending))
            if len(w.pending) >= MAX_PENDING:
                return False
            number = next(self._numbers)
            try:
                w.conn.send((number, job))
            except OSError:  # it died since the watcher last looked
                self._settle(w)
                return False
            w.pending[number] = job
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Let the workers finish their jobs, then end them (terminate after `timeout`); what a
        worker did not answer is rescued."""
        self._closing.set()
        with self._lock:
            for w in self._workers:
                with contextlib.suppress(OSError):  # a dead worker's pipe
                    w.conn.send(None)
            for w in self._workers:
                w.proc.join(timeout / len(self._workers))
                if w.proc.is_alive():
                    w.proc.terminate()
                    w.proc.join(1.0)
            for w in list(self._workers):
                self._settle(w)

    def _settle(self, w: _Worker) -> None:
        """Count the jobs `w` has done; if it is dead, rescue the rest and drop it. Death shows as
        the end of its pipe (the kernel closes a dead worker's end) or in waitpid."""
        ended = False
        try:
            while w.conn.poll():
                w.pending.pop(w.conn.recv(), None)
        except (EOFError, OSError):  # its end of the pipe closed: the worker is gone
            ended = True
        if not ended and w.proc.is_alive():
            return
        w.proc.join(0.1)  # reaped, so its exit code is known (a killed one may still be exiting)
        self._workers.remove(w)
        w.conn.close()
        if self._closing.is_set() and not w.pending:  # a clean stop
            log.info("answer worker %s stopped", w.proc.name)
        else:
            log.error("answer worker %s ended (exit %s) with %d answers owed%s", w.proc.name,
                      w.proc.exitcode, len(w.pending), "" if self._workers else "; answering on threads now")
        for job in w.pending.values():
            self.rescue(job)

    def _child(self, conn: Connection, parent: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's GracefulStop is not ours
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent decides
        for w in self._workers:  # the other workers' pipes are not ours to hold open
            w.conn.close()
        self.after_fork()
        os.nice(self.niceness)
        sending = threading.Lock()

        def answer(number: int, job: Job) -> None:
            try:
                self.run(job)
            except Exception:
                log.exception("answer %s failed in a worker process", job[0] if job else "?")
            with sending:
                conn.send(number)

        with ThreadPoolExecutor(THREADS, thread_name_prefix="answer") as pool:
            while os.getppid() == parent:
                if not conn.poll(PARENT_CHECK_S):
                    continue
                message = conn.recv()
                if message is None:
                    return  # the pool finishes what it has first
                pool.submit(answer, *message)
