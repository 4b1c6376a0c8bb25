"""Running one step of a flow: a transaction whose refusal is audited.

A service raises a BotError to refuse or fail; the transaction then rolls back (nothing
half-written) and the refusal is audited in a fresh transaction, so a `denied` or `error`
row survives even though the step's own changes did not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db import Database
from bot.errors import BadInput, BotError
from bot.services import audit
from bot.services.directory import Actor

T = TypeVar("T")
log = logging.getLogger(__name__)


def step(db: Database, clock: Clock, actor: Actor, action: str, target: str,
         work: Callable[[Session], T], read_only: bool = False) -> T:
    """Run `work` in one transaction; on a BotError roll back, audit the refusal, re-raise.
    `read_only`: `work` only reads (on SQLite it then neither takes nor waits for the write lock)."""
    def run() -> T:
        with db.session_scope(read_only=read_only) as session:
            return work(session)
    return audited(db, clock, actor, action, target, run)


def audited(db: Database, clock: Clock, actor: Actor, action: str, target: str, fn: Callable[[], T]) -> T:
    """`step` for a transaction `fn` runs itself (a pipelined one): its failure is audited, re-raised."""
    try:
        return fn()
    except BotError as exc:
        log.info("%s by %s refused: %s", action, actor.label, exc)
        audit_refusal(db, clock, actor, action, target, str(exc), exc.outcome)
        raise
    except Exception as exc:
        audit_refusal(db, clock, actor, action, target, f"{type(exc).__name__}: {str(exc)[:200]}",
                      "error")
        exc.bot_audited = True  # type: ignore[attr-defined]
        raise


def already_audited(exc: BaseException) -> bool:
    """A failure `step` audited (a BotError always is, by whoever raised it), so the entry
    point that answers it does not audit it twice."""
    return isinstance(exc, BotError) or bool(getattr(exc, "bot_audited", False))


def call(db: Database, clock: Clock, actor: Actor, action: str, target: str, fn: Callable[[], T]) -> T:
    """An AWS call made with no transaction open; a refusal is audited, then re-raised."""
    try:
        return fn()
    except BotError as exc:
        audit_refusal(db, clock, actor, action, target, str(exc), exc.outcome)
        raise


def audit_refusal(db: Database, clock: Clock, actor: Actor, action: str, target: str,
                  reason: str, outcome: str = "denied") -> None:
    """Best effort: with the database itself down there is nowhere to write it."""
    try:
        with db.session_scope() as session:
            audit.record(session, clock, actor.label, action, target, {"reason": reason[:500]},
                         outcome=outcome)
    except Exception:
        log.warning("could not audit the refusal of %s", action)


def explain(error: BotError) -> str:
    """The one-line reason, with the usage line when the input was at fault."""
    if isinstance(error, BadInput) and error.usage:
        return f"{error}\nUsage: `{error.usage}`"
    return str(error)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a job returns: its result, or the refusal that ended it."""

    result: T | None = None
    error: BotError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def value(self) -> T:
        if self.error is not None:
            raise ValueError(f"no value: the step failed ({self.error})")
        return cast(T, self.result)

    @property
    def message(self) -> str:
        return "" if self.error is None else explain(self.error)


def attempt(fn: Callable[[], T]) -> Outcome[T]:
    """Turn a flow's refusal into an Outcome (for jobs and the CLI)."""
    try:
        return Outcome(result=fn())
    except BotError as exc:
        return Outcome(error=exc)


def execute(db: Database, clock: Clock, actor: Actor, action: str, target: str,
            work: Callable[[Session], T]) -> Outcome[T]:
    """`step` as an Outcome."""
    return attempt(lambda: step(db, clock, actor, action, target, work))
