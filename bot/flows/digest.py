"""The daily digest: yesterday's usage, limits, revocations and requests, posted once per day.

Exactly once per (channel, day), across replicas and restarts, through the `digests` table:

1. **Claim** — INSERT the (channel, day) row in its own transaction *before* posting. The
   unique constraint makes a second replica, a second scheduler fire or a restarted bot
   fail that INSERT (IntegrityError): the digest is, or is being, posted; do nothing.
2. **Post** the message, then upload the chart PNG into its thread.
3. **Record** the message ts on the row, with an audit row (`digest.post`).

If building or posting fails, the claim is deleted so the next run retries (a digest that
never went out must not count as posted). If the process dies between claim and record,
the row keeps `ts IS NULL`; such a claim older than STALE_CLAIM is taken over by the next
run (a compare-and-set UPDATE, so only one run wins). A chart that fails to upload does not
undo the post: the message is out, posting it again would be the worse outcome; the channel is
told why instead (a file needs the bot in the channel, `not_in_channel`).

`force=True` (`/bedrock digest`, admins) posts now even when today's digest is out. When
nothing was posted yet it claims the row like a scheduled run, so the cron later skips;
otherwise it records nothing new in `digests` (only an audit row, `forced: true`).

`digests.day` is the local date the digest is *about* (yesterday in BOT_TIMEZONE), which
is one-to-one with the day it is posted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from bot.db import Database
from bot.errors import BotError
from bot.flows.runner import Outcome, execute
from bot.models import Digest
from bot.render.digest import chart_failed_text, digest_blocks, digest_chart
from bot.runtime import Services
from bot.services import audit, directory
from bot.services.digest import DigestData, build_digest, digest_day
from bot.services.directory import Actor
from bot.slack.notifier import Notifier, safe

log = logging.getLogger(__name__)
NAME = "daily_digest"
ACTOR = Actor.system(NAME)
STALE_CLAIM = timedelta(minutes=15)  # a claim without a ts this old is from a dead run

# (channel, png bytes, file name, title, thread ts or None)
Uploader = Callable[[str, bytes, str, str, str | None], None]


class DigestError(BotError):
    """The digest could not be built or posted (configuration, Slack or database)."""


@dataclass(frozen=True)
class DigestRun:
    channel: str
    day: date
    posted: bool  # a message went out in this run
    ts: str | None = None
    chart: str = "none"  # uploaded | failed | skipped (no uploader) | none
    forced: bool = False
    recorded: bool = False  # this run owns the (channel, day) row
    note: str = ""


def slack_uploader(client: Any) -> Uploader:
    """Upload through slack_sdk's `files_upload_v2` (getUploadURLExternal → upload →
    completeUploadExternal), into the digest's thread."""

    def upload(channel: str, png: bytes, filename: str, title: str, thread_ts: str | None) -> None:
        client.files_upload_v2(channel=channel, file=png, filename=filename, title=title,
                               thread_ts=thread_ts, alt_txt=title)

    return upload


def direct(notifier: Notifier) -> Notifier:
    """The notifier that really posts, past any store-and-retry wrapper (`OutboxNotifier`
    keeps a failed post and sends it later, returning None now). The digest needs the real
    outcome: the ts to thread its chart under, and a failure it can see, so that it releases
    its claim and a later run posts the whole digest, chart included."""
    seen = 0
    while getattr(notifier, "inner", None) is not None and seen < 5:
        notifier, seen = notifier.inner, seen + 1  # type: ignore[attr-defined]
    return notifier


def default_uploader(services: Services) -> Uploader | None:
    """The notifier's WebClient when it has one (SlackNotifier); none otherwise."""
    client = getattr(direct(services.notifier), "client", None)
    return slack_uploader(client) if client is not None and hasattr(client, "files_upload_v2") else None


