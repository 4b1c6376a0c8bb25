"""Verify Amazon SNS HTTP(S) messages the way AWS documents it.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html

`SnsVerifier.verify(body)` runs, in this order, and stops at the first failure with `SnsRejected`:

1. parse the body: a JSON object of at most `MAX_BODY_BYTES`, `Type` one of Notification,
   SubscriptionConfirmation, UnsubscribeConfirmation, every field that type signs present as a string;
2. the topic must be on the allow-list (an empty allow-list refuses everything);
3. `SignatureVersion` "1" is SHA1withRSA, "2" is SHA256withRSA (PKCS#1 v1.5); anything else is refused;
4. `SigningCertURL` (and a confirmation's `SubscribeURL`) must be `https://sns.<region>.amazonaws.com[.cn]/…`
   exactly: no user info, port, query, fragment, sub-path or look-alike host, checked before any download;
5. the certificate comes from the pinned directory or a download, cached (`CertificateStore`); it must
   name SNS (see `is_sns_certificate_name`) and carry an RSA key of at least 2048 bits;
6. the certificate must be valid at the message's own `Timestamp` (a signed field), not at "now";
7. the signature is checked over `string_to_sign`;
8. message age: with `max_age` set (default one hour, SNS's longest HTTP retry window) a message whose
   `Timestamp` is older than `max_age`, or in the future, beyond `MAX_CLOCK_SKEW` is refused; with
   `max_age=None` there is no age limit (the SQS poller: messages can wait in a queue for days).
   Replays inside the window are stopped by the caller's dedupe on `MessageId`, which therefore has to
   remember ids for at least `max_age + MAX_CLOCK_SKEW`.

The certificate chain is not validated against a CA bundle: as AWS describes it, trust comes from
fetching the certificate over verified HTTPS from the SNS host itself (or from an operator-pinned file).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import ssl
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from bot.clock import Clock, utcnow
from bot.errors import BotError

MAX_BODY_BYTES = 1024 * 1024  # SNS payloads are <= 256 KiB; JSON escaping can grow them several-fold
MAX_CERT_BYTES = 64 * 1024
MAX_MESSAGE_ID_CHARS = 128  # sns_messages.message_id
MAX_TOPIC_ARN_CHARS = 512  # sns_messages.topic_arn
FETCH_TIMEOUT_SECONDS = 5.0
DEFAULT_MAX_AGE = timedelta(hours=1)
MAX_CLOCK_SKEW = timedelta(minutes=5)
MIN_RSA_BITS = 2048

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"

# The keys each message type signs, in the order AWS concatenates them.
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_SIGNED_KEYS: dict[str, tuple[str, ...]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: _CONFIRMATION_KEYS,
    UNSUBSCRIBE_CONFIRMATION: _CONFIRMATION_KEYS,
}
_OPTIONAL_SIGNED_KEYS = frozenset({"Subject"})
_ENVELOPE_KEYS = ("SignatureVersion", "Signature", "SigningCertURL")
_NON_EMPTY_KEYS = ("MessageId", "TopicArn", "Signature", "SigningCertURL", "SubscribeURL", "Token")

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# A region name: us-east-1, ap-southeast-2, us-gov-west-1, cn-north-1, il-central-1 ... This is narrower
# than "[a-z0-9-]+" on purpose: the S3 bucket "sns" answers at sns.s3.amazonaws.com and
# sns.s3-external-1.amazonaws.com, which the looser pattern would accept as SNS hosts.
_REGION = r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}"
_SNS_HOST = rf"sns\.{_REGION}\.amazonaws\.com(?:\.cn)?"
_CERT_URL = re.compile(rf"https://{_SNS_HOST}/(?P<name>[A-Za-z0-9_-][A-Za-z0-9._-]*\.pem)")
_SUBSCRIBE_URL = re.compile(rf"https://{_SNS_HOST}/\?[A-Za-z0-9._~%&=:+-]*")
# Names real SNS signing certificates carry (subject alternative names, else common name):
# sns.amazonaws.com in most regions, sns-signing.<region>.amazonaws.com in opt-in regions,
# sns-<region>.amazonaws.com[.cn] in China and GovCloud (cf. the AWS SDK for Java's SnsHostProvider).
_CERT_NAME = re.compile(
    rf"sns\.amazonaws\.com(?:\.cn)?|sns-signing\.{_REGION}\.amazonaws\.com(?:\.cn)?"
    rf"|sns-{_REGION}\.amazonaws\.com(?:\.cn)?"
)
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|[+-][0-9]{2}:?[0-9]{2})")


class SnsRejected(BotError):
    """An SNS message that must not be acted on (HTTP 403). `reason` is one line, safe to log and audit."""

    outcome = "denied"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SnsEnvelope:
    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: datetime  # aware, UTC
    subject: str | None
    subscribe_url: str | None
    token: str | None
    signature_version: str
    signing_cert_url: str
    raw: Mapping[str, Any] = field(repr=False, compare=False, hash=False)


def _clip(value: object, limit: int = 120) -> str:
    """Attacker-supplied text made fit for a one-line log: ASCII, escaped, bounded."""
    text = str(value).encode("ascii", "backslashreplace").decode("ascii")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_timestamp(value: str) -> datetime:
    if not _TIMESTAMP.fullmatch(value):
        raise SnsRejected(f"Timestamp is not an ISO 8601 UTC time: {_clip(value, 40)}")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise SnsRejected(f"Timestamp is not a valid time: {_clip(value, 40)}") from None


def parse_envelope(body: bytes | str) -> SnsEnvelope:
    """The JSON envelope SNS POSTs, with the fields its `Type` requires; anything else is `SnsRejected`."""
    raw_bytes = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if len(raw_bytes) > MAX_BODY_BYTES:
        raise SnsRejected(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw_bytes.decode("utf-8"), object_pairs_hook=_object_without_duplicates,
                          parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SnsRejected(f"body is not valid JSON: {_clip(exc, 80)}") from None
    if not isinstance(data, dict):
        raise SnsRejected("body is not a JSON object")
    kind = data.get("Type")
    if not isinstance(kind, str) or kind not in _SIGNED_KEYS:
        raise SnsRejected(f"unknown message Type: {_clip(kind, 40)}")
    for key in (*_SIGNED_KEYS[kind], *_ENVELOPE_KEYS):
        value = data.get(key)
        if value is None and key in _OPTIONAL_SIGNED_KEYS:
            continue
        if value is None:
            raise SnsRejected(f"{kind} without {key}")
        if not isinstance(value, str):
            raise SnsRejected(f"{kind} field {key} is not a string")
        if key in _NON_EMPTY_KEYS and not value:
            raise SnsRejected(f"{kind} field {key} is empty")
    if len(data["MessageId"]) > MAX_MESSAGE_ID_CHARS:
        raise SnsRejected("MessageId too long")
    if len(data["TopicArn"]) > MAX_TOPIC_ARN_CHARS:
        raise SnsRejected("TopicArn too long")
    confirmation = kind != NOTIFICATION
    return SnsEnvelope(
        type=kind,
        message_id=data["MessageId"],
        topic_arn=data["TopicArn"],
        message=data["Message"],
        timestamp=_parse_timestamp(data["Timestamp"]),
        subject=data.get("Subject") if kind == NOTIFICATION else None,
        subscribe_url=data["SubscribeURL"] if confirmation else None,
        token=data["Token"] if confirmation else None,
        signature_version=data["SignatureVersion"],
        signing_cert_url=data["SigningCertURL"],
        raw=MappingProxyType(data),
    )


def string_to_sign(env: Mapping[str, Any]) -> bytes:
    """`key\\nvalue\\n` per signed key of the message's Type, in AWS's order (Subject only if present)."""
    kind = env.get("Type")
    if not isinstance(kind, str) or kind not in _SIGNED_KEYS:
        raise SnsRejected(f"unknown message Type: {_clip(kind, 40)}")
    parts: list[str] = []
    for key in _SIGNED_KEYS[kind]:
        value = env.get(key)
        if value is None and key in _OPTIONAL_SIGNED_KEYS:
            continue
        if not isinstance(value, str):
            raise SnsRejected(f"{kind} field {key} is missing or not a string")
        parts.append(f"{key}\n{value}\n")
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        raise SnsRejected("signed fields are not valid Unicode") from None


def check_cert_url(url: str) -> str:
    """The file name in `url`, which must be `https://sns.<region>.amazonaws.com[.cn]/<name>.pem` exactly."""
    match = _CERT_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise SnsRejected(f"SigningCertURL is not an SNS certificate URL: {_clip(url)}")
    return match.group("name")


def check_subscribe_url(url: str) -> str:
    """A confirmation's SubscribeURL must point at the SNS API host too: the handler GETs it."""
    if not isinstance(url, str) or _SUBSCRIBE_URL.fullmatch(url) is None:
        raise SnsRejected(f"SubscribeURL is not an SNS URL: {_clip(url)}")
    return url


