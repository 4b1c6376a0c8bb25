"""Reconcile: the database against IAM and Bedrock, hourly; drift fixed, recorded, told.

    plan    read_state: one short transaction, plain data out
    call    check_aws: IAM and Bedrock with no transaction open; before (and after) each IAM
            write the subject's revocation state is re-read in a short transaction of its
            own (`FOR UPDATE` on PostgreSQL before a deny is put back)
    record  profile statuses, principals kept on the revocations, one audit row per drift
    tell    the alert channel, after the commit (bot/render/reconcile.py)

Domain rules live in bot/services/reconcile.py.
"""

from __future__ import annotations

import logging

from bot.aws.access import IamAccess
from bot.aws.profiles import ProfilesBackend
from bot.clock import Clock
from bot.db import Database
from bot.flows.runner import step
from bot.render.reconcile import reconcile_message
from bot.runtime import Services
from bot.services import reconcile as rules
from bot.services.reconcile import ACTOR, ReconcileReport
from bot.slack.notifier import safe

log = logging.getLogger(__name__)
NAME = "reconcile"


def run(s: Services) -> ReconcileReport:
    report = reconcile(s.db, s.clock, s.access, s.profiles)
    log.info("reconcile: %d revoked subjects, %d principals, %d AIPs listed, %d drifts (%d failed)",
             report.revoked_subjects, report.principals_checked, report.profiles_listed,
             len(report.drifts), len(report.failures))
    message = reconcile_message(report)  # after the commit: the drifts are in the audit log
    channel = s.settings.bot.alert_channel
    if message is not None:
        if channel:
            safe(s.notifier.post, channel, message[0], message[1])
        else:
            log.warning("reconcile found %d drifts and no BOT_ALERT_CHANNEL is set", len(report.drifts))
    return report


def reconcile(db: Database, clock: Clock, iam: IamAccess, backend: ProfilesBackend) -> ReconcileReport:
    """Compare the database with AWS, restore what the database says, record every drift."""
    state = step(db, clock, ACTOR, NAME, "aws", rules.read_state)

    def revoked_now(subject_id: int, lock: bool) -> bool:
        return step(db, clock, ACTOR, NAME, "aws",
                    lambda session: rules.still_revoked(session, subject_id, lock))

    found = rules.check_aws(state, iam, backend, revoked_now)
    return step(db, clock, ACTOR, NAME, "aws", lambda session: rules.record(session, clock, found))
