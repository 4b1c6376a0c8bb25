"""Backstops: the CloudWatch alarm or AWS Budget that backs up a limit (defence in depth).

`plan_backstop` (database) → `apply_backstop` (AWS, no session) → `record_backstop` (audit)
makes AWS match one limit, idempotently: it puts the alarm/budget the limit can have and
deletes any of that limit's that it should no longer have. `apply_removal` deletes them when
the limit goes. The bot's own minute-by-minute evaluation stays the enforcement; these only
notify ``BOT_ALARM_TOPIC_ARN`` (see docs/alarms-and-budgets.md for what each limit gets).

Names encode the limit id (``bedrock-bot-limit-<id>``), so a notification maps back to its limit.

AWS failures do not fail the caller by default: a limit is still set when CloudWatch or Budgets
refuses, the failure is in `BackstopResult.errors` and the audit row has outcome ``error``. Pass
``strict=True`` to raise the `AwsError` instead (the caller's transaction then rolls back).
Planning and recording take a Session and flush only; applying takes no session, so no
database lock is held while CloudWatch or Budgets answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.aws.alarms import Alarms, alarm_matches, parse_alarm_name, plan_alarms
from bot.aws.budgets import Budgets, budget_name, parse_budget_name, plan_budget
from bot.clock import Clock
from bot.errors import AwsError
from bot.models import Limit, Profile, Subject, TeamMember
from bot.services import audit, directory, prices

ACTOR = "system:backstops"
ALARM_OFF = "alarm=off: no CloudWatch alarm or AWS Budget for this limit"
NO_TOPIC = "no BOT_ALARM_TOPIC_ARN: no CloudWatch alarm or AWS Budget (nothing to notify)"
NO_BUDGETS = "AWS Budgets is not configured for the bot: no budget for this $ limit"

T = TypeVar("T")


@dataclass(frozen=True)
class BackstopResult:
    alarms: list[str]  # the limit's alarms in AWS after the sync
    budget: str | None  # the limit's budget in AWS after the sync
    notes: list[str]  # why something the limit might have was not made
    deleted: list[str] = field(default_factory=list)  # alarms/budgets removed by this call
    errors: list[str] = field(default_factory=list)  # AWS failures (outcome "error")
    changes: dict[str, str] = field(default_factory=dict)  # name -> created | updated | deleted

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _Run:
    strict: bool
    errors: list[str] = field(default_factory=list)

    def attempt(self, fn: Callable[[], T]) -> T | None:
        try:
            return fn()
        except AwsError as exc:
            if self.strict:
                raise
            self.errors.append(str(exc))
            return None


def backstopped_profiles(session: Session, subject: Subject) -> list[Profile]:
    """The AIPs a limit on `subject` counts: its own, and for a team every member's too."""
    ids = directory.covered_subject_ids(session, subject)
    return list(session.scalars(select(Profile).where(Profile.subject_id.in_(ids))
                                .order_by(Profile.profile_id)))


def cost_tags(session: Session, subject: Subject, profiles: list[Profile]) -> list[tuple[str, str]]:
    """(tag key, value) pairs whose cost a budget for `subject` counts: each covered subject's own
    ``<kind>=<name>`` (what the bot tags new AIPs with) and the binding tag of each adopted AIP
    (``team=`` wins over ``user=``, as when adopting)."""
    pairs: set[tuple[str, str]] = set()
    for sid in directory.covered_subject_ids(session, subject):
        covered = session.get(Subject, sid)
        if covered is not None:
            pairs.add((covered.kind, covered.name))
    for p in profiles:
        tags: dict[str, Any] = p.tags or {}
        for key in ("team", "user"):
            if isinstance(tags.get(key), str) and tags[key]:
                pairs.add((key, tags[key]))
                break
    return sorted(pairs)


def budget_services(session: Session, profiles: list[Profile]) -> tuple[list[str], list[str]]:
    """Marketplace service names for the budget's Service filter, and a note for models whose
    name is not known yet (their spend escapes the budget until `prices refresh` finds it)."""
    found, unknown = prices.marketplace_services(session, [p.model_id for p in profiles])
    notes = [f"AWS Budget does not see {', '.join(unknown)} yet: it bills under its Marketplace "
             "service name, learnt by `bedrock-bot prices refresh`"] if unknown else []
    return found, notes


@dataclass(frozen=True)
class BackstopPlan:
    """What AWS should hold for one limit, read in a transaction and applied after it."""

    limit_id: int
    target: str  # audit target: the subject, or limit:<id> when it is gone
    metric: str
    window: str
    is_cost: bool
    want_alarms: list[dict[str, Any]]
    want_budget: dict[str, Any] | None
    notes: list[str]
    remove: bool = False  # the limit's subject is gone: delete whatever it has


