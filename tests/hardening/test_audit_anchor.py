"""Attacks on the audit chain by someone who can write the database (issue 15, item 11).

Before the anchor, deleting the newest rows — or rewriting rows and recomputing every hash
after them — left a chain that `audit verify` called intact. Each test here does one such
attack on SQLite and PostgreSQL and shows what now catches it: the checkpoint (a cut tail, a
rewritten prefix) or the key (a rewrite after the last checkpoint).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from bot.cli import main as cli_main
from bot.clock import FixedClock
from bot.config import load_settings
from bot.db import Database
from bot.flows import audit_anchor as flow
from bot.migrate import downgrade, upgrade
from bot.models import AuditEvent
from bot.runtime import audit_keyring
from bot.services import audit
from bot.services import audit_anchor as anchor
from bot.services.audit_anchor import AnchorError
from jobs import audit_checkpoint
from tests.conftest import _pg_reachable, drop_pg_schema, new_pg_schema_url
from tests.fakes.services import make_services

KEY = "audit-key-for-tests-0123456789abcdef"  # 36 characters
NEW_KEY = "another-audit-key-for-tests-9876543210"
ALERTS, ANCHORS = "C0ALERTS", "C0ANCHORS"


class Recorder:
    """A Notifier that keeps what it was asked to post."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str]] = []

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str:
        self.posts.append((channel, text))
        return "1.0"

    def dm(self, user_id: str, text: str, blocks: list[dict[str, Any]] | None = None) -> str:
        return self.post(user_id, text)

    def update(self, channel: str, ts: str, text: str,
               blocks: list[dict[str, Any]] | None = None) -> None:
        self.posts.append((channel, text))


@contextmanager
def keyed(db: Database, key: str | None = KEY, previous: tuple[str, ...] = ()) -> Iterator[Database]:
    """The same database, with a keyring on its sessions (as `build_services` makes it)."""
    other = Database(db.url, audit_keyring=audit.Keyring(key, list(previous)))
    try:
        yield other
    finally:
        other.dispose()


def fill(db: Database, clock: FixedClock, n: int, tag: str = "t") -> None:
    for i in range(n):
        with db.session_scope() as s:
            audit.record(s, clock, "slack:U1", "limit.set", f"user:{tag}{i}", {"i": i})
        clock.advance(seconds=1)


def check(db: Database, keyring: audit.Keyring = audit.NO_KEY) -> audit.VerifyResult:
    with db.session_scope() as s:
        return audit.verify(s, keyring)


def compare(db: Database, cp: anchor.Checkpoint) -> str:
    with db.session_scope() as s:
        return anchor.compare(s, cp)


def take(db: Database, clock: FixedClock) -> anchor.Checkpoint:
    with db.session_scope() as s:
        cp = anchor.head(s, clock())
    assert cp is not None
    return cp


def rewrite_and_rehash(db: Database, row_id: int, downgrade_from: int | None = None) -> None:
    """The attack: change one row, then recompute plain SHA-256 for it and every row after it
    (optionally marking rows from `downgrade_from` as unkeyed), so each row fits the next."""
    with db.session_scope() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
        prev, first = audit.GENESIS, min(row_id, downgrade_from or row_id)
        for ev in rows:
            if ev.id == row_id:
                ev.target = "user:forged"
            if ev.id >= first:
                ev.prev_hash = prev
                ev.hash = audit.chain_hash(prev, audit.canonical(
                    ev.id, ev.at, ev.actor, ev.action, ev.target, ev.details, ev.outcome))
            if downgrade_from is not None and ev.id >= downgrade_from:
                ev.alg = audit.SHA256
            prev = ev.hash


def cut_tail(db: Database, after: int) -> None:
    with db.session_scope() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id > after))


# ---- a cut tail ----------------------------------------------------------------------------------

def test_a_cut_tail_passes_the_chain_but_not_the_checkpoint(db: Database, clock: FixedClock) -> None:
    fill(db, clock, 10)
    cp = take(db, clock)
    cut_tail(db, 7)
    assert check(db).ok  # the chain alone cannot see it: what is left is a valid chain
    assert compare(db, cp) == ("the last 3 rows up to id 10 are missing: the chain was cut "
                               f"(checkpoint of {cp.at}; the newest row is now 7)")


