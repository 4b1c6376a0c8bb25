"""The digest's Block Kit (a snapshot: `UPDATE_SNAPSHOTS=1` rewrites it), its limits (blocks,
section length, escaping) and the chart PNG (a real PNG of exactly 1200×600)."""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.render.chart import stacked_chart_png
from bot.render.digest import age, digest_blocks, digest_chart
from bot.services.digest import (
    OTHERS,
    AtRisk,
    ChartData,
    DigestData,
    PendingLine,
    RevokedLine,
    SubjectDay,
)
from bot.services.ledger import Totals
from bot.services.limit_usage import LimitStatus

SNAPSHOT = Path(__file__).parent / "snapshots" / "digest_blocks.json"
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
DAYS = [date(2026, 11, 11) + timedelta(days=i) for i in range(14)]


def utc(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def status(limit_id: int, subject: str, metric: str, amount: int, window: str, used: int,
           start: datetime, end: datetime, action: str = "revoke") -> LimitStatus:
    return LimitStatus(limit_id, subject, metric, amount, window, used, start, end, action, (80, 90))


def sample() -> DigestData:
    top = [
        SubjectDay("team-ml", "team", None, Totals(7_500_000, 750_000, 0, 0, 1200, 47_000_000),
                   Totals(2_000_000, 200_000, 0, 0, 400, 9_500_000)),
        SubjectDay("alice", "user", "UALICE01", Totals(3_000_000, 300_000, 0, 0, 600, 15_000_000),
                   Totals(3_000_000, 300_000, 0, 0, 600, 15_000_000)),
        SubjectDay("bob", "user", "UBOB0001", Totals(500, 50, 0, 0, 1, 2_000), Totals()),
    ]
    at_risk = [
        AtRisk(status(2, "team-ml", "cost_usd", 50_000_000, "week", 56_500_000, utc(22, 23), utc(29, 23)),
               "team", 162_256_410),
        AtRisk(status(1, "alice", "tokens", 8_000_000, "month", 7_550_000, utc(1) - timedelta(hours=1),
                      utc(30, 23), action="notify"), "user", 9_268_000),
        AtRisk(status(5, "erin", "tokens", 45_000, "30d", 40_000, NOW - timedelta(days=30), NOW), "user",
               None),
    ]
    revoked = [
        RevokedLine(7, "carol", "user", "manual", "<!channel> over budget & more", utc(24, 12),
                    "slack:UADMIN01"),
        RevokedLine(8, "team-ml", "team", "limit", "", utc(25, 7), "system:enforce"),
    ]
    requests = [PendingLine(3, "carol", "UCAROL01", "demo <at> 3pm & <@U999>", utc(25, 5, 30),
                            timedelta(hours=2, minutes=30))]
    series = {"alice": [1_000_000 * i for i in range(14)], "team-ml": [400_000] * 14,
              OTHERS: [25_000] * 14}
    chart = ChartData(DAYS, series, [sum(v[i] for v in series.values()) for i in range(14)])
    return DigestData(day=date(2026, 11, 24), start=utc(23, 23), end=utc(24, 23), now=NOW,
                      tz_name="Europe/Berlin", totals=Totals(11_000_500, 1_050_050, 0, 0, 1801, 62_002_000),
                      previous=Totals(5_000_000, 500_000, 0, 0, 1000, 24_500_000), top=top,
                      at_risk=at_risk, revocations=revoked, requests=requests, chart=chart, subjects=top)


def test_blocks_match_the_snapshot() -> None:
    text, blocks = digest_blocks(sample(), BERLIN)
    got = {"text": text, "blocks": blocks}
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(got, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not SNAPSHOT.exists():
        pytest.fail(f"no snapshot at {SNAPSHOT}: run with UPDATE_SNAPSHOTS=1 to write it")
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert got == expected, "digest blocks changed: review, then rerun with UPDATE_SNAPSHOTS=1"


def _all_text(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_user_text_is_escaped_and_nobody_but_the_requester_is_mentioned() -> None:
    _, blocks = digest_blocks(sample(), BERLIN)
    body = _all_text(blocks)
    assert "<!channel>" not in body and "&lt;!channel&gt; over budget &amp; more" in body
    assert "demo &lt;at&gt; 3pm &amp; &lt;@U999&gt;" in body
    assert "<@UCAROL01>" in body  # the requester
    assert "<@UALICE01>" not in body and "<@UADMIN01>" not in body


def test_empty_sections_say_so() -> None:
    d = sample()
    empty = DigestData(d.day, d.start, d.end, d.now, d.tz_name, Totals(), Totals(), [], [], [], [],
                       ChartData(DAYS, {}, [0] * 14))
    text, blocks = digest_blocks(empty, BERLIN)
    assert text.startswith("Bedrock digest for 2026-11-24: 0 tokens (—), $0.00 (—)")
    body = _all_text(blocks)
    for line in ("_No usage._", "_Nobody._", "_None._"):
        assert line in body


def test_huge_lists_fit_slacks_limits() -> None:
    d = sample()
    many_risks = [d.at_risk[0]] * 3000
    many_revoked = [d.revocations[0]] * 3000
    many_requests = [d.requests[0]] * 3000
    big = DigestData(d.day, d.start, d.end, d.now, d.tz_name, d.totals, d.previous, d.top * 100,
                     many_risks, many_revoked, many_requests, d.chart)
    _, blocks = digest_blocks(big, BERLIN)
    assert len(blocks) <= 50
    for b in blocks:
        if b["type"] == "section" and "text" in b:
            assert len(b["text"]["text"]) <= 3000
    cut = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b
           and re.search(r"\n_…and \d+ more_$", b["text"]["text"])]
    assert len(cut) == 4  # top, at risk, revoked, requests: each says how many did not fit


def test_age() -> None:
    assert [age(timedelta(minutes=m)) for m in (0, 5, 60, 150, 24 * 60 + 61)] == [
        "0m", "5m", "1h 0m", "2h 30m", "1d 1h"]


# ---- the chart ------------------------------------------------------------------------


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk (checking its CRC)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert (length, kind) == (13, b"IHDR")
    data, crc = png[16:29], struct.unpack(">I", png[29:33])[0]
    assert zlib.crc32(kind + data) == crc
    width, height = struct.unpack(">II", data[:8])
    return width, height


def test_the_chart_is_a_1200_by_600_png() -> None:
    png, filename, title = digest_chart(sample())
    assert png_size(png) == (1200, 600) and png.endswith(b"IEND\xaeB`\x82")
    assert filename == "bedrock-usage-2026-11-24.png"
    assert title == "Bedrock tokens per day, 2026-11-11 to 2026-11-24 (Europe/Berlin)"


@pytest.mark.parametrize("series", [
    {},
    {"alice": [0] * 14},
    {f"user{i}": [i * 10**12] * 14 for i in range(9)},  # more series than colours, huge values
    {"short": [5]},  # fewer values than days
])
def test_the_chart_renders_any_series_at_the_same_size(series: dict[str, list[int]]) -> None:
    assert png_size(stacked_chart_png(DAYS, series, "t" * 500)) == (1200, 600)


def test_the_chart_with_no_days() -> None:
    assert png_size(stacked_chart_png([], {}, "nothing")) == (1200, 600)
