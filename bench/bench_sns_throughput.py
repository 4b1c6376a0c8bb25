"""SNS notifications verified and stored per second in one process, on SQLite and PostgreSQL.

Target (DESIGN.md §6): ≥ 200 notifications/s per process, verified + stored.

What `/sns` runs for each body, called in-process: `handlers.sns.SnsEndpoint(services,
services.sns_verifier())` — signature check (RSA-2048, pinned certificate, cached after the first
message), topic allow-list, age; then one transaction that claims the MessageId in `sns_messages`
(dedupe), parses the message, records the outcome and appends an audit event (hash chain). The
messages need no IAM: an unrecognised body (posted as-is) and a CloudWatch alarm that is not the
bot's (`posted`); then every message delivered a second time (`duplicate`: 200, nothing changed).
No alert channel is configured, so nothing is sent to Slack. Bodies are signed before the clock
starts. The baseline is verification alone (bench_sns_verify.py's figure) on the same bodies.

    .venv/bin/python bench/bench_sns_throughput.py [--db both|sqlite|postgres] [-n 3000]
        [--threads 8] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select

from bench.common import BenchDb, databases, git_revision, load_average, machine, table, verdict
from bot.config import load_settings
from bot.migrate import upgrade
from bot.models import SnsMessage
from bot.runtime import build_services
from bot.services import audit
from handlers.sns import SnsEndpoint
from tests.fakes.sns_signing import make_notification, write_cert

TARGET_PER_S = 200.0
TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alarms"
UNRECOGNISED = "Deployment of bedrock-gateway finished: 3 tasks healthy."
FOREIGN_ALARM = json.dumps({
    "AlarmName": "payments-api-5xx", "AlarmDescription": None, "AWSAccountId": "123456789012",
    "NewStateValue": "ALARM", "NewStateReason": "Threshold Crossed: 1 datapoint [12.0] was greater than 5.0.",
    "StateChangeTime": "2026-11-25T10:29:41.123+0000", "Region": "US East (N. Virginia)",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:payments-api-5xx", "OldStateValue": "OK",
    "Trigger": {"MetricName": "5XXError", "Namespace": "AWS/ApiGateway", "Statistic": "SUM",
                "Dimensions": [{"name": "ApiName", "value": "payments"}], "Period": 60,
                "EvaluationPeriods": 1, "Threshold": 5.0, "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "missing"},
})


@dataclass
class Figure:
    name: str
    n: int  # messages per round
    rates: list[float]  # messages per second, one per round

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


def sign(n: int, message: str, subject: str | None) -> list[bytes]:
    return [json.dumps(make_notification(message, TOPIC, subject=subject, version="2")).encode()
            for _ in range(n)]


def timed(name: str, bodies: list[bytes], work: Callable[[bytes], tuple[int, str]], threads: int,
          expect: str) -> float:
    began = time.perf_counter()
    if threads == 1:
        answers = [work(b) for b in bodies]
    else:
        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(work, bodies))
    seconds = time.perf_counter() - began
    wrong = [a for a in answers if a != (200, expect)]
    if wrong:
        raise SystemExit(f"{name}: expected (200, {expect!r}), got {wrong[:3]} …")
    return len(bodies) / seconds


def run_db(db: BenchDb, certs: str, kinds: dict[str, tuple[str, list[bytes]]], threads: int,
           rounds: int) -> tuple[list[Figure], float]:
    """Every (kind, threads) figure is measured in `rounds` rounds, interleaved, so that a slow spell
    of the machine falls on all of them alike; each round sends fresh messages."""
    upgrade(db.url)
    settings = load_settings(None, DATABASE_URL=db.url, BOT_PROFILES_BACKEND="local",
                             BOT_SNS_TOPIC_ARNS=TOPIC, BOT_SNS_CERT_DIR=certs)
    services = build_services(settings, account_id="123456789012")
    endpoint = SnsEndpoint(services, services.sns_verifier())
    figures: dict[tuple[str, int], Figure] = {}
    try:
        warm = sign(1, UNRECOGNISED, None)[0]
        assert endpoint(warm) == (200, "unrecognised")  # the certificate is loaded and cached here
        for r in range(rounds):
            for label, (outcome, bodies) in kinds.items():
                per = len(bodies) // (2 * rounds)
                for i, t in enumerate((1, threads)):
                    batch = bodies[(2 * r + i) * per:(2 * r + i + 1) * per]
                    name = f"{db.name}: {label}, {t} thread{'s' if t > 1 else ''}"
                    figures.setdefault((label, t), Figure(name, per, [])).rates.append(
                        timed(name, batch, endpoint, t, outcome))
        every = [b for _, bodies in kinds.values() for b in bodies]
        dup = Figure(f"{db.name}: redelivered (duplicate), 1 thread", len(every) // (2 * rounds), [])
        for r in range(rounds):
            dup.rates.append(timed(dup.name, every[r * dup.n:(r + 1) * dup.n], endpoint, 1, "duplicate"))
        with services.db.session_scope() as session:
            stored = session.scalar(select(func.count()).select_from(SnsMessage))
            chain = audit.verify(session)
        assert stored == len(every) + 1, (stored, len(every))
        assert chain.ok, chain.reason
        verify_only = timed_verify(endpoint, every[: len(every) // 2])
    finally:
        services.db.dispose()
    return [*figures.values(), dup], verify_only


def timed_verify(endpoint: SnsEndpoint, bodies: list[bytes]) -> float:
    began = time.perf_counter()
    for b in bodies:
        endpoint.verifier.verify(b)
    return len(bodies) / (time.perf_counter() - began)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--db", choices=("both", "sqlite", "postgres"), default="both")
    ap.add_argument("-n", type=int, default=3000, help="notifications per kind, all rounds and thread counts")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per figure; the median is reported")
    ap.add_argument("--threads", type=int, default=8, help="concurrent deliveries, as waitress threads would")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 notifications per kind")
    args = ap.parse_args()
    n = 200 if args.quick else args.n
    rounds = 1 if args.quick else args.rounds

    print(f"machine: {machine()}; revision {git_revision()}")
    began = time.perf_counter()
    kinds = {"unrecognised message": ("unrecognised", sign(n, UNRECOGNISED, None)),
             "foreign CloudWatch alarm": ("posted", sign(n, FOREIGN_ALARM, "ALARM: \"payments-api-5xx\""))}
    print(f"signed {2 * n:,} notifications (SignatureVersion 2, RSA-2048) in "
          f"{time.perf_counter() - began:.1f} s; each database gets the same bodies\n")
    figures: list[Figure] = []
    baselines: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sns-") as tmp:
        certs = Path(tmp) / "certs"
        certs.mkdir()
        write_cert(certs)
        for ctx in databases(args.db, tmp, "bench_sns"):
            with ctx as db:
                f, baselines[db.name] = run_db(db, str(certs), kinds, args.threads, rounds)
                figures += f

    ok = True
    rows = []
    for f in figures:
        db = f.name.split(":")[0]
        met = f.rate >= TARGET_PER_S
        ok = ok and met
        verify = baselines[db]
        rows.append((f.name, f"{len(f.rates)} × {f.n:,}", f"≥ {TARGET_PER_S:.0f}/s", f"{f.rate:,.0f}/s",
                     f"{min(f.rates):,.0f}–{max(f.rates):,.0f}/s", f"{1000 / f.rate:.2f} ms", verdict(met),
                     f"{f.rate / TARGET_PER_S:.2f}x", f"{verify:,.0f}/s ({f.rate / verify * 100:.1f}%)"))
    print(table(("figure", "rounds × n", "target", "median", "range", "per message", "result", "vs target",
                 "verify alone (share)"), rows))
    print("\nverified + stored = 200 from SnsEndpoint: signature checked, MessageId claimed in sns_messages, "
          "outcome recorded, audit event appended, committed. Duplicates are verified too, then refused by "
          "the claim. After each run: sns_messages holds every message once and the audit chain verifies.")
    print(f"at the end: {load_average()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