def plan_backstop(session: Session, limit: Limit, topic_arn: str | None, account_id: str,
                  budgets_enabled: bool, amount: int | None = None) -> BackstopPlan:
    """`amount`: the effective amount (the limit's plus its active raises); the limit's own
    amount when not given."""
    amount = limit.amount if amount is None else amount
    subject = session.get(Subject, limit.subject_id)
    if subject is None:  # the limit's subject is gone: nothing to guard
        return BackstopPlan(limit.id, f"limit:{limit.id}", limit.metric, limit.window, False, [], None, [],
                            remove=True)
    notes: list[str] = []
    want_alarms: list[dict[str, Any]] = []
    want_budget: dict[str, Any] | None = None
    is_cost = limit.metric == "cost_usd"
    if not limit.alarm:
        notes.append(ALARM_OFF)
    elif not topic_arn:
        notes.append(NO_TOPIC)
    else:
        profiles = backstopped_profiles(session, subject)
        if is_cost:
            if not budgets_enabled:
                notes.append(NO_BUDGETS)
            else:
                services, service_notes = budget_services(session, profiles)
                want_budget, budget_notes = plan_budget(
                    account_id, limit.id, subject.kind, subject.name, amount, limit.window,
                    limit.warn or [], topic_arn, tags=cost_tags(session, subject, profiles),
                    services=services)
                notes.extend(budget_notes + (service_notes if want_budget else []))
        else:
            want_alarms, note = plan_alarms(limit.id, [p.profile_id for p in profiles], limit.metric,
                                            amount, limit.window, topic_arn, subject=subject.name)
            if note:
                notes.append(note)
    return BackstopPlan(limit.id, f"{subject.kind}:{subject.name}", limit.metric, limit.window, is_cost,
                        want_alarms, want_budget, notes)


def apply_backstop(plan: BackstopPlan, alarms: Alarms, budgets: Budgets | None,
                   strict: bool = False) -> BackstopResult:
    """Make AWS match the plan (no session): an alarm already right is not rewritten; a
    budget is rewritten only where it differs."""
    if plan.remove:
        return apply_removal(plan.limit_id, alarms, budgets, strict)
    run = _Run(strict)
    deleted: list[str] = []
    changes: dict[str, str] = {}  # name -> created | updated | deleted
    present = run.attempt(partial(alarms.for_limit, plan.limit_id))
    kept_alarms: list[str] = []
    for spec in plan.want_alarms:
        name = spec["AlarmName"]
        current = (present or {}).get(name)
        if current is not None and alarm_matches(current, spec):
            kept_alarms.append(name)
        elif _done(run, partial(alarms.put, spec)):
            kept_alarms.append(name)
            changes[name] = "updated" if current is not None else "created"
        elif current is not None:  # the put failed: the old one is still there
            kept_alarms.append(name)
    if present is not None:
        wanted_names = {spec["AlarmName"] for spec in plan.want_alarms}
        stale = sorted(n for n in present if n not in wanted_names)
        if stale and _done(run, partial(alarms.delete, stale)):
            deleted.extend(stale)
        elif stale:
            kept_alarms.extend(stale)

    budget: str | None = None
    if budgets is not None and plan.is_cost:
        name = budget_name(plan.limit_id)
        if plan.want_budget is not None:
            change = run.attempt(partial(budgets.put, plan.want_budget))
            budget = name if change is not None else None
            if change in ("created", "updated"):
                changes[name] = change
        elif run.attempt(partial(budgets.delete, name)):
            deleted.append(name)
    changes.update((n, "deleted") for n in deleted)
    return BackstopResult(sorted(kept_alarms), budget, list(plan.notes), sorted(deleted), list(run.errors),
                          changes=dict(sorted(changes.items())))


def record_backstop(session: Session, clock: Clock, actor: str, plan: BackstopPlan, result: BackstopResult,
                    audit_unchanged: bool = True) -> None:
    """Audit what the sync did (``backstops.sync``; with ``audit_unchanged=False`` only when
    something changed or failed)."""
    if plan.remove:
        record_removal(session, clock, actor, plan.limit_id, result)
    elif audit_unchanged or result.changes or result.errors:
        audit.record(session, clock, actor, "backstops.sync", plan.target,
                     {"limit_id": plan.limit_id, "metric": plan.metric, "window": plan.window,
                      "alarms": result.alarms, "budget": result.budget, "changes": result.changes,
                      "notes": result.notes, "errors": result.errors},
                     outcome="ok" if result.ok else "error")


