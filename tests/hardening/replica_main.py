"""`bedrock-bot` for the multi-process tests, with a short scheduler lease.

The lease TTL is not configurable (`jobs.scheduler.DEFAULT_LEASE_TTL`, 90 s), and a takeover
test must not wait three minutes, so this entry point shortens the default from
HARDENING_LEASE_SECONDS and then runs the real `handlers.main.main()` — everything else is
the shipped `serve`.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

from handlers.main import main
from jobs import scheduler


def _short_lease() -> None:
    seconds = os.environ.get("HARDENING_LEASE_SECONDS")
    if not seconds:
        return
    scheduler.DEFAULT_LEASE_TTL = timedelta(seconds=float(seconds))


if __name__ == "__main__":
    _short_lease()
    sys.exit(main())
