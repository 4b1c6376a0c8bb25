"""After a commit: tell the alert channel and the people affected. Never raises."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from bot.render import enforcement as alerts
from bot.services.access import RevocationView
from bot.services.enforce import EnforceResult
from bot.slack.notifier import Notifier, safe


def _post(notifier: Notifier, channel: str | None, reply: tuple[str, list[dict[str, Any]]]) -> None:
    if channel:
        safe(notifier.post, channel, reply[0], reply[1])


def _dm_all(notifier: Notifier, users: tuple[str, ...], reply: tuple[str, list[dict[str, Any]]]) -> None:
    for user in users:
        safe(notifier.dm, user, reply[0], reply[1])


def enforcement(notifier: Notifier, channel: str | None, tz: ZoneInfo, result: EnforceResult) -> None:
    for w in result.warnings:
        msg = alerts.warning_message(w, tz)
        _post(notifier, channel, msg)
        _dm_all(notifier, w.users, msg)
    for g in result.graces:
        msg = alerts.grace_message(g, tz)
        _post(notifier, channel, msg)
        _dm_all(notifier, g.users, msg)
    for b in result.breaches:
        msg = alerts.breach_message(b, tz)
        _post(notifier, channel, msg)
        _dm_all(notifier, b.revocation.affected_users, msg)
    for r in result.restored:
        restored(notifier, channel, [r], "the bot (the limit's window has room again)")
    if result.reasserted and channel:
        names = ", ".join(f"`{n}`" for n in result.reasserted)
        safe(notifier.post, channel, f"🔁 Deny policy put back for {names}: it was missing or changed "
             "outside the bot, or a principal was linked since the revocation.")


def revoked(notifier: Notifier, channel: str | None, r: RevocationView, actor_id: str | None) -> None:
    msg = alerts.manual_revoke_message(r, actor_id)
    _post(notifier, channel, msg)
    _dm_all(notifier, r.affected_users, msg)


def restored(notifier: Notifier, channel: str | None, revs: list[RevocationView], by: str,
             note: str = "") -> None:
    if not revs:
        return
    msg = alerts.restored_message(revs, by, note)
    _post(notifier, channel, msg)
    _dm_all(notifier, revs[0].affected_users, msg)