def sync_backstops(session: Session, clock: Clock, limit: Limit, alarms: Alarms, budgets: Budgets | None,
                   topic_arn: str | None, account_id: str, *, actor: str = ACTOR, strict: bool = False,
                   audit_unchanged: bool = True) -> BackstopResult:
    """Plan, apply and record in the caller's transaction (the hourly sweep, tests). A flow
    that must not hold a transaction across AWS uses the three steps itself."""
    plan = plan_backstop(session, limit, topic_arn, account_id, budgets is not None)
    result = apply_backstop(plan, alarms, budgets, strict)
    record_backstop(session, clock, actor, plan, result, audit_unchanged)
    return result


def apply_removal(limit_id: int, alarms: Alarms, budgets: Budgets | None,
                  strict: bool = False) -> BackstopResult:
    """Delete every alarm and the budget of limit `limit_id` (no session)."""
    run = _Run(strict)
    deleted: list[str] = []
    left: list[str] = []
    present = run.attempt(partial(alarms.names_for, limit_id))
    if present:
        if _done(run, partial(alarms.delete, present)):
            deleted.extend(present)
        else:
            left.extend(present)
    budget: str | None = None
    if budgets is not None:
        name = budget_name(limit_id)
        gone = run.attempt(partial(budgets.delete, name))
        if gone:
            deleted.append(name)
        elif gone is None:  # failed: it may still be there
            budget = name
    return BackstopResult(sorted(left), budget, [], sorted(deleted), list(run.errors),
                          changes={n: "deleted" for n in sorted(deleted)})


def record_removal(session: Session, clock: Clock, actor: str, limit_id: int, result: BackstopResult,
                   target: str | None = None) -> None:
    audit.record(session, clock, actor, "backstops.remove", target or f"limit:{limit_id}",
                 {"limit_id": limit_id, "deleted": result.deleted, "errors": result.errors},
                 outcome="ok" if result.ok else "error")


def remove_backstops(session: Session, clock: Clock, limit_id: int, alarms: Alarms,
                     budgets: Budgets | None, *, actor: str = ACTOR, target: str | None = None,
                     strict: bool = False) -> BackstopResult:
    """Delete and record in the caller's transaction (tests; flows use the two steps)."""
    result = apply_removal(limit_id, alarms, budgets, strict)
    record_removal(session, clock, actor, limit_id, result, target)
    return result


def affected_limits(session: Session, subject_id: int) -> list[Limit]:
    """Limits whose backstops change when `subject_id` gains or loses an AIP or a team membership:
    its own and those of the teams it belongs to."""
    teams = select(TeamMember.team_id).where(TeamMember.user_id == subject_id)
    q = select(Limit).where((Limit.subject_id == subject_id) | Limit.subject_id.in_(teams))
    return list(session.scalars(q.order_by(Limit.id)))


def sync_all_backstops(session: Session, clock: Clock, alarms: Alarms, budgets: Budgets | None,
                    topic_arn: str | None, account_id: str, *,
                    actor: str = ACTOR) -> tuple[list[BackstopResult], list[str]]:
    """Sync every limit, then delete the bot's alarms/budgets whose limit no longer exists
    (e.g. a removal whose AWS call failed). Returns (results, orphans deleted). For the
    reconcile job; never raises on AWS errors (each limit's result carries them)."""
    limits = list(session.scalars(select(Limit).order_by(Limit.id)))
    results = [sync_backstops(session, clock, limit, alarms, budgets, topic_arn, account_id, actor=actor,
                           audit_unchanged=False) for limit in limits]
    known = {limit.id for limit in limits}
    run = _Run(strict=False)
    orphans: list[str] = []
    names = run.attempt(alarms.list_ours) or []
    stale = [n for n in names if (p := parse_alarm_name(n)) is not None and p[0] not in known]
    if stale and _done(run, partial(alarms.delete, stale)):
        orphans.extend(stale)
    if budgets is not None:
        for name in run.attempt(budgets.list_ours) or []:
            lid = parse_budget_name(name)
            if lid is not None and lid not in known and run.attempt(partial(budgets.delete, name)):
                orphans.append(name)
    if orphans or run.errors:
        audit.record(session, clock, actor, "backstops.orphans", "backstops",
                     {"deleted": sorted(orphans), "errors": run.errors},
                     outcome="ok" if not run.errors else "error")
    return results, sorted(orphans)


def _done(run: _Run, fn: Callable[[], None]) -> bool:
    """Run an AWS call that returns nothing; True when it succeeded."""
    before = len(run.errors)
    run.attempt(fn)
    return len(run.errors) == before

