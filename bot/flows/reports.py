"""Read-only answers: usage, limits, profiles, the audit trail. One read-only transaction each
(on SQLite it neither takes nor waits for the write lock; a refusal — not allowed to see it, no
such subject — leaves an audit row, written in a transaction of its own)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bot.flows.runner import step
from bot.runtime import Services
from bot.services import audit, directory, limits, usage
from bot.services.audit import AuditLine
from bot.services.directory import Actor, SubjectRef
from bot.services.limits import LimitView
from bot.services.usage import UsageReport


def usage_report(s: Services, actor: Actor, ref: SubjectRef | None, period: str | None) -> UsageReport:
    return step(s.db, s.clock, actor, "usage.view", str(ref or actor.label), lambda session: usage.report(
        session, s.clock, s.tz, s.week_start, actor, ref, period), read_only=True)


def list_limits(s: Services, actor: Actor, ref: SubjectRef | None) -> list[LimitView]:
    return step(s.db, s.clock, actor, "limit.list", str(ref or "all"),
                lambda session: limits.list_limits(session, ref, s.clock()), read_only=True)


def audit_trail(s: Services, actor: Actor, ref: SubjectRef | None, count: int) -> list[AuditLine]:
    def work(session: Session) -> list[AuditLine]:
        directory.authorize(session, actor, "admin", "audit")
        target = None
        if ref is not None:
            subject = directory.get(session, ref)
            target = f"{subject.kind}:{subject.name}"
        return audit.recent(session, target, count)

    return step(s.db, s.clock, actor, "audit.view", str(ref or "all"), work, read_only=True)
