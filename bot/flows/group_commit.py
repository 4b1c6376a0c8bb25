"""Group commit: concurrent callers' small, independent writes committed in one transaction.

A commit on PostgreSQL waits for its WAL flush (a few milliseconds on an ordinary disk), and
every transaction that writes an audit row holds the chain's advisory lock until its commit
is done, so one-transaction-per-message writes are serialised at one flush each. Here the
first caller becomes the *leader* and runs the write for itself; callers that arrive while it
is busy queue up, and when it is done the first of them leads the next batch, with everyone
queued by then. Nobody waits for a timer: alone, a caller's batch is just its own item.

`together(items)` runs one transaction for a batch and returns one result per item;
`alone(item)` runs one item in its own transaction (audited on failure, like any step). A
batch of one goes through `alone`. When a batch fails, it rolled back as a whole, and each of
its items is tried again `alone`, so one bad item fails only its own caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
log = logging.getLogger(__name__)


class _Waiter(Generic[I, R]):
    __slots__ = ("done", "error", "item", "lead", "result", "wake")

    def __init__(self, item: I) -> None:
        self.item = item
        self.wake = threading.Event()
        self.lead = False  # woken to lead the next batch rather than with an answer
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[I, R]):
    def __init__(self, together: Callable[[Sequence[I]], list[R]], alone: Callable[[I], R],
                 max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._together = together
        self._alone = alone
        self._max = max_batch
        self._mu = threading.Lock()
        self._queue: list[_Waiter[I, R]] = []
        self._busy = False  # a leader is running; invariant: queue non-empty ⇒ busy
        self.batches = 0  # batches run and items in them (for benches and logs)
        self.items = 0

    def waiting(self) -> int:
        """Callers queued behind the running batch (for tests and logs)."""
        with self._mu:
            return len(self._queue)

    def submit(self, item: I) -> R:
        """Write `item` (with whoever else is waiting) and return its result, or raise its error."""
        me: _Waiter[I, R] = _Waiter(item)
        with self._mu:
            self._queue.append(me)
            me.lead = not self._busy
            self._busy = True
        if not me.lead:
            me.wake.wait()
        if me.lead:
            self._lead()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._mu:
            batch, self._queue = self._queue[: self._max], self._queue[self._max:]
        try:
            self._run(batch)
        finally:
            with self._mu:
                nxt = self._queue[0] if self._queue else None
                self._busy = nxt is not None
            for w in batch:
                w.lead = False
                if not w.done:  # _run was interrupted
                    w.error, w.done = RuntimeError("group commit interrupted"), True
                w.wake.set()
            if nxt is not None:
                nxt.lead = True
                nxt.wake.set()

    def _run(self, batch: list[_Waiter[I, R]]) -> None:
        self.batches += 1
        self.items += len(batch)
        if len(batch) > 1:
            try:
                results = self._together([w.item for w in batch])
            except Exception as exc:
                log.warning("group commit of %d items failed (%s: %s); each is retried alone",
                            len(batch), type(exc).__name__, str(exc)[:200])
            else:
                wrong = None if len(results) == len(batch) else RuntimeError(
                    f"group commit: {len(results)} results for {len(batch)} items")
                for i, w in enumerate(batch):
                    w.result, w.error, w.done = (None, wrong, True) if wrong else (results[i], None, True)
                return
        for w in batch:
            try:
                w.result = self._alone(w.item)
            except Exception as exc:
                w.error = exc
            w.done = True
