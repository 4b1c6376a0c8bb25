"""The one path every entry point takes: session_scope → service → result.

A service raises a BotError to refuse or fail; the transaction then rolls back (nothing
half-written) and the refusal is audited in a fresh transaction, so a `denied` or `error`
row survives even though the action's own changes did not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.orm import Session

from bot.clock import Clock
from bot.db import Database
from bot.errors import BadInput, BotError
from bot.services import audit
from bot.services.directory import Actor

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome(Generic[T]):
    value: T | None = None
    error: BotError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def message(self) -> str:
        """The one-line reason, with the usage line when the input was at fault."""
        if self.error is None:
            return ""
        if isinstance(self.error, BadInput) and self.error.usage:
            return f"{self.error}\nUsage: `{self.error.usage}`"
        return str(self.error)


def execute(db: Database, clock: Clock, actor: Actor, action: str, target: str,
            work: Callable[[Session], T]) -> Outcome[T]:
    """Run `work` in one transaction; on a BotError roll back and audit the refusal."""
    try:
        with db.session_scope() as session:
            return Outcome(value=work(session))
    except BotError as exc:
        log.info("%s by %s refused: %s", action, actor.label, exc)
        with db.session_scope() as session:
            audit.record(session, clock, actor.label, action, target,
                         {"reason": str(exc)[:500]}, outcome=exc.outcome)
        return Outcome(error=exc)
    except Exception as exc:
        _audit_failure(db, clock, actor, action, target, exc)
        raise


def _audit_failure(db: Database, clock: Clock, actor: Actor, action: str, target: str,
                   exc: Exception) -> None:
    """Best effort: with the database itself down there is nowhere to write it."""
    try:
        with db.session_scope() as session:
            audit.record(session, clock, actor.label, action, target,
                         {"reason": f"{type(exc).__name__}: {str(exc)[:200]}"}, outcome="error")
    except Exception:
        log.warning("could not audit the failure of %s", action)
