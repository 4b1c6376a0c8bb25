"""One log record, one line of bounded length.

Text from outside (request fields, exception messages quoting input) can hold newlines and
terminal escapes: written raw, a newline in it starts what looks like a record of its own,
and a large value floods the log. Every record is therefore written on one physical line,
control characters escaped (`\\n`, `\\x1b`, `\\u2028` …), the message cut at `MAX_MESSAGE`
characters and a traceback at its last `MAX_TRACE` characters. `install` puts this formatter
on the root handler `bedrock-bot` logs through; `oneline` is for values a caller formats
into a message itself.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

MAX_MESSAGE = 2000
MAX_TRACE = 4000
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 and C1 controls, DEL, Unicode line/paragraph separators, and the bidi controls that can
# make a line read differently from what it holds.
_SPECIAL = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029,
            *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F]
_ESCAPES = {c: _NAMED.get(chr(c)) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
            for c in _SPECIAL}


def escape(text: str) -> str:
    """`text` with every control character written as an escape: it cannot break a line."""
    return text.translate(_ESCAPES)


def oneline(value: object, limit: int = MAX_MESSAGE) -> str:
    """`value` as text on one line, at most `limit` characters plus a note of what was cut.
    Only the first `limit` characters are ever escaped, so a huge value costs little."""
    text = str(value)
    head = escape(text[:limit])
    if len(head) > limit or len(text) > limit:
        return f"{head[:limit]}… [{len(text)} chars, cut]"
    return head


def tail(value: str, limit: int = MAX_TRACE) -> str:
    """The last `limit` characters of `value` on one line (the end of a traceback says most)."""
    body = escape(value[-limit:])[-limit:]
    return body if len(value) <= limit else f"[cut {len(value) - limit} chars] …{body}"


class OneLineFormatter(logging.Formatter):
    """The standard format, with the message and any traceback kept on the record's line."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = oneline(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        if record.exc_info:
            line += " | " + tail(self.formatException(record.exc_info))
        if record.stack_info:
            line += " | " + tail(self.formatStack(record.stack_info))
        return line


def handler(stream: TextIO | None = None) -> logging.Handler:
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(OneLineFormatter(FORMAT))
    return out


def install(level: int, stream: TextIO | None = None) -> None:
    """What `logging.basicConfig` does, with the one-line formatter on the root handler."""
    logging.basicConfig(level=level, handlers=[handler(stream)])
