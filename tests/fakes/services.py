"""A Services container for tests that drive flows directly (no Slack app around them)."""

from __future__ import annotations

from typing import Any

from bot.clock import Clock
from bot.config import load_settings
from bot.db import Database
from bot.runtime import Services
from bot.slack.notifier import Notifier, NullNotifier


def make_services(db: Database, clock: Clock, iam: Any = None, notifier: Notifier | None = None,
                  dry_run: bool = False, **env: str) -> Services:
    values = {"DATABASE_URL": db.url, "BOT_PROFILES_BACKEND": "local", "BOT_TIMEZONE": "UTC",
              "BOT_DRY_RUN": "1" if dry_run else "0", **env}
    settings = load_settings(None, **values)
    overrides: dict[str, Any] = {"account_id": "123456789012"}
    if iam is not None:
        overrides["iam"] = iam
    return Services(settings, db, clock, notifier or NullNotifier(), overrides)
