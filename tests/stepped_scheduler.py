"""An APScheduler 3 scheduler that the test steps instead of a thread.

`run_pending()` is APScheduler's own `_process_jobs()` — the call BlockingScheduler's and
BackgroundScheduler's loop makes after each wait — so due times, coalescing, misfire grace
and max_instances are APScheduler's, at the wall clock time-machine sets. Only the loop
(wait, process, wait…) is the test's. Jobs run inline (DebugExecutor) unless the test passes
a thread pool to watch jobs run side by side.
"""

from __future__ import annotations

from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.debug import DebugExecutor
from apscheduler.schedulers.base import BaseScheduler


class SteppedScheduler(BaseScheduler):  # type: ignore[misc]
    def __init__(self, **options: Any) -> None:
        options.setdefault("executors", {"default": DebugExecutor()})
        super().__init__(**options)
        self.done: list[str] = []  # ids of the jobs that returned a true value, in order
        self.add_listener(self._executed, EVENT_JOB_EXECUTED)

    def _executed(self, event: JobExecutionEvent) -> None:
        if event.retval:  # JobRunner.run_job: True when the job was run; heartbeat: leader
            self.done.append(event.job_id)

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait)  # abstract in BaseScheduler only to make subclasses stop their loop

    def wakeup(self) -> None:
        """Nothing sleeps: the next `run_pending()` sees every change."""

    def run_pending(self) -> list[str]:
        """Run every job due now, including jobs made due by the ones that ran (a new
        leader reschedules its interval jobs to now); the ids of those that returned a
        true value (with the inline executor)."""
        mark = len(self.done)
        for _ in range(100):
            wait = self._process_jobs()
            if wait is None or wait > 0:
                return self.done[mark:]
        raise AssertionError("jobs keep falling due at the same instant")


def stepped(runner: Any) -> SteppedScheduler:
    """The running runner's scheduler, as a SteppedScheduler."""
    scheduler = runner.scheduler
    assert isinstance(scheduler, SteppedScheduler), scheduler
    return scheduler
