"""One way every Slack listener ends: the flow's answer, or a polite one-line reason."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError

from bot.errors import BotError
from bot.flows.runner import already_audited, explain

log = logging.getLogger(__name__)
DB_DOWN = ("⚠️ the bot's database is not answering right now; nothing was changed. "
           "Please try again in a minute.")
SORRY = ("⚠️ something went wrong on our side; nothing was changed and it has been logged. "
         "Please try again in a minute.")


Record = Callable[[str], None]


@contextmanager
def answering(tell: Callable[[str], None], record: Record | None = None) -> Iterator[None]:
    """A refusal (already audited by the flow) or a database outage becomes the reply; any
    other failure is logged here and answered with an apology, never a stack trace. A
    failure no flow step audited is given to `record` (an audit row, best effort)."""
    try:
        yield
    except BotError as exc:
        tell(f"⚠️ {explain(exc)}")
    except DBAPIError as exc:
        log.exception("database error while answering")
        _record(record, exc)
        tell(DB_DOWN)
    except Exception as exc:
        log.exception("unexpected failure while answering")
        _record(record, exc)
        tell(SORRY)


def _record(record: Record | None, exc: Exception) -> None:
    if record is not None and not already_audited(exc):
        record(f"{type(exc).__name__}: {str(exc)[:200]}")