def run(services: Services, force: bool = False, uploader: Uploader | None = None, *,
        actor: Actor | None = None) -> Outcome[DigestRun]:
    """Post yesterday's digest to BOT_DIGEST_CHANNEL unless it is already out.

    `actor` is who asked (the `/bedrock digest` command passes the Slack user; it must be
    an admin); scheduled runs are `system:daily_digest`.
    """
    s = services
    who = actor or ACTOR
    channel = s.settings.bot.digest_channel
    now = s.clock()
    day = digest_day(now, s.tz)
    target = f"digest:{channel or '-'}:{day.isoformat()}"

    def check(session: Any) -> None:
        directory.authorize(session, who, "admin", "digest")
        if not channel:
            raise DigestError("no digest channel configured: set BOT_DIGEST_CHANNEL to the id of "
                              "the channel the digest goes to (e.g. C0123456789)")

    checked = execute(s.db, s.clock, who, "digest.post", target, check)
    if not checked.ok or not channel:
        log.warning("daily_digest: %s", checked.message)
        return Outcome(error=checked.error)

    claim = _claim(s.db, channel, day.isoformat(), now)
    if claim is None and not force:
        log.info("daily_digest: %s is already posted (or being posted) for %s", channel, day)
        return Outcome(result=DigestRun(channel, day, posted=False, note="already posted"))

    try:
        with s.db.session_scope() as session:
            data = build_digest(session, now, s.tz, s.week_start,
                                bill_divergence_pct=s.settings.bot.bill_divergence_pct)
        text, blocks = digest_blocks(data, s.tz)
        chart = _render_chart(data)
        ts = direct(s.notifier).post(channel, text, blocks)
    except Exception as exc:  # Slack, network or database: nothing went out
        if claim is not None:
            _release(s.db, claim)  # so a later run (the next scheduler fire, a retry) posts it
        reason = f"the digest for {day} was not posted: {_why(exc)}"
        log.warning("daily_digest: %s", reason)
        _audit(s, who, target, {"channel": channel, "day": day.isoformat(), "forced": force,
                                "reason": reason, "claim_released": claim is not None}, "error")
        return Outcome(error=DigestError(reason))

    chart_state, chart_problem = _upload(uploader or default_uploader(s), channel, chart, ts)
    if chart_problem:  # said where the chart was expected, not only logged
        safe(s.notifier.post, channel, chart_failed_text(day.isoformat(), chart_problem))
    details = {"channel": channel, "day": day.isoformat(), "ts": ts, "forced": force,
               "chart": chart_state, "chart_problem": chart_problem, "tokens": data.totals.tokens,
               "cost_micro_usd": data.totals.cost_micro_usd, "recorded": claim is not None}
    try:
        with s.db.session_scope() as session:
            if claim is not None:
                # ts "" when the notifier gives none (NullNotifier): still "posted", not a claim.
                session.execute(update(Digest).where(Digest.id == claim)
                                .values(ts=ts or "", posted_at=s.clock()))
            audit.record(session, s.clock, who.label, "digest.post", target, details)
    except Exception:  # the message is out; a stale claim would repost it after STALE_CLAIM
        log.exception("daily_digest: posted %s to %s but could not record it", day, channel)
    log.info("daily_digest: posted %s to %s (ts %s, chart %s%s)", day, channel, ts, chart_state,
             ", forced" if force else "")
    return Outcome(result=DigestRun(channel, day, posted=True, ts=ts, chart=chart_state, forced=force,
                                   recorded=claim is not None))


def _claim(db: Database, channel: str, day: str, now: datetime) -> int | None:
    """The id of our (channel, day) row, or None when another run holds it."""
    try:
        with db.session_scope() as session:
            row = Digest(channel=channel, day=day, posted_at=now, ts=None)
            session.add(row)
            session.flush()
            return row.id
    except IntegrityError:
        return _take_over_stale(db, channel, day, now)


def _take_over_stale(db: Database, channel: str, day: str, now: datetime) -> int | None:
    with db.session_scope() as session:
        row = session.execute(select(Digest.id, Digest.posted_at).where(
            Digest.channel == channel, Digest.day == day, Digest.ts.is_(None))).first()
        if row is None or row.posted_at > now - STALE_CLAIM:
            return None
        # Compare-and-set on the old claim time: of two runs taking over, one wins.
        won = session.execute(update(Digest).where(
            Digest.id == row.id, Digest.ts.is_(None), Digest.posted_at == row.posted_at,
        ).values(posted_at=now)).rowcount  # type: ignore[attr-defined]
        if won != 1:
            return None
        log.warning("daily_digest: taking over a claim left by a run that did not finish (%s)", day)
        return int(row.id)


def _release(db: Database, claim: int) -> None:
    try:
        with db.session_scope() as session:
            session.execute(delete(Digest).where(Digest.id == claim, Digest.ts.is_(None)))
    except Exception:  # the claim goes stale and is taken over after STALE_CLAIM
        log.exception("daily_digest: could not release claim %s", claim)


def _render_chart(data: DigestData) -> tuple[bytes, str, str] | None:
    try:
        return digest_chart(data)
    except Exception:  # a chart bug must not cost the day its digest
        log.exception("daily_digest: chart rendering failed; posting without it")
        return None


def _upload(uploader: Uploader | None, channel: str, chart: tuple[bytes, str, str] | None,
            ts: str | None) -> tuple[str, str]:
    """(state, problem): the problem is "" unless a chart should have arrived and did not."""
    if chart is None:
        return "failed", "it could not be drawn (see the bot's log)"
    if uploader is None:
        log.info("daily_digest: no file uploader (no Slack client); chart not posted")
        return "skipped", ""
    png, filename, title = chart
    try:
        uploader(channel, png, filename, title, ts)
        return "uploaded", ""
    except Exception as exc:
        log.warning("daily_digest: chart upload failed: %s: %s", type(exc).__name__, str(exc)[:200])
        return "failed", _why(exc)


def _why(exc: Exception) -> str:
    """Slack's error code when Slack said no (`channel_not_found`), else the exception."""
    response = getattr(exc, "response", None)
    code = response.get("error") if response is not None and hasattr(response, "get") else None
    return f"Slack said {code}" if code else f"{type(exc).__name__}: {str(exc)[:300]}"


def _audit(s: Services, who: Actor, target: str, details: dict[str, Any], outcome: str) -> None:
    try:
        with s.db.session_scope() as session:
            audit.record(session, s.clock, who.label, "digest.post", target, details, outcome=outcome)
    except Exception:
        log.exception("daily_digest: could not audit %s", target)
