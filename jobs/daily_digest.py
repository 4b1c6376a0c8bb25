"""daily_digest: the scheduled run of the digest flow (`bot.flows.digest`)."""

from __future__ import annotations

from bot.flows.digest import NAME, run

__all__ = ["NAME", "run"]
