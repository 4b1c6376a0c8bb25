"""expire_requests: pending restore requests past their time are closed and the message says so."""

from __future__ import annotations

from bot.execute import Outcome, execute
from bot.render import approvals as ui
from bot.runtime import Services
from bot.services import restore_requests
from bot.services.directory import Actor
from bot.services.restore_requests import RequestView
from bot.slack.notifier import safe

NAME = "expire_requests"


def run(services: Services) -> Outcome[list[RequestView]]:
    s = services
    out = execute(s.db, s.clock, Actor.system(NAME), NAME, "restore_requests",
                  lambda session: restore_requests.expire(session, s.clock))
    for r in out.value or []:
        if r.channel and r.ts:
            text, blocks = ui.decided_message(r, s.tz)
            safe(s.notifier.update, r.channel, r.ts, text, blocks)
        safe(s.notifier.dm, r.requester, ui.requester_note(r))
    return out