def test_a_cut_tail_written_again_is_caught(db: Database, clock: FixedClock) -> None:
    """Cut rows 8..10, then append three harmless rows so the count and ids look right."""
    fill(db, clock, 10)
    cp = take(db, clock)
    cut_tail(db, 7)
    fill(db, clock, 3, tag="innocent")
    assert check(db).ok
    assert compare(db, cp).startswith("row 10 no longer has the hash checkpointed")


def test_rows_after_the_checkpoint_are_fine(db: Database, clock: FixedClock) -> None:
    fill(db, clock, 5)
    cp = take(db, clock)
    fill(db, clock, 5)
    assert check(db).ok and compare(db, cp) == ""


# ---- rewriting with recomputed hashes ------------------------------------------------------------

def test_without_a_key_a_recomputed_rewrite_is_caught_only_by_a_checkpoint(
        db: Database, clock: FixedClock) -> None:
    fill(db, clock, 6)
    cp = take(db, clock)
    rewrite_and_rehash(db, 3)
    assert check(db).ok  # no key: the rewriter recomputed every hash
    assert compare(db, cp).startswith("row 6 no longer has the hash checkpointed")


def test_with_a_key_a_recomputed_plain_chain_is_caught(db: Database, clock: FixedClock) -> None:
    with keyed(db) as kdb:
        fill(kdb, clock, 6)
        assert check(kdb, kdb.audit_keyring).ok
        rewrite_and_rehash(kdb, 3)
        result = check(kdb, kdb.audit_keyring)
    assert not result.ok and result.broken_id == 3
    assert result.reason == "row 3: contents do not match its keyed hash"


def test_with_a_key_a_downgrade_to_sha256_is_caught(db: Database, clock: FixedClock) -> None:
    """Marking the rewritten rows unkeyed does not help: no unkeyed row may follow a keyed one."""
    with keyed(db) as kdb:
        fill(kdb, clock, 6)
        rewrite_and_rehash(kdb, 3, downgrade_from=3)
        result = check(kdb, kdb.audit_keyring)
    assert not result.ok and result.broken_id == 3
    assert result.reason.startswith("row 3: unkeyed after keyed rows from 1")


def test_a_whole_chain_downgrade_is_caught_by_a_checkpoint_taken_under_the_key(
        db: Database, clock: FixedClock) -> None:
    """Rewriting every row as plain SHA-256 leaves nothing keyed to contradict it: that needs
    the checkpoint (and `verify` says no row is keyed, while a key is set)."""
    with keyed(db) as kdb:
        fill(kdb, clock, 6)
        cp = take(kdb, clock)
        rewrite_and_rehash(kdb, 2, downgrade_from=1)
        result = check(kdb, kdb.audit_keyring)
        assert result.ok and result.keyed_from is None
        assert compare(kdb, cp).startswith("row 6 no longer has the hash checkpointed")


def test_a_keyed_chain_without_the_key_is_unverifiable_not_intact(db: Database,
                                                                  clock: FixedClock) -> None:
    with keyed(db) as kdb:
        fill(kdb, clock, 3)
    result = check(db)
    assert not result.ok and result.unverifiable and result.broken_id == 1
    with keyed(db, NEW_KEY) as other:  # the wrong key is a break, not a missing key
        wrong = check(other, other.audit_keyring)
    assert not wrong.ok and not wrong.unverifiable
    assert "keyed with a key not configured" in wrong.reason


def test_unkeyed_rows_then_keyed_rows_verify(db: Database, clock: FixedClock) -> None:
    """The transition: rows from before the key stay SHA-256, rows after it are keyed."""
    fill(db, clock, 3)
    with keyed(db) as kdb:
        fill(kdb, clock, 3)
        result = check(kdb, kdb.audit_keyring)
        with kdb.session_scope() as s:
            algs = list(s.scalars(select(AuditEvent.alg).order_by(AuditEvent.id)))
    assert result.ok and result.rows == 6 and result.keyed_from == 4
    kid = audit.key_id(KEY.encode())
    assert algs == ["sha256"] * 3 + [f"hmac-sha256:{kid}"] * 3


