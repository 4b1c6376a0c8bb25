"""SNS message verification: AWS's real signed vector, generated v1/v2 messages, and everything forged."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.aws.sns import (
    MAX_BODY_BYTES,
    CertificateStore,
    SnsEnvelope,
    SnsRejected,
    SnsVerifier,
    check_cert_url,
    https_fetch,
    is_sns_certificate_name,
    parse_envelope,
    string_to_sign,
)
from bot.clock import FixedClock
from tests.fakes.sns_signing import (
    TEST_CERT_NAME,
    TEST_CERT_URL,
    Signer,
    default_signer,
    make_notification,
    make_signer,
    make_subscription_confirmation,
    sign_envelope,
    write_cert,
)

FIXTURES = Path(__file__).resolve().parents[1] / "vectors" / "sns"
REAL: dict[str, Any] = json.loads((FIXTURES / "real-notification-v1.json").read_text())
REAL_CERT = FIXTURES / "sns-signing-cert-2015.pem"
REAL_TOPIC = "arn:aws:sns:us-east-1:810605503585:just_testing"
REAL_SIGNED_AT = datetime(2015, 9, 20, 1, 22, 14, 1000, tzinfo=UTC)
TOPIC = "arn:aws:sns:us-east-1:123456789012:bedrock-bot-alarms"
NOW = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


class RecordingFetch:
    """A `fetch` that records every URL and answers `pem` (or raises when there is none)."""

    def __init__(self, pem: bytes | None = None) -> None:
        self.pem = pem
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        with self._lock:
            self.calls.append(url)
        if self.pem is None:
            raise OSError("network unreachable (test)")
        return self.pem


def body(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope)


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    """The AWS certificate pinned under the file name its SigningCertURL ends with."""
    shutil.copy(REAL_CERT, tmp_path / check_cert_url(REAL["SigningCertURL"]))
    return tmp_path


@pytest.fixture
def real_verifier(real_dir: Path) -> SnsVerifier:
    store = CertificateStore(pinned_dir=str(real_dir), fetch=RecordingFetch())
    return SnsVerifier(store, [REAL_TOPIC], clock=FixedClock(REAL_SIGNED_AT + timedelta(seconds=3)))


@pytest.fixture
def pinned(tmp_path: Path) -> Path:
    write_cert(tmp_path)
    return tmp_path


@pytest.fixture
def verifier(pinned: Path) -> SnsVerifier:
    return SnsVerifier(CertificateStore(pinned_dir=str(pinned), fetch=RecordingFetch()), [TOPIC],
                       clock=FixedClock(NOW))


# --- the real AWS vector ---------------------------------------------------------------------------

def test_string_to_sign_of_real_vector_is_the_documented_format() -> None:
    assert string_to_sign(REAL) == (
        b"Message\nboo\n"
        b"MessageId\nd39649d4-bf5b-5b80-af75-07acb3dd9b4a\n"
        b"Subject\nthis is raw\n"
        b"Timestamp\n2015-09-20T01:22:14.001Z\n"
        b"TopicArn\narn:aws:sns:us-east-1:810605503585:just_testing\n"
        b"Type\nNotification\n"
    )


def test_real_aws_vector_verifies(real_verifier: SnsVerifier) -> None:
    env = real_verifier.verify(body(REAL))
    assert env == SnsEnvelope(
        type="Notification", message_id="d39649d4-bf5b-5b80-af75-07acb3dd9b4a", topic_arn=REAL_TOPIC,
        message="boo", timestamp=REAL_SIGNED_AT, subject="this is raw", subscribe_url=None, token=None,
        signature_version="1", signing_cert_url=REAL["SigningCertURL"], raw={})
    assert env.raw["MessageAttributes"]["AWS.SNS.MOBILE.WNS.Type"]["Value"] == "wns/badge"


def test_real_vector_verifies_as_bytes_and_as_delivered_file(real_verifier: SnsVerifier) -> None:
    real_verifier.verify((FIXTURES / "real-notification-v1.json").read_bytes())


def test_real_vector_with_age_limit_off_and_the_real_clock(real_dir: Path) -> None:
    store = CertificateStore(pinned_dir=str(real_dir), fetch=RecordingFetch())
    assert SnsVerifier(store, [REAL_TOPIC], max_age=None).verify(body(REAL)).message == "boo"


def test_real_vector_is_stale_with_the_default_age_limit(real_dir: Path) -> None:
    store = CertificateStore(pinned_dir=str(real_dir), fetch=RecordingFetch())
    with pytest.raises(SnsRejected, match="older than"):
        SnsVerifier(store, [REAL_TOPIC]).verify(body(REAL))


@pytest.mark.parametrize(("key", "value"), [
    ("Message", "boo!"),
    ("Message", "Boo"),
    ("MessageId", "d39649d4-bf5b-5b80-af75-07acb3dd9b4b"),
    ("Subject", "this is raw "),
    ("Subject", None),  # dropped altogether
    ("Timestamp", "2015-09-20T01:22:14.002Z"),
    ("TopicArn", "arn:aws:sns:us-east-1:810605503585:just_testing2"),
    ("Type", "SubscriptionConfirmation"),
    ("Type", "UnsubscribeConfirmation"),
    ("Type", "notification"),
    ("Signature", REAL["Signature"][:-4] + "AAA="),
])
def test_changing_any_signed_field_fails(real_dir: Path, key: str, value: str | None) -> None:
    tampered = dict(REAL)
    if value is None:
        del tampered[key]
    else:
        tampered[key] = value
    store = CertificateStore(pinned_dir=str(real_dir), fetch=RecordingFetch())
    verifier = SnsVerifier(store, [REAL_TOPIC, tampered["TopicArn"]], max_age=None)
    with pytest.raises(SnsRejected):
        verifier.verify(body(tampered))


def test_the_two_changed_topic_and_message_fail_on_the_signature_itself(real_dir: Path) -> None:
    store = CertificateStore(pinned_dir=str(real_dir), fetch=RecordingFetch())
    other = "arn:aws:sns:us-east-1:810605503585:other"
    verifier = SnsVerifier(store, [REAL_TOPIC, other], max_age=None)
    for key, value in (("TopicArn", other), ("Message", "bOo"), ("Timestamp", "2015-09-20T01:22:15.001Z")):
        with pytest.raises(SnsRejected, match="signature does not verify"):
            verifier.verify(body({**REAL, key: value}))


def test_unsigned_fields_do_not_matter(real_verifier: SnsVerifier) -> None:
    changed = {**REAL, "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&x=1",
               "MessageAttributes": {}}
    assert real_verifier.verify(body(changed)).message == "boo"


@pytest.mark.parametrize("version", ["2", "3", "0", "", "01", "1 ", "SHA1"])
def test_a_wrong_signature_version_fails(real_verifier: SnsVerifier, version: str) -> None:
    with pytest.raises(SnsRejected):
        real_verifier.verify(body({**REAL, "SignatureVersion": version}))


def test_a_numeric_signature_version_is_refused(real_verifier: SnsVerifier) -> None:
    with pytest.raises(SnsRejected, match="SignatureVersion is not a string"):
        real_verifier.verify(body({**REAL, "SignatureVersion": 1}))


def test_the_aws_certificate_names_sns_and_expired_in_2016(real_dir: Path) -> None:
    store = CertificateStore(pinned_dir=str(real_dir), fetch=RecordingFetch())
    cert = store.get(REAL["SigningCertURL"])
    assert cert.not_valid_after_utc == datetime(2016, 8, 21, 23, 59, 59, tzinfo=UTC)
    assert cert.subject.rfc4514_string().startswith("CN=sns.amazonaws.com,O=Amazon.com")


# --- certificate URLs ------------------------------------------------------------------------------

FOREIGN_CERT_URLS = [
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-test.pem",
    "https://evil.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://evil.com/?sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://user@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com@evil.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com:443@evil.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com:443/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com\\@evil.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.org/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.co/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com.cn.evil.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-test.pem",
    "https://xsns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.notamazonaws.com/SimpleNotificationService-test.pem",
    "https://sns.s3.amazonaws.com/SimpleNotificationService-test.pem",  # the S3 bucket called "sns"
    "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://sns.amazonaws.com/SimpleNotificationService-test.pem",
    "https://SNS.US-EAST-1.AMAZONAWS.COM/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.crt",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem.exe",
    "https://sns.us-east-1.amazonaws.com/",
    "https://sns.us-east-1.amazonaws.com/.pem",
    "https://sns.us-east-1.amazonaws.com/../etc/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com/a/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem?x=.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem#x",
    "https://sns.us-east-1.amazon\naws.com/SimpleNotificationService-test.pem",
    " https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem\n",
    "file:///etc/SimpleNotificationService-test.pem",
    "//sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
    "",
]


@pytest.mark.parametrize("url", FOREIGN_CERT_URLS)
def test_foreign_certificate_hosts_are_refused_before_any_fetch(pinned: Path, url: str) -> None:
    fetch = RecordingFetch(default_signer().pem)
    verifier = SnsVerifier(CertificateStore(fetch=fetch), [TOPIC], clock=FixedClock(NOW))
    envelope = make_notification("hello", TOPIC, timestamp=NOW)
    envelope["SigningCertURL"] = url
    with pytest.raises(SnsRejected, match="SigningCertURL"):
        verifier.verify(body(envelope))
    with pytest.raises(SnsRejected):
        check_cert_url(url)
    with pytest.raises(SnsRejected):
        CertificateStore(pinned_dir=str(pinned), fetch=fetch).get(url)
    assert fetch.calls == []


@pytest.mark.parametrize(("url", "name"), [
    (REAL["SigningCertURL"], "SimpleNotificationService-bb750dd426d95ee9390147a5624348ee.pem"),
    ("https://sns.eu-central-2.amazonaws.com/SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem",
     "SimpleNotificationService-01d088a6f77103d0fe307c0069e40ed6.pem"),
    ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-3250158c6506d40628c95a37a9b2ce10.pem",
     "SimpleNotificationService-3250158c6506d40628c95a37a9b2ce10.pem"),
    ("https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-x.pem",
     "SimpleNotificationService-x.pem"),
    (TEST_CERT_URL, TEST_CERT_NAME),
])
def test_sns_certificate_urls_are_accepted(url: str, name: str) -> None:
    assert check_cert_url(url) == name


@pytest.mark.parametrize("name", [
    "sns.amazonaws.com", "sns-signing.af-south-1.amazonaws.com", "sns-signing.il-central-1.amazonaws.com",
    "sns-cn-north-1.amazonaws.com.cn", "sns-us-gov-west-1.amazonaws.com", "sns.amazonaws.com.cn",
])
def test_names_real_sns_certificates_carry(name: str) -> None:
    assert is_sns_certificate_name(name)


@pytest.mark.parametrize("name", [
    "evil.com", "sns.amazonaws.com.evil.com", "evilsns.amazonaws.com", "*.amazonaws.com", "amazonaws.com",
    "s3.amazonaws.com", "sns.evil.com", "xsns.amazonaws.com", "SNS.AMAZONAWS.COM.", "",
])
def test_other_certificate_names_are_not_sns(name: str) -> None:
    assert not is_sns_certificate_name(name)


def test_a_certificate_that_does_not_name_sns_is_refused(tmp_path: Path) -> None:
    impostor = make_signer(common_name="sns.amazonaws.com.evil.com")
    write_cert(tmp_path, impostor)
    verifier = SnsVerifier(CertificateStore(pinned_dir=str(tmp_path), fetch=RecordingFetch()), [TOPIC],
                           clock=FixedClock(NOW))
    with pytest.raises(SnsRejected, match="does not name SNS"):
        verifier.verify(body(make_notification("x", TOPIC, timestamp=NOW, key=impostor.key)))


def test_a_message_signed_by_another_key_fails(verifier: SnsVerifier) -> None:
    other = make_signer()
    with pytest.raises(SnsRejected, match="signature does not verify"):
        verifier.verify(body(make_notification("x", TOPIC, timestamp=NOW, key=other.key)))


# --- topics ----------------------------------------------------------------------------------------

def test_an_unlisted_topic_is_refused_before_any_fetch() -> None:
    fetch = RecordingFetch(default_signer().pem)
    verifier = SnsVerifier(CertificateStore(fetch=fetch), [TOPIC], clock=FixedClock(NOW))
    other = "arn:aws:sns:us-east-1:123456789012:someone-elses"
    with pytest.raises(SnsRejected, match="topic not allow-listed"):
        verifier.verify(body(make_notification("x", other, timestamp=NOW)))
    with pytest.raises(SnsRejected, match="topic not allow-listed"):
        verifier.verify(body(make_subscription_confirmation(other, timestamp=NOW)))
    assert fetch.calls == []


@pytest.mark.parametrize("allowed", [[], [""], ["  "]])
def test_an_empty_allow_list_refuses_everything(pinned: Path, allowed: list[str]) -> None:
    verifier = SnsVerifier(CertificateStore(pinned_dir=str(pinned)), allowed, clock=FixedClock(NOW))
    with pytest.raises(SnsRejected, match="topic not allow-listed"):
        verifier.verify(body(make_notification("x", TOPIC, timestamp=NOW)))


# --- generated messages ----------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1", "2"])
def test_generated_notifications_verify(verifier: SnsVerifier, version: str) -> None:
    envelope = make_notification('{"AlarmName":"x"}', TOPIC, subject="ALARM: x", timestamp=NOW,
                                 version=version)
    env = verifier.verify(body(envelope))
    assert (env.message, env.subject, env.signature_version, env.timestamp) == (
        '{"AlarmName":"x"}', "ALARM: x", version, NOW)


@pytest.mark.parametrize("version", ["1", "2"])
def test_generated_notification_without_subject_verifies(verifier: SnsVerifier, version: str) -> None:
    env = verifier.verify(body(make_notification("multi\nline\n", TOPIC, timestamp=NOW, version=version)))
    assert env.subject is None
    assert env.message == "multi\nline\n"


def test_a_version_2_signature_claimed_as_version_1_fails(verifier: SnsVerifier) -> None:
    envelope = make_notification("x", TOPIC, timestamp=NOW, version="2")
    with pytest.raises(SnsRejected, match="signature does not verify"):
        verifier.verify(body({**envelope, "SignatureVersion": "1"}))


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_confirmations_verify(verifier: SnsVerifier, kind: str, version: str) -> None:
    envelope = make_subscription_confirmation(TOPIC, token="abc123", timestamp=NOW, version=version,
                                              type_=kind)
    env = verifier.verify(body(envelope))
    assert env.type == kind
    assert env.token == "abc123"
    assert env.subscribe_url == envelope["SubscribeURL"]
    assert str(env.subscribe_url).startswith("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription")


@pytest.mark.parametrize("key", ["Token", "SubscribeURL", "Message", "MessageId", "Timestamp", "TopicArn"])
def test_changing_a_signed_confirmation_field_fails(verifier: SnsVerifier, key: str) -> None:
    envelope = make_subscription_confirmation(TOPIC, timestamp=NOW)
    value = envelope[key]
    tampered = {**envelope, key: value[:-1] + ("1" if value[-1] != "1" else "2")}
    with pytest.raises(SnsRejected):
        verifier.verify(body(tampered))


@pytest.mark.parametrize("url", [
    "https://evil.com/?Action=ConfirmSubscription",
    "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com/x/y?Action=ConfirmSubscription",
])
def test_a_signed_confirmation_with_a_foreign_subscribe_url_is_refused(verifier: SnsVerifier,
                                                                       url: str) -> None:
    envelope = make_subscription_confirmation(TOPIC, timestamp=NOW)
    with pytest.raises(SnsRejected, match="SubscribeURL"):
        verifier.verify(body(sign_envelope({**envelope, "SubscribeURL": url})))


# --- certificate validity and message age ----------------------------------------------------------

def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    expired = make_signer(datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC))
    name = "SimpleNotificationService-expired.pem"
    write_cert(tmp_path, expired, name)
    store = CertificateStore(pinned_dir=str(tmp_path), fetch=RecordingFetch())
    verifier = SnsVerifier(store, [TOPIC], clock=FixedClock(NOW))
    envelope = make_notification("x", TOPIC, timestamp=NOW, key=expired.key, cert_name=name)
    with pytest.raises(SnsRejected, match="not valid at the message Timestamp"):
        verifier.verify(body(envelope))


def test_certificate_validity_is_judged_at_the_message_timestamp(tmp_path: Path) -> None:
    expired = make_signer(datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC))
    name = "SimpleNotificationService-expired.pem"
    write_cert(tmp_path, expired, name)
    store = CertificateStore(pinned_dir=str(tmp_path), fetch=RecordingFetch())
    signed_at = datetime(2020, 6, 1, 12, tzinfo=UTC)
    envelope = make_notification("x", TOPIC, timestamp=signed_at, key=expired.key, cert_name=name)
    assert SnsVerifier(store, [TOPIC], max_age=None).verify(body(envelope)).message == "x"
    near = FixedClock(signed_at + timedelta(minutes=1))
    assert SnsVerifier(store, [TOPIC], clock=near).verify(body(envelope)).message == "x"
    with pytest.raises(SnsRejected, match="not valid"):  # a certificate not yet valid at the Timestamp
        SnsVerifier(store, [TOPIC], max_age=None).verify(
            body(make_notification("x", TOPIC, timestamp=datetime(2019, 12, 31, tzinfo=UTC), key=expired.key,
                                   cert_name=name)))


@pytest.mark.parametrize(("age", "ok"), [
    (timedelta(0), True),
    (timedelta(minutes=59), True),
    (timedelta(hours=1, minutes=4), True),  # within max_age + 5 minutes of clock skew
    (timedelta(hours=1, minutes=6), False),
    (timedelta(days=3), False),
    (-timedelta(minutes=4), True),
    (-timedelta(minutes=6), False),  # from the future
])
def test_message_age_policy(pinned: Path, age: timedelta, ok: bool) -> None:
    verifier = SnsVerifier(CertificateStore(pinned_dir=str(pinned)), [TOPIC], clock=FixedClock(NOW))
    envelope = body(make_notification("x", TOPIC, timestamp=NOW - age))
    if ok:
        verifier.verify(envelope)
    else:
        with pytest.raises(SnsRejected, match=r"older than|future"):
            verifier.verify(envelope)


def test_age_limit_is_configurable(pinned: Path) -> None:
    envelope = body(make_notification("x", TOPIC, timestamp=NOW - timedelta(days=10)))
    store = CertificateStore(pinned_dir=str(pinned))
    SnsVerifier(store, [TOPIC], clock=FixedClock(NOW), max_age=None).verify(envelope)
    SnsVerifier(store, [TOPIC], clock=FixedClock(NOW), max_age=timedelta(days=14)).verify(envelope)
    with pytest.raises(SnsRejected, match="older than"):
        SnsVerifier(store, [TOPIC], clock=FixedClock(NOW), max_age=timedelta(days=7)).verify(envelope)


# --- the certificate store -------------------------------------------------------------------------

def test_certificates_are_downloaded_once_then_cached() -> None:
    fetch = RecordingFetch(default_signer().pem)
    verifier = SnsVerifier(CertificateStore(fetch=fetch), [TOPIC], clock=FixedClock(NOW))
    verifier.verify(body(make_notification("one", TOPIC, timestamp=NOW)))
    verifier.verify(body(make_notification("two", TOPIC, timestamp=NOW, version="2")))
    assert fetch.calls == [TEST_CERT_URL]


def test_concurrent_misses_download_once() -> None:
    gate = threading.Event()
    fetch = RecordingFetch(default_signer().pem)

    def slow_fetch(url: str) -> bytes:
        gate.wait(5)
        return fetch(url)

    verifier = SnsVerifier(CertificateStore(fetch=slow_fetch), [TOPIC], clock=FixedClock(NOW))
    bodies = [body(make_notification(f"m{i}", TOPIC, timestamp=NOW)) for i in range(8)]
    results: list[str] = []
    errors: list[BaseException] = []

    def run(b: str) -> None:
        try:
            results.append(verifier.verify(b).message)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert errors == []
    assert sorted(results) == sorted(f"m{i}" for i in range(8))
    assert fetch.calls == [TEST_CERT_URL]


def test_the_pinned_directory_is_used_before_any_download(pinned: Path) -> None:
    fetch = RecordingFetch(default_signer().pem)
    store = CertificateStore(pinned_dir=str(pinned), fetch=fetch)
    assert store.get(TEST_CERT_URL) == default_signer().cert
    assert fetch.calls == []
    other = TEST_CERT_URL.replace("-test.pem", "-other.pem")
    assert store.get(other) == default_signer().cert  # not pinned: downloaded
    assert fetch.calls == [other]


def test_the_cache_is_bounded() -> None:
    fetch = RecordingFetch(default_signer().pem)
    store = CertificateStore(fetch=fetch, max_entries=2)
    urls = [TEST_CERT_URL.replace("test", f"c{i}") for i in range(3)]
    for url in (*urls, urls[2], urls[0]):
        store.get(url)
    assert fetch.calls == [*urls, urls[0]]  # c0 was evicted by c2, c2 stayed


def test_a_failed_download_is_refused_and_retried_later() -> None:
    fetch = RecordingFetch(None)
    store = CertificateStore(fetch=fetch)
    verifier = SnsVerifier(store, [TOPIC], clock=FixedClock(NOW))
    envelope = body(make_notification("x", TOPIC, timestamp=NOW))
    with pytest.raises(SnsRejected, match="certificate download failed: OSError"):
        verifier.verify(envelope)
    fetch.pem = default_signer().pem
    assert verifier.verify(envelope).message == "x"
    assert len(fetch.calls) == 2


@pytest.mark.parametrize("answer", [
    b"", b"not a certificate", b"x" * 100_000,
    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
])
def test_a_download_that_is_no_certificate_is_refused(answer: bytes) -> None:
    with pytest.raises(SnsRejected, match="certificate"):
        CertificateStore(fetch=RecordingFetch(answer)).get(TEST_CERT_URL)


def test_the_default_fetch_is_https_only() -> None:
    with pytest.raises(ValueError, match="https only"):
        https_fetch("http://sns.us-east-1.amazonaws.com/x.pem")


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'"Notification"', "not a JSON object"),
    (b"{}", "unknown message Type"),
    (b'{"Type": "Notification", "Type": "Notification"}', "duplicate key"),
    (b'{"Type": NaN}', "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (b'{"Type": "Notification"}', "Notification without Message"),
    (b'{"Type": "SubscriptionConfirmation", "Message": "m"}', "without MessageId"),
    (b'{"Type": "Notification ", "Message": "m"}', "unknown message Type"),
    (b" " * (MAX_BODY_BYTES + 1), "larger than"),
])
def test_malformed_bodies_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(SnsRejected, match=reason):
        parse_envelope(raw)


def _notification(**changes: Any) -> dict[str, Any]:
    envelope = make_notification("x", TOPIC, timestamp=NOW)
    envelope.update(changes)
    return {k: v for k, v in envelope.items() if v is not None}


@pytest.mark.parametrize(("changes", "reason"), [
    ({"Message": 5}, "Message is not a string"),
    ({"Subject": ["a"]}, "Subject is not a string"),
    ({"MessageId": ""}, "MessageId is empty"),
    ({"MessageId": "m" * 129}, "MessageId too long"),
    ({"Timestamp": "yesterday"}, "Timestamp"),
    ({"Timestamp": "2026-11-25T10:30:00"}, "Timestamp"),  # no zone
    ({"Timestamp": "2026-13-25T10:30:00Z"}, "Timestamp"),
    ({"SigningCertURL": None}, "without SigningCertURL"),
    ({"Signature": ""}, "Signature is empty"),
])
def test_bad_fields_are_refused(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(SnsRejected, match=reason):
        parse_envelope(body(_notification(**changes)))


def test_a_signature_that_is_not_base64_is_refused(verifier: SnsVerifier) -> None:
    with pytest.raises(SnsRejected, match="not base64"):
        verifier.verify(body(_notification(Signature="not base64!")))


def test_reasons_are_one_line_and_bounded(verifier: SnsVerifier) -> None:
    evil = "arn:aws:sns:us-east-1:1:x\nINFO forged log line\x1b[31m" + "A" * 400
    with pytest.raises(SnsRejected) as caught:
        verifier.verify(body(_notification(TopicArn=evil)))
    assert "\n" not in caught.value.reason and "\x1b" not in caught.value.reason
    assert len(caught.value.reason) < 300
    assert caught.value.outcome == "denied"


# --- fuzzing: whatever arrives, the only failure is SnsRejected ------------------------------------

@pytest.fixture(scope="module")
def fuzz_verifier(tmp_path_factory: pytest.TempPathFactory) -> SnsVerifier:
    directory = tmp_path_factory.mktemp("pinned")
    write_cert(directory)
    return SnsVerifier(CertificateStore(pinned_dir=str(directory), fetch=RecordingFetch()), [TOPIC],
                       clock=FixedClock(NOW))


def _seeds() -> list[bytes]:
    return [
        body(make_notification("hello", TOPIC, subject="s", timestamp=NOW)).encode(),
        body(make_notification("hello", TOPIC, timestamp=NOW, version="2")).encode(),
        body(make_subscription_confirmation(TOPIC, timestamp=NOW)).encode(),
    ]


SEEDS = _seeds()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
byte_edit = st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 10_000),
                      st.integers(0, 255))


def _mutate(raw: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(raw)
    for op, position, value in edits:
        if not data:
            break
        i = position % len(data)
        if op == "flip":
            data[i] ^= value or 1
        elif op == "insert":
            data.insert(i, value)
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


def _check(verifier: SnsVerifier, raw: bytes | str, may_pass: Callable[[SnsEnvelope], bool]) -> None:
    try:
        env = verifier.verify(raw)
    except SnsRejected as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert may_pass(env), f"a mutated message verified: {raw!r}"


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(SEEDS), edits=st.lists(byte_edit, min_size=1, max_size=4))
def test_byte_mutations_raise_only_sns_rejected(fuzz_verifier: SnsVerifier, seed: bytes,
                                                edits: list[tuple[str, int, int]]) -> None:
    mutated = _mutate(seed, edits)
    original = json.loads(seed)

    def unchanged_signed_fields(env: SnsEnvelope) -> bool:
        return string_to_sign(env.raw) == string_to_sign(original)

    _check(fuzz_verifier, mutated, unchanged_signed_fields)


SIGNED_OR_ENVELOPE_KEYS = ["Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp",
                           "SignatureVersion", "Signature", "SigningCertURL", "SubscribeURL", "Token",
                           "UnsubscribeURL", "Extra"]


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(SEEDS),
       changes=st.dictionaries(st.sampled_from(SIGNED_OR_ENVELOPE_KEYS), json_values, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(SIGNED_OR_ENVELOPE_KEYS), max_size=2))
def test_field_mutations_raise_only_sns_rejected(fuzz_verifier: SnsVerifier, seed: bytes,
                                                 changes: dict[str, Any], drop: list[str]) -> None:
    original = json.loads(seed)
    envelope = {**original, **changes}
    for key in drop:
        envelope.pop(key, None)

    def unchanged_signed_fields(env: SnsEnvelope) -> bool:
        return string_to_sign(env.raw) == string_to_sign(original)

    _check(fuzz_verifier, json.dumps(envelope), unchanged_signed_fields)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_raises_only_sns_rejected(raw: bytes | str) -> None:
    store = CertificateStore(fetch=RecordingFetch())
    with pytest.raises(SnsRejected):
        SnsVerifier(store, [TOPIC], clock=FixedClock(NOW)).verify(raw)


def test_signer_fixture_is_cached() -> None:
    assert default_signer() is default_signer()
    assert isinstance(default_signer(), Signer)
