"""Sign SNS envelopes the way Amazon SNS does, with a generated key and certificate.

The default signer (RSA 2048, self-signed, CN and SAN `sns.amazonaws.com`, valid 2000..2099) is made once
per process and cached. Put its certificate in a pinned directory with `write_cert(dir)`; envelopes made
here point at `https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem`, so a
`CertificateStore(pinned_dir=dir)` finds it without any download.
"""

from __future__ import annotations

import base64
import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from bot.aws.sns import string_to_sign

CERT_HOST = "https://sns.us-east-1.amazonaws.com"
TEST_CERT_NAME = "SimpleNotificationService-test.pem"
TEST_CERT_URL = f"{CERT_HOST}/{TEST_CERT_NAME}"
SNS_CN = "sns.amazonaws.com"
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


@dataclass(frozen=True)
class Signer:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_signer(not_before: datetime = datetime(2000, 1, 1, tzinfo=UTC),
                not_after: datetime = datetime(2099, 12, 31, tzinfo=UTC),
                common_name: str = SNS_CN, key_size: int = 2048) -> Signer:
    """A fresh key and self-signed certificate (uncached: use it for expired or foreign certificates)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Amazon.com, Inc."),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Signer(key, cert)


@functools.cache
def default_signer() -> Signer:
    """The session's signer: generated on first use, then reused."""
    return make_signer()


def write_cert(directory: str | Path, signer: Signer | None = None, name: str = TEST_CERT_NAME) -> Path:
    path = Path(directory) / name
    path.write_bytes((signer or default_signer()).pem)
    return path


def sign_envelope(envelope: dict[str, Any], key: rsa.RSAPrivateKey | None = None,
                  version: str = "1") -> dict[str, Any]:
    """A copy of `envelope` with SignatureVersion and Signature (base64) over its string to sign."""
    signed = dict(envelope)
    signed["SignatureVersion"] = version
    signature = (key or default_signer().key).sign(string_to_sign(signed), padding.PKCS1v15(),
                                                   _HASHES[version]())
    signed["Signature"] = base64.b64encode(signature).decode("ascii")
    return signed


def _timestamp(at: datetime | None) -> str:
    at = (at or datetime.now(UTC)).astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def _region(topic_arn: str) -> str:
    parts = topic_arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else "us-east-1"


def make_notification(message: str, topic_arn: str, message_id: str | None = None, subject: str | None = None,
                      timestamp: datetime | None = None, version: str = "1", cert_name: str = TEST_CERT_NAME,
                      key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
    """A signed Notification as SNS POSTs it (field order as SNS sends it)."""
    envelope: dict[str, Any] = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic_arn,
    }
    if subject is not None:
        envelope["Subject"] = subject
    envelope.update({
        "Message": message,
        "Timestamp": _timestamp(timestamp),
        "SignatureVersion": version,
        "SigningCertURL": f"{CERT_HOST}/{cert_name}",
        "UnsubscribeURL": (f"https://sns.{_region(topic_arn)}.amazonaws.com/?Action=Unsubscribe"
                           f"&SubscriptionArn={topic_arn}:{uuid.uuid4()}"),
    })
    return sign_envelope(envelope, key, version)


def make_subscription_confirmation(topic_arn: str, token: str | None = None, message_id: str | None = None,
                                   timestamp: datetime | None = None, version: str = "1",
                                   cert_name: str = TEST_CERT_NAME, key: rsa.RSAPrivateKey | None = None,
                                   type_: str = "SubscriptionConfirmation") -> dict[str, Any]:
    """A signed SubscriptionConfirmation (or, with `type_`, UnsubscribeConfirmation)."""
    token = token or uuid.uuid4().hex * 4
    host = f"https://sns.{_region(topic_arn)}.amazonaws.com"
    action = "subscribe" if type_ == "SubscriptionConfirmation" else "unsubscribe"
    envelope: dict[str, Any] = {
        "Type": type_,
        "MessageId": message_id or str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": (f"You have chosen to {action} the topic {topic_arn}.\n"
                    "To confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": f"{host}/?Action=ConfirmSubscription&TopicArn={topic_arn}&Token={token}",
        "Timestamp": _timestamp(timestamp),
        "SignatureVersion": version,
        "SigningCertURL": f"{CERT_HOST}/{cert_name}",
    }
    return sign_envelope(envelope, key, version)