def test_a_rotated_key_verifies_with_the_previous_one(db: Database, clock: FixedClock) -> None:
    with keyed(db, KEY) as old:
        fill(old, clock, 3)
    with keyed(db, NEW_KEY, previous=(KEY,)) as new:
        fill(new, clock, 3)
        assert check(new, new.audit_keyring).ok
    only_new = check(db, audit.Keyring(NEW_KEY))
    assert not only_new.ok and only_new.broken_id == 1


def test_a_forged_alg_is_a_break(db: Database, clock: FixedClock) -> None:
    fill(db, clock, 3)
    with db.session_scope() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == 2).values(alg="md5"))
    result = check(db, audit.Keyring(KEY))
    assert not result.ok and result.broken_id == 2 and not result.unverifiable


# ---- the checkpoint job ----------------------------------------------------------------------------

def _services(db: Database, clock: FixedClock, path: Path | None, notifier: Recorder,
              **env: str) -> Any:
    extra = {"BOT_AUDIT_KEY": KEY, "BOT_ALERT_CHANNEL": ALERTS,
             "BOT_AUDIT_CHECKPOINT_CHANNEL": ANCHORS, **env}
    if path is not None:
        extra["BOT_AUDIT_CHECKPOINT_FILE"] = str(path)
    s = make_services(db, clock, notifier=notifier, **extra)
    s.db = Database(db.url, audit_keyring=audit_keyring(s.settings))
    return s


def test_the_job_anchors_the_head_once_and_catches_a_cut(db: Database, clock: FixedClock,
                                                         tmp_path: Path) -> None:
    path, slack = tmp_path / "anchors.jsonl", Recorder()
    s = _services(db, clock, path, slack)
    try:
        fill(s.db, clock, 5)
        out = audit_checkpoint.run(s)
        assert out.ok and out.value.written == str(path) and out.value.posted == ANCHORS
        cp = anchor.read_last(str(path))
        assert cp is not None and (cp.id, cp.rows) == (5, 5) and cp.alg.startswith("hmac-sha256:")
        assert slack.posts == [(ANCHORS, flow.checkpoint_text(cp))]
        assert f"--anchor 5:{cp.hash}" in slack.posts[0][1]

        again = audit_checkpoint.run(s)  # nothing new: no line, no message
        assert again.ok and again.value.note.startswith("unchanged")
        assert len(path.read_text().splitlines()) == 1 and len(slack.posts) == 1

        fill(s.db, clock, 2)
        cut_tail(s.db, 3)
        broken = audit_checkpoint.run(s)
        assert not broken.ok and "the chain was cut" in broken.message
        assert len(path.read_text().splitlines()) == 1  # the damage is not blessed
        assert slack.posts[-1][0] == ALERTS and "Audit checkpoint failed" in slack.posts[-1][1]
        with s.db.session_scope() as session:
            last = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert last is not None and (last.action, last.outcome) == ("audit.checkpoint", "error")
    finally:
        s.db.dispose()


def test_the_job_refuses_rows_rewritten_after_the_checkpoint(db: Database, clock: FixedClock,
                                                              tmp_path: Path) -> None:
    path, slack = tmp_path / "anchors.jsonl", Recorder()
    s = _services(db, clock, path, slack)
    try:
        fill(s.db, clock, 3)
        assert audit_checkpoint.run(s).ok
        fill(s.db, clock, 3)
        rewrite_and_rehash(s.db, 5)
        out = audit_checkpoint.run(s)
        assert not out.ok and "row 5: contents do not match its keyed hash" in out.message
    finally:
        s.db.dispose()


def test_the_job_without_anywhere_to_write_is_an_error(db: Database, clock: FixedClock) -> None:
    s = _services(db, clock, None, Recorder(), BOT_ALERT_CHANNEL="", BOT_AUDIT_CHECKPOINT_CHANNEL="")
    try:
        out = audit_checkpoint.run(s)
    finally:
        s.db.dispose()
    assert not out.ok and "nowhere to put a checkpoint" in out.message


