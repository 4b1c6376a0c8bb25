"""SNS messages verified per second in one process, against the target of >= 200/s (DESIGN.md §6).

Verifies N generated notifications per figure (RSA-2048 signing key, CloudWatch alarm JSON in `Message`)
with a warm certificate cache, the way `/sns` sees them: raw bytes in, `SnsEnvelope` out. The store
(dedupe row + audit) is not part of this figure. Run from the repo root:
    .venv/bin/python bench/bench_sns_verify.py [--quick]     (--quick: 200 per figure)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figures
from bot.aws.notifications import parse_any
from bot.aws.sns import CertificateStore, SnsVerifier, check_cert_url
from bot.clock import FixedClock
from tests.fakes.sns_signing import TEST_CERT_URL, make_notification, write_cert

ROOT = Path(__file__).resolve().parents[1]
N = 2000
TARGET_PER_SECOND = 200.0
TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alarms"
NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)
REAL_VECTOR = ROOT.parent / "shared" / "fixtures" / "sns"
ALARM = json.dumps({
    "AlarmName": "bedrock-bot-team-eng-tokens-24h", "AlarmDescription": None, "AWSAccountId": "123456789012",
    "NewStateValue": "ALARM",
    "NewStateReason": "Threshold Crossed: 1 datapoint [5100000.0] was greater than the threshold (5e6).",
    "StateChangeTime": "2026-11-25T10:29:41.123+0000", "Region": "US East (N. Virginia)",
    "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:bedrock-bot-team-eng-tokens-24h",
    "OldStateValue": "OK",
    "Trigger": {"MetricName": "InputTokenCount", "Namespace": "AWS/Bedrock", "Statistic": "SUM",
                "Dimensions": [{"name": "ModelId", "value": "abc123"}], "Period": 3600,
                "EvaluationPeriods": 24, "Threshold": 5e6, "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "missing"},
})


def _no_download(url: str) -> bytes:
    raise OSError(f"the benchmark never downloads ({url})")


def measure(name: str, bodies: list[bytes], work: Callable[[bytes], object]) -> dict[str, object]:
    work(bodies[0])  # warm: the certificate is loaded and cached before the clock starts
    began = time.perf_counter()
    for body in bodies:
        work(body)
    seconds = time.perf_counter() - began
    rate = len(bodies) / seconds
    return {"figure": name, "n": len(bodies), "rate": rate, "us": seconds / len(bodies) * 1e6,
            "verdict": "pass" if rate >= TARGET_PER_SECOND else "MISS"}


def _row(cells: tuple[str, ...]) -> str:
    widths = (44, 5, 8, 15, 7, 6)
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="200 notifications per figure")
    n = 200 if ap.parse_args().quick else N
    results = []
    with tempfile.TemporaryDirectory() as pinned:
        write_cert(pinned)
        store = CertificateStore(pinned_dir=pinned, fetch=_no_download)
        verifier = SnsVerifier(store, [TOPIC], clock=FixedClock(NOW + timedelta(seconds=1)))
        by_version = {
            v: [json.dumps(make_notification(ALARM, TOPIC, subject="ALARM: bedrock-bot-team-eng-tokens-24h",
                                             timestamp=NOW, version=v)).encode() for _ in range(n)]
            for v in ("1", "2")
        }
        mixed = [b for pair in zip(by_version["1"], by_version["2"], strict=True) for b in pair][:n]
        for version, algorithm in (("1", "SHA1withRSA"), ("2", "SHA256withRSA")):
            results.append(measure(f"verify, SignatureVersion {version} ({algorithm})", by_version[version],
                                   verifier.verify))
        results.append(measure("verify v1/v2 mixed + parse_any(Message)", mixed,
                               lambda b: parse_any(verifier.verify(b).message)))
        assert store.get(TEST_CERT_URL) is store.get(TEST_CERT_URL)

    real = REAL_VECTOR / "real-notification-v1.json"
    if real.is_file():
        with tempfile.TemporaryDirectory() as pinned:
            body = real.read_bytes()
            url = json.loads(body)["SigningCertURL"]
            pem = (REAL_VECTOR / "sns-signing-cert-2015.pem").read_bytes()
            (Path(pinned) / check_cert_url(url)).write_bytes(pem)
            topic = json.loads(body)["TopicArn"]
            aws = SnsVerifier(CertificateStore(pinned_dir=pinned), [topic], max_age=None)
            results.append(measure("verify, the real AWS vector (v1, 2015 cert)", [body] * n, aws.verify))

    header = ("figure", "n", "target", "measured msgs/s", "us/msg", "result")
    print(_row(header))
    report = Figures()
    for r in results:
        print(_row((str(r["figure"]), str(r["n"]), f">= {TARGET_PER_SECOND:.0f}/s", f"{r['rate']:,.0f}",
                    f"{r['us']:.0f}", str(r["verdict"]))))
        report.add(str(r["figure"]), f"{r['rate']:,.0f}/s", f"≥ {TARGET_PER_SECOND:.0f}/s",
                   r["verdict"] == "pass")
    print("one process, one thread, warm certificate cache; storing the message (dedupe row, audit) "
          "is not included")
    return report.emit()


if __name__ == "__main__":
    sys.exit(main())
