"""The executor that computes answers after the ack, sized to the cores.

Bolt acks from its listener threads. When those same threads also computed the answers (a usage
chart over 30 days of ledger rows), twenty heavy answers in flight meant twenty threads taking turns
on the GIL, and an ack waited its turn among them: `usage` acked six times slower than `help`
(issue 19). Listeners now ack and hand their work here; with as many answer threads as cores, at
most that many hold work that competes with an ack, and extra answers wait in the queue, not on the
GIL. A queued answer costs its caller latency at the response_url (Slack allows 30 minutes there),
never at the ack (Slack allows 3 seconds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


def cores() -> int:
    """The cores this process may run on (the affinity mask, as in a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def answer_pool(workers: int | None = None) -> ThreadPoolExecutor:
    """A bounded pool of `workers` threads (default: one per core, at least 2 so that one slow
    answer waiting on Slack or AWS does not hold every other answer back)."""
    return ThreadPoolExecutor(max_workers=workers or max(2, cores()), thread_name_prefix="answer")


def hand_off(executor: Executor, work: Callable[[], Any], what: str) -> Future[Any]:
    """Run `work` on the pool; a failure is logged (the work itself answers the user)."""
    def logged() -> Any:
        try:
            return work()
        except Exception:
            log.exception("%s failed after the ack", what)
            return None
    return executor.submit(logged)
