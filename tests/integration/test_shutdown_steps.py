"""handlers/shutdown.py in-process: the first signal raises Stopping (ending waitress's loop), a
second exits at once, the watchdog exits whatever still runs; finish() frees the scheduler lease
even when a job does not finish within its grace. A real `serve` process is stopped in
tests/e2e/test_shutdown.py."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.clock import FixedClock
from bot.db import Database
from bot.services import leases
from handlers.shutdown import GracefulStop, Stopping
from jobs.scheduler import LEASE_NAME


@pytest.fixture
def handlers_restored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_the_first_signal_stops_the_second_exits(handlers_restored: None) -> None:
    exits: list[int] = []
    stop = GracefulStop(within=3600, exit_now=exits.append).install()
    with pytest.raises(Stopping) as raised:
        signal.raise_signal(signal.SIGTERM)
    assert raised.value.code == 0 and stop.signum == signal.SIGTERM and 0 < stop.remaining() <= 3600
    signal.raise_signal(signal.SIGINT)  # impatient: no exception, exit now
    assert exits == [128 + signal.SIGINT]


def test_the_watchdog_exits_non_zero() -> None:
    exits: list[int] = []
    GracefulStop(exit_now=exits.append)._expired()
    assert exits == [1]


class _Runner:
    """A JobRunner stand-in whose shutdown waits for a job that is still running."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.job_done = threading.Event()
        self.shutdowns = 0

    def shutdown(self, wait: bool = True) -> None:
        self.shutdowns += 1
        self.job_done.wait(timeout=30)


class _Background:
    def __init__(self, services: Any, runner: _Runner | None) -> None:
        self.services = services
        self.runner = runner
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


class _Services:
    def __init__(self, db: Database) -> None:
        self.db = db


def test_a_job_past_its_grace_does_not_keep_the_lease(db: Database, clock: FixedClock,
                                                      tmp_path: Path) -> None:
    holder = "host:1:abc"
    with db.session_scope() as s:
        assert leases.acquire(s, LEASE_NAME, holder, clock(), timedelta(seconds=90))
    runner = _Runner(holder)
    background = _Background(_Services(db), runner)
    stop = GracefulStop(job_grace=0.0)
    stop.announce_port(str(tmp_path / "port"), 8123)
    assert (tmp_path / "port").read_text() == "8123\n"
    closed: list[bool] = []
    try:
        stop.finish(lambda: closed.append(True), background)
        assert closed == [True] and background.stop.is_set() and runner.shutdowns == 1
        with db.session_scope() as s:
            assert leases.holder_of(s, LEASE_NAME, clock()) is None
        assert not (tmp_path / "port").exists()
        stop.finish(lambda: closed.append(True), background)  # idempotent
        assert closed == [True] and runner.shutdowns == 1
    finally:
        runner.job_done.set()


def test_a_lease_held_by_someone_else_is_left_alone(db: Database, clock: FixedClock) -> None:
    with db.session_scope() as s:
        assert leases.acquire(s, LEASE_NAME, "other:2:def", clock(), timedelta(seconds=90))
    runner = _Runner("host:1:abc")
    try:
        GracefulStop(job_grace=0.0).finish(None, _Background(_Services(db), runner))
        with db.session_scope() as s:
            assert leases.holder_of(s, LEASE_NAME, clock()) == "other:2:def"
    finally:
        runner.job_done.set()