# ---- the key stays out of logs, audit rows, files and messages -----------------------------------

def test_the_key_never_appears_in_logs_rows_files_or_messages(
        db: Database, clock: FixedClock, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")  # SQL and its parameters too
    path, slack = tmp_path / "anchors.jsonl", Recorder()
    s = _services(db, clock, path, slack)
    try:
        fill(s.db, clock, 3)
        assert audit_checkpoint.run(s).ok
        rewrite_and_rehash(s.db, 2)
        assert not audit_checkpoint.run(s).ok
        with s.db.session_scope() as session:
            rows = list(session.scalars(select(AuditEvent)))
    finally:
        s.db.dispose()
    everything = [caplog.text, path.read_text(), repr(s.settings), repr(s.db.audit_keyring),
                  *(t for _, t in slack.posts),
                  *(f"{r.actor} {r.action} {r.target} {r.details} {r.alg}" for r in rows)]
    assert "SELECT" in caplog.text and rows  # the capture did see the traffic
    for text in everything:
        assert KEY not in text and KEY.encode().hex() not in text

    monkeypatch.chdir(tmp_path)  # a bad key is named, never shown
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.setenv("BOT_AUDIT_KEY", KEY[:31])
    assert cli_main(["audit", "verify"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("configuration error: BOT_AUDIT_KEY: Value error, BOT_AUDIT_KEY must "
                           "be at least 32 characters")
    assert KEY[:31] not in err


@pytest.mark.parametrize(("value", "why"), [
    ("x" * 31, "at least 32 characters"),
    (" " + "x" * 40, "leading or trailing whitespace"),
])
def test_a_weak_or_padded_key_is_refused(value: str, why: str) -> None:
    with pytest.raises(Exception) as exc:
        load_settings(None, BOT_AUDIT_KEY=value)
    assert why in str(exc.value) and value.strip() not in str(exc.value)


def test_a_checkpoint_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        load_settings(None, BOT_AUDIT_CHECKPOINT_FILE=str(tmp_path / "nope" / "a.jsonl"))


# ---- the checkpoint file ---------------------------------------------------------------------------

def _cp(row_id: int, digest: str = "a" * 64) -> anchor.Checkpoint:
    return anchor.Checkpoint(row_id, digest, row_id, "sha256", "2026-11-25T10:30:00+00:00",
                             "2026-11-25T11:00:00+00:00")


def test_the_file_is_appended_and_read_back(tmp_path: Path) -> None:
    path = str(tmp_path / "a.jsonl")
    anchor.append(path, _cp(3))
    anchor.append(path, _cp(9, "b" * 64))
    assert anchor.read_last(path) == _cp(9, "b" * 64)
    assert [json.loads(x)["id"] for x in Path(path).read_text().splitlines()] == [3, 9]


def test_a_torn_last_line_stays_alone_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(_cp(3).line() + "\n" + _cp(4).line()[:20])  # a crash mid-write
    anchor.append(str(path), _cp(5))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and anchor.parse_line(lines[2]) == _cp(5)
    with pytest.raises(AnchorError, match="line 2: not JSON"):
        anchor.read_last(str(path))


@pytest.mark.parametrize("bad", [
    '{"v":1}',
    _cp(3).line().replace('"id":3', '"id":0'),
    _cp(3).line().replace('"id":3', '"id":true'),
    _cp(3).line().replace("a" * 64, "A" * 64),
    _cp(3).line().replace('"sha256"', '"md5"'),
    _cp(3).line().replace("+00:00", ""),
    "[1,2]",
])
def test_a_damaged_line_is_reported_not_skipped(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(_cp(2).line() + "\n" + bad + "\n")
    with pytest.raises(AnchorError, match="line 2"):
        anchor.read_last(str(path))


def test_checkpoints_going_backwards_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(_cp(9).line() + "\n" + _cp(4).line() + "\n")
    with pytest.raises(AnchorError, match="row 4 after row 9"):
        anchor.read_last(str(path))


# ---- the command line ------------------------------------------------------------------------------

@pytest.fixture
def cli_env(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", db.url)
    path = tmp_path / "anchors.jsonl"
    monkeypatch.setenv("BOT_AUDIT_CHECKPOINT_FILE", str(path))
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_verify_and_checkpoint_exit_codes(db: Database, clock: FixedClock, cli_env: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fill(db, clock, 4)
    code, out, err = _run(["audit", "verify"], capsys)  # configured, not written yet
    assert code == 2 and "does not exist" in err
    code, out, _ = _run(["audit", "checkpoint"], capsys)
    assert code == 0 and out.startswith("audit checkpoint: row 4 ")
    code, out, _ = _run(["audit", "verify"], capsys)
    assert code == 0 and "intact: 4 rows" in out and "(row 4)" in out
    fill(db, clock, 2)
    assert _run(["audit", "verify"], capsys)[0] == 0  # newer rows are fine

    cut_tail(db, 2)
    code, out, err = _run(["audit", "verify"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("audit chain CUT OR REWRITTEN: the last 2 rows up to id 4 are missing: "
                          "the chain was cut") and err.count("\n") == 1
    code, _, err = _run(["audit", "checkpoint"], capsys)
    assert code == 1 and "not written" in err and "the chain was cut" in err
    assert len(cli_env.read_text().splitlines()) == 1


def test_cli_verify_with_a_pasted_anchor(db: Database, clock: FixedClock, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db.url)
    fill(db, clock, 5)
    cp = take(db, clock)
    assert _run(["audit", "verify", "--anchor", f"5:{cp.hash}"], capsys)[0] == 0
    rewrite_and_rehash(db, 2)
    code, _, err = _run(["audit", "verify", "--anchor", f"5:{cp.hash}"], capsys)
    assert code == 1 and "row 5 no longer has the hash" in err
    code, _, err = _run(["audit", "verify", "--anchor", "5:nothex"], capsys)
    assert code == 2 and "ID:HASH" in err
    code, out, _ = _run(["audit", "verify"], capsys)  # no anchor at all: says what it cannot see
    assert code == 0 and "no checkpoint and no BOT_AUDIT_KEY" in out


def test_cli_verify_keyed(db: Database, clock: FixedClock, cli_env: Path,
                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fill(db, clock, 2)
    with keyed(db) as kdb:
        fill(kdb, clock, 2)
    code, _, err = _run(["audit", "verify", "--checkpoint-file", "/dev/null"], capsys)
    assert code == 2 and "set BOT_AUDIT_KEY to verify it" in err  # keyed rows, no key
    monkeypatch.setenv("BOT_AUDIT_KEY", KEY)
    assert _run(["audit", "checkpoint"], capsys)[0] == 0
    code, out, _ = _run(["audit", "verify"], capsys)
    assert code == 0 and "keyed from row 3" in out
    rewrite_and_rehash(db, 4)
    code, _, err = _run(["audit", "verify"], capsys)
    assert code == 1 and "BROKEN at row 4: row 4: contents do not match its keyed hash" in err


def test_cli_checkpoint_needs_a_file(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db.url)
    code, _, err = _run(["audit", "checkpoint"], capsys)
    assert code == 2 and "BOT_AUDIT_CHECKPOINT_FILE" in err
    code, out, _ = _run(["audit", "checkpoint", "--checkpoint-file", str(tmp_path / "a")], capsys)
    assert code == 0 and "audit log is empty" in out


# ---- the migration ---------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/m.db"
        return
    if not _pg_reachable():
        pytest.skip("PostgreSQL not reachable")
    url, schema = new_pg_schema_url()
    try:
        yield url
    finally:
        drop_pg_schema(schema)


def test_rows_from_before_the_migration_become_sha256_and_still_verify(
        empty_url: str, clock: FixedClock) -> None:
    before = importlib.import_module("migrations.versions.0007_audit_anchor").down_revision
    upgrade(empty_url)
    db = Database(empty_url)
    try:
        fill(db, clock, 3)
        db.dispose()
        downgrade(empty_url, before)
        upgrade(empty_url)
        result = check(db)
        with db.session_scope() as s:
            algs = set(s.scalars(select(AuditEvent.alg)))
    finally:
        db.dispose()
    assert result.ok and result.rows == 3 and algs == {"sha256"}
