"""Group commit: batching of concurrent callers, results to the right caller, failures isolated."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest

from bot.flows.group_commit import GroupCommit


class Recorder:
    """`together`/`alone` that record their calls; `gate` holds the first call until released."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.batches: list[list[int]] = []
        self.alone_calls: list[int] = []
        self.bad = bad
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _hold(self) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10)

    def together(self, items: Sequence[int]) -> list[int]:
        self._hold()
        self.batches.append(list(items))
        if self.bad & set(items):
            raise RuntimeError("one bad item spoils the batch")
        return [i * 10 for i in items]

    def alone(self, item: int) -> int:
        self._hold()
        self.alone_calls.append(item)
        if item in self.bad:
            raise ValueError(f"bad {item}")
        return item * 10


def _queued(group: GroupCommit[int, int], n: int) -> None:
    """Wait (bounded) until `n` callers are queued behind the running leader."""
    ready = threading.Event()
    for _ in range(10_000):
        with group._mu:
            if len(group._queue) >= n:
                return
        ready.wait(0.001)
    raise AssertionError(f"never saw {n} queued callers")


def _run_all(submit: Callable[[int], int], items: list[int]) -> dict[int, int | str]:
    out: dict[int, int | str] = {}

    def one(i: int) -> None:
        try:
            out[i] = submit(i)
        except Exception as exc:
            out[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for t in threads:
        t.start()
    return _join(threads, out)


def _join(threads: list[threading.Thread], out: dict[int, int | str]) -> dict[int, int | str]:
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    return out


def test_a_lone_caller_runs_alone_at_once() -> None:
    rec = Recorder()
    rec.gate.set()
    group = GroupCommit(rec.together, rec.alone)
    assert group.submit(3) == 30
    assert rec.alone_calls == [3] and rec.batches == [] and group.batches == 1


def test_callers_queued_behind_a_leader_share_the_next_batch() -> None:
    rec = Recorder()
    group = GroupCommit(rec.together, rec.alone)
    first = threading.Thread(target=lambda: group.submit(0))
    first.start()
    assert rec.entered.wait(10)  # the leader is inside its (one-item) batch
    out: dict[int, int | str] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, group.submit(i))) for i in range(1, 6)]
    for t in threads:
        t.start()
    _queued(group, 5)
    rec.gate.set()
    first.join(10)
    _join(threads, out)
    assert rec.alone_calls == [0]
    assert len(rec.batches) == 1 and sorted(rec.batches[0]) == [1, 2, 3, 4, 5]
    assert out == {i: i * 10 for i in range(1, 6)}
    assert (group.batches, group.items) == (2, 6)


def test_max_batch_splits_the_queue() -> None:
    rec = Recorder()
    group = GroupCommit(rec.together, rec.alone, max_batch=2)
    first = threading.Thread(target=lambda: group.submit(0))
    first.start()
    assert rec.entered.wait(10)
    out: dict[int, int | str] = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, group.submit(i))) for i in range(1, 6)]
    for t in threads:
        t.start()
    _queued(group, 5)
    rec.gate.set()
    first.join(10)
    _join(threads, out)
    assert [len(b) for b in rec.batches] == [2, 2]  # then the fifth alone
    assert len(rec.alone_calls) == 2 and rec.alone_calls[0] == 0
    assert out == {i: i * 10 for i in range(1, 6)}


def test_a_failed_batch_is_retried_item_by_item_and_fails_only_the_bad_caller() -> None:
    rec = Recorder(bad=frozenset({3}))
    group = GroupCommit(rec.together, rec.alone)
    first = threading.Thread(target=lambda: group.submit(0))
    first.start()
    assert rec.entered.wait(10)
    out: dict[int, int | str] = {}

    def one(i: int) -> None:
        try:
            out[i] = group.submit(i)
        except ValueError as exc:
            out[i] = str(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    _queued(group, 4)
    rec.gate.set()
    first.join(10)
    _join(threads, out)
    assert len(rec.batches) == 1  # tried together once, rolled back, then one by one
    assert sorted(rec.alone_calls) == [0, 1, 2, 3, 4]
    assert out == {1: 10, 2: 20, 3: "bad 3", 4: 40}


def test_the_next_leader_takes_over_after_an_error() -> None:
    rec = Recorder(bad=frozenset({1}))
    rec.gate.set()
    group = GroupCommit(rec.together, rec.alone)
    with pytest.raises(ValueError, match="bad 1"):
        group.submit(1)
    assert group.submit(2) == 20  # not stuck: the failed leader handed over
    assert not group._busy and not group._queue


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupCommit(lambda items: list(items), lambda item: item, max_batch=0)


def test_many_threads_every_caller_gets_its_own_result() -> None:
    rec = Recorder()
    rec.gate.set()
    group = GroupCommit(rec.together, rec.alone, max_batch=7)
    out = _run_all(group.submit, list(range(200)))
    assert out == {i: i * 10 for i in range(200)}
    assert group.items == 200 and not group._busy and not group._queue
