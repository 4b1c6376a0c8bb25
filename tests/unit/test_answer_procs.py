"""Which answers may leave the process, and when the answer processes refuse to start."""

from __future__ import annotations

import threading

import pytest

from bot.slash import registry
from handlers.answer_procs import AnswerProcesses


@pytest.mark.parametrize("text", ["", "help", "help usage", "usage", "USAGE @alice week", "limits",
                                  "limits team-eng", "profiles", "audit alice 20"])
def test_commands_that_only_read_may_be_answered_elsewhere(text: str) -> None:
    assert registry.reads_only(text)


@pytest.mark.parametrize("text", ["limit alice 5M/day", "unlimit alice", "revoke alice", "restore alice",
                                  "team t add <@U1>", "provision alice m", "link <@U1> arn", "digest",
                                  "request more 1M", "admins", "check alice", "nonsense", "usage \x01"])
def test_writes_unknown_and_bad_commands_stay_in_the_process(text: str) -> None:
    assert not registry.reads_only(text)


def test_read_only_flags_match_the_registry() -> None:
    assert {n for n, c in registry.SUBCOMMANDS.items() if c.reads} == {
        "help", "usage", "limits", "profiles", "audit"}


def test_no_fork_while_another_thread_runs() -> None:
    """A fork copies one thread; a lock another one held would stay held in the child."""
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    try:
        procs = AnswerProcesses(run=lambda job: None, workers=2, rescue=lambda job: None)
        assert procs.start() is False
        assert procs.submit(("slash", "U1", "help", "https://example.invalid")) is False
    finally:
        done.set()
        other.join()


def test_zero_workers_is_threads_only() -> None:
    procs = AnswerProcesses(run=lambda job: None, workers=0, rescue=lambda job: None)
    assert procs.start() is False
    assert procs.submit(("slash",)) is False
