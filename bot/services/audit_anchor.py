"""Checkpoints of the audit chain's head, kept where the database cannot change them.

The chain shows an edited or deleted row in the middle, but not a cut tail: delete the
newest rows and what is left is still a valid chain. A checkpoint — the head's id and hash,
the row count and the time — written to an append-only file (one JSON line each, fsynced)
or posted to Slack is an anchor: a later check finds the checkpointed row gone ("the chain
was cut") or with another hash ("rewritten"). Because each hash covers the previous one, a
matching checkpoint vouches for every row up to it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot.errors import BotError
from bot.models import AuditEvent
from bot.services import audit

VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_ALG = re.compile(r"^(sha256|hmac-sha256:[0-9a-f]{8})\Z")
_FIELDS = {"v", "id", "hash", "rows", "alg", "head_at", "at"}


class AnchorError(BotError):
    """A checkpoint could not be read or written (the file, not the chain, is at fault)."""

    outcome = "error"


@dataclass(frozen=True)
class Checkpoint:
    id: int
    hash: str
    rows: int
    alg: str
    head_at: str  # the head row's time
    at: str  # when the checkpoint was taken

    def line(self) -> str:
        return json.dumps({"v": VERSION, **asdict(self)}, sort_keys=True, separators=(",", ":"))

    @property
    def start(self) -> audit.Start:
        """Where verification of the rows after this checkpoint begins."""
        return audit.Start(self.id, self.hash, self.alg != audit.SHA256)


def head(session: Session, now: datetime) -> Checkpoint | None:
    """The newest row as a checkpoint; None while the log is empty."""
    row = session.execute(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    if row is None:
        return None
    rows = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    return Checkpoint(row.id, row.hash, rows, row.alg, row.at.isoformat(), now.isoformat())


def compare(session: Session, cp: Checkpoint) -> str:
    """'' when the checkpointed row is still there with its hash; else the one-line reason."""
    row = session.get(AuditEvent, cp.id)
    if row is None:
        last = session.scalar(select(func.max(AuditEvent.id))) or 0
        if last < cp.id:
            return (f"the last {cp.id - last} rows up to id {cp.id} are missing: the chain was cut "
                    f"(checkpoint of {cp.at}; the newest row is now {last})")
        return f"row {cp.id}, checkpointed at {cp.at}, is missing"
    if row.hash != cp.hash:
        return (f"row {cp.id} no longer has the hash checkpointed at {cp.at}: rows up to "
                f"{cp.id} were rewritten, or the tail was cut and written again")
    return ""


def parse_anchor(text: str, at: str = "the command line") -> Checkpoint:
    """`ID:HASH`, as the Slack checkpoint message prints it."""
    row_id, _, digest = text.strip().partition(":")
    if not (row_id.isascii() and row_id.isdigit() and 0 < int(row_id) < 2**63
            and _HEX64.match(digest)):
        raise AnchorError("an anchor is ID:HASH (a row id and its 64 hex digit hash)")
    return Checkpoint(int(row_id), digest, int(row_id), audit.SHA256, "", at)


# ---- the append-only file ---------------------------------------------------------------------

def parse_line(text: str) -> Checkpoint:
    """One checkpoint line, strictly: anything else in the file is a reason to stop."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError("not JSON") from exc
    if not isinstance(data, dict) or set(data) != _FIELDS or data["v"] != VERSION:
        raise ValueError("not a checkpoint")
    ok = (_is_count(data["id"]) and data["id"] > 0 and _is_count(data["rows"])
          and isinstance(data["hash"], str) and _HEX64.match(data["hash"])
          and isinstance(data["alg"], str) and _ALG.match(data["alg"])
          and _is_time(data["head_at"]) and _is_time(data["at"]))
    if not ok:
        raise ValueError("a field is out of range")
    return Checkpoint(data["id"], data["hash"], data["rows"], data["alg"], data["head_at"],
                      data["at"])


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _is_time(v: object) -> bool:
    try:
        return isinstance(v, str) and datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def read_last(path: str) -> Checkpoint | None:
    """The newest checkpoint in the file; None when the file is empty. Every line is checked
    (and ids must not go backwards): a damaged file is reported, never skipped over."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError as exc:
        raise AnchorError(f"checkpoint file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorError(f"cannot read checkpoint file {path}: {_why(exc)}") from exc
    last: Checkpoint | None = None
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            cp = parse_line(text)
        except ValueError as exc:
            raise AnchorError(f"checkpoint file {path}, line {n}: {exc}") from exc
        if last is not None and cp.id < last.id:
            raise AnchorError(f"checkpoint file {path}, line {n}: row {cp.id} after row {last.id}")
        last = cp
    return last


def append(path: str, cp: Checkpoint) -> None:
    """Append one line and fsync it (and the directory, when the file is new)."""
    created = not os.path.exists(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a CLI run and the job never interleave lines
            os.write(fd, _lead(fd) + (cp.line() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        raise AnchorError(f"cannot write checkpoint file {path}: {_why(exc)}") from exc


def _lead(fd: int) -> bytes:
    """A newline first when a crash left the last line unfinished, so that line stays alone
    (and is reported by `read_last`) instead of swallowing this one."""
    size = os.fstat(fd).st_size
    return b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