def is_sns_certificate_name(name: str) -> bool:
    return _CERT_NAME.fullmatch(name) is not None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """DNS names in the subject alternative name extension; the subject's common names when there is none."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def _check_certificate(cert: x509.Certificate) -> x509.Certificate:
    names = certificate_names(cert)
    if not any(is_sns_certificate_name(n) for n in names):
        raise SnsRejected(f"certificate does not name SNS: {_clip(', '.join(names) or 'no names')}")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsRejected("certificate key is not RSA")
    if key.key_size < MIN_RSA_BITS:
        raise SnsRejected(f"certificate key shorter than {MIN_RSA_BITS} bits")
    return cert


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None  # a redirect could leave the SNS host; urllib then raises HTTPError


def https_fetch(url: str) -> bytes:
    """GET an https URL: certificate-verified TLS, no redirects, 5 s timeout, at most MAX_CERT_BYTES."""
    if not url.startswith("https://"):
        raise ValueError("https only")
    opener = urllib.request.build_opener(
        _RefuseRedirects(), urllib.request.HTTPSHandler(context=ssl.create_default_context()))
    with opener.open(url, timeout=FETCH_TIMEOUT_SECONDS) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        data: bytes = response.read(MAX_CERT_BYTES + 1)
    if len(data) > MAX_CERT_BYTES:
        raise ValueError("certificate too large")
    return data


class CertificateStore:
    """SNS signing certificates by URL: a pinned file first, else a download; parsed ones cached (LRU).

    `pinned_dir` (BOT_SNS_CERT_DIR) holds certificates under the file name their URL ends with. Thread
    safe: concurrent misses for one URL download it once; a busy endpoint never downloads per message.
    Failures are not cached (the next message retries).
    """

    def __init__(self, pinned_dir: str | None = None, fetch: Callable[[str], bytes] | None = None,
                 max_entries: int = 64) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._pinned = Path(pinned_dir) if pinned_dir else None
        self._fetch = fetch or https_fetch
        self._max = max_entries
        self._cache: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, url: str) -> x509.Certificate:
        name = check_cert_url(url)
        with self._lock:
            cert = self._cached(url)
            if cert is not None:
                return cert
            loading = self._loading.setdefault(url, threading.Lock())
        with loading:
            with self._lock:
                cert = self._cached(url)
            if cert is not None:
                return cert
            try:
                cert = _check_certificate(self._load(url, name))
            except BaseException:
                with self._lock:
                    self._loading.pop(url, None)
                raise
            with self._lock:
                self._cache[url] = cert
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
                self._loading.pop(url, None)
            return cert

    def _cached(self, url: str) -> x509.Certificate | None:
        cert = self._cache.get(url)
        if cert is not None:
            self._cache.move_to_end(url)
        return cert

    def _load(self, url: str, name: str) -> x509.Certificate:
        pem: bytes | None = None
        if self._pinned is not None:
            path = self._pinned / name
            try:
                pem = path.read_bytes() if path.is_file() else None
            except OSError as exc:
                raise SnsRejected(f"pinned certificate {name} unreadable: {type(exc).__name__}") from None
        if pem is None:
            try:
                pem = self._fetch(url)
            except Exception as exc:
                reason = f"certificate download failed: {type(exc).__name__}: {_clip(exc, 80)}"
                raise SnsRejected(reason) from None
        if not isinstance(pem, bytes) or len(pem) > MAX_CERT_BYTES:
            raise SnsRejected(f"certificate {name} is not a PEM file of at most {MAX_CERT_BYTES} bytes")
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsRejected(f"certificate {name} is not a PEM X.509 certificate") from None


class SnsVerifier:
    """Authenticates SNS messages for allow-listed topics; see the module docstring for the checks."""

    def __init__(self, certs: CertificateStore, allowed_topics: Collection[str], clock: Clock | None = None,
                 max_age: timedelta | None = DEFAULT_MAX_AGE, max_skew: timedelta = MAX_CLOCK_SKEW) -> None:
        self._certs = certs
        self._topics = frozenset(t.strip() for t in allowed_topics if t and t.strip())
        self._clock: Clock = clock or utcnow
        self._max_age = max_age
        self._max_skew = max_skew

    def verify(self, body: bytes | str) -> SnsEnvelope:
        env = parse_envelope(body)
        if env.topic_arn not in self._topics:
            raise SnsRejected(f"topic not allow-listed: {_clip(env.topic_arn, 200)}")
        algorithm = _HASHES.get(env.signature_version)
        if algorithm is None:
            raise SnsRejected(f"unsupported SignatureVersion: {_clip(env.signature_version, 20)}")
        check_cert_url(env.signing_cert_url)
        if env.subscribe_url is not None:
            check_subscribe_url(env.subscribe_url)
        try:
            signature = base64.b64decode(env.raw["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise SnsRejected("Signature is not base64") from None
        cert = self._certs.get(env.signing_cert_url)
        if not cert.not_valid_before_utc <= env.timestamp <= cert.not_valid_after_utc:
            raise SnsRejected(
                f"signing certificate not valid at the message Timestamp {env.timestamp.isoformat()} "
                f"(valid {cert.not_valid_before_utc.date()}..{cert.not_valid_after_utc.date()})")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):  # CertificateStore hands out RSA certificates only
            raise SnsRejected("certificate key is not RSA")
        try:
            key.verify(signature, string_to_sign(env.raw), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise SnsRejected("signature does not verify") from None
        self._check_age(env.timestamp)
        return env

    def _check_age(self, timestamp: datetime) -> None:
        if self._max_age is None:
            return
        now = self._clock()
        if timestamp > now + self._max_skew:
            raise SnsRejected(f"message Timestamp {timestamp.isoformat()} is in the future")
        if now - timestamp > self._max_age + self._max_skew:
            raise SnsRejected(f"message older than {self._max_age} (Timestamp {timestamp.isoformat()})")
