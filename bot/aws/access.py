"""Revoke/restore Bedrock access with inline IAM deny policies (DESIGN §4 "Revoke/restore").

One inline policy per (principal, subject), named ``bedrock-bot-deny-<subject>``, denies
``bedrock:InvokeModel`` and ``bedrock:InvokeModelWithResponseStream`` (which also govern
Converse/ConverseStream) on the subject's AIP ARNs, or on ``*``. An explicit Deny beats any
Allow, so the principal's own permissions are left untouched and restore is a plain delete.

Inline policies share one aggregate size quota per principal (user 2,048, role 10,240
characters, whitespace not counted). When the scoped document would not fit next to the
principal's other inline policies, the deny falls back to ``Resource: "*"`` (broader, never a
failure); only when even that cannot fit does ``deny`` raise ``AwsError(..., "LimitExceeded")``.

Every botocore failure surfaces as ``AwsError`` (``bot.aws.clients.aws_error``) naming the
operation and the AWS error code.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from botocore.exceptions import BotoCoreError, ClientError

from bot.aws.clients import aws_error
from bot.errors import AwsError

POLICY_PREFIX = "bedrock-bot-deny-"
# Every inference entry point (Service Authorization Reference, docs/enforcement.md):
# InvokeModel also governs Converse and StartAsyncInvoke, InvokeModelWithResponseStream
# ConverseStream; batch jobs, Bedrock API keys and the bedrock-mantle endpoint have their own.
DENY_ACTIONS = (
    "bedrock:InvokeModel",
    "bedrock:InvokeModelWithResponseStream",
    "bedrock:CreateModelInvocationJob",
    "bedrock:CallWithBearerToken",
    "bedrock-mantle:CreateInference",
    "bedrock-mantle:CallWithBearerToken",
)
# IAM Identity Center roles: AWS refuses any write to them ("this role is only modifiable by
# AWS"); moto does not, so the bot refuses them itself.
SSO_ROLE_PREFIX = "AWSReservedSSO_"
SSO_ROLE_PATH = "/aws-reserved/sso.amazonaws.com/"
SID = "BedrockBotDeny"
# IAM's aggregate inline-policy size quotas per principal (characters, whitespace excluded).
INLINE_LIMITS = {"user": 2048, "role": 10240, "group": 5120}

POLICY_NAME_MAX = 128
_NAME_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)
_NAME_OK = re.compile(r"[\w+=,.@-]+", re.ASCII)
_WS = re.compile(r"\s")
_HASH_LEN = 8
_ARN = re.compile(
    r"^arn:(?P<partition>aws(?:-[a-z]+)*):(?P<service>[a-z0-9-]*):(?P<region>[a-z0-9-]*)"
    r":(?P<account>[^:]*):(?P<resource>.*)$", re.ASCII)
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_PRINCIPAL_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
_PATH_CHARS = re.compile(r"[\x21-\x7e]*", re.ASCII)

T = TypeVar("T")


# ---------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class PrincipalRef:
    """An IAM user or role that can carry an inline policy."""

    kind: str  # "user" | "role"
    name: str  # the last path segment: what UserName / RoleName take
    arn: str
    path: str = "/"

    @property
    def aws_managed(self) -> bool:
        """An IAM Identity Center role: never writable by anyone but AWS."""
        return self.kind == "role" and is_sso_role(self.name, self.path)


def is_sso_role(name: str, path: str = "/") -> bool:
    return name.startswith(SSO_ROLE_PREFIX) or path.startswith(SSO_ROLE_PATH)


def refuse_aws_managed(ref: PrincipalRef, op: str) -> None:
    """AWS answers UnmodifiableEntity for any write to an Identity Center role; so do we,
    before calling (moto would accept the write)."""
    if ref.aws_managed:
        raise AwsError(op, "UnmodifiableEntity",
                       f"{ref.arn} is an IAM Identity Center role: it is only modifiable by AWS")


def parse_principal(arn: str) -> PrincipalRef:
    """``arn:<partition>:iam::<12 digits>:user|role/[path/]name`` -> PrincipalRef.

    Anything else raises ValueError with a one-line reason (STS session ARNs included:
    a deny must go on the role itself, not on one of its sessions).
    """
    text = (arn or "").strip()
    shown = text[:120]
    m = _ARN.match(text)
    if not m:
        raise ValueError(f"{shown!r} is not an ARN (expected arn:aws:iam::123456789012:user/alice)")
    service, region, account, resource = m["service"], m["region"], m["account"], m["resource"]
    if service == "sts":
        role = resource.split("/")[1] if resource.startswith("assumed-role/") and "/" in resource else None
        hint = f" — link the role arn:{m['partition']}:iam::{account}:role/{role} instead" if role else ""
        raise ValueError(f"{shown!r} is an STS session, not an IAM user or role{hint}")
    if service != "iam":
        raise ValueError(f"{shown!r} is a {service or 'blank'} ARN, not an IAM user or role ARN")
    if region:
        raise ValueError(f"{shown!r}: IAM ARNs have no region")
    if not _ACCOUNT.fullmatch(account):
        raise ValueError(f"{shown!r}: the account id must be 12 digits")
    kind, sep, path_and_name = resource.partition("/")
    if kind not in ("user", "role") or not sep:
        raise ValueError(f"{shown!r} names an IAM {kind or 'resource'}, not a user or role")
    path, _, name = path_and_name.rpartition("/")
    if not _PRINCIPAL_NAME.fullmatch(name):
        raise ValueError(f"{shown!r}: {name!r} is not a valid IAM {kind} name")
    if path and (not _PATH_CHARS.fullmatch(path) or "" in path.split("/") or len(path) > 510):
        raise ValueError(f"{shown!r}: {path!r} is not a valid IAM path")
    return PrincipalRef(kind=kind, name=name, arn=text, path=f"/{path}/" if path else "/")


def policy_name(subject_name: str) -> str:
    """``bedrock-bot-deny-<subject>``, valid under IAM's policy-name pattern, ≤128 chars.

    A subject name that is already valid and short enough is used verbatim (so
    ``denied_subjects`` gives it back). Otherwise invalid characters become ``-``, the name
    is cut to fit and a short hash of the original is appended, so distinct subjects never
    share a policy.
    """
    if not subject_name:
        raise ValueError("a deny policy needs a non-empty subject name")
    room = POLICY_NAME_MAX - len(POLICY_PREFIX)
    if _NAME_OK.fullmatch(subject_name) and len(subject_name) <= room:
        return POLICY_PREFIX + subject_name
    digest = hashlib.sha256(subject_name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]
    clean = _NAME_BAD.sub("-", subject_name)[: room - _HASH_LEN - 1]
    return f"{POLICY_PREFIX}{clean}-{digest}"


def deny_document(resources: Sequence[str] | None) -> dict[str, Any]:
    """The deny policy: sorted unique resources, or ``"*"`` for None, empty or any ``"*"``."""
    unique = sorted({r for r in (resources or ()) if r})
    resource: str | list[str] = "*" if not unique or "*" in unique else unique
    return {
        "Version": "2012-10-17",
        "Statement": [{"Sid": SID, "Effect": "Deny", "Action": list(DENY_ACTIONS), "Resource": resource}],
    }


def _serialize(doc: dict[str, Any]) -> str:
    """What we send to IAM: compact JSON, characters kept as they are."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def document_size(doc: dict[str, Any] | str) -> int:
    """A policy's size as IAM counts it against the quota: its characters minus whitespace.

    A dict is measured as we would send it (compact JSON); a string as given (URL-decoded
    first when it comes back URL-encoded from IAM).
    """
    text = _serialize(doc) if isinstance(doc, dict) else _decode_text(doc)
    return len(_WS.sub("", text))


def _decode_text(raw: str) -> str:
    """IAM returns policy documents URL-encoded; boto3 usually decodes them, not always."""
    stripped = raw.lstrip()
    return unquote(raw) if stripped.startswith("%") or not stripped.startswith("{") else raw


def _parse_document(raw: Any) -> dict[str, Any] | None:
    """A policy document as returned by Get*Policy (dict, JSON or URL-encoded JSON) -> dict."""
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            parsed = json.loads(_decode_text(raw))
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _raw_size(raw: Any) -> int:
    return document_size(raw) if isinstance(raw, dict | str) else 0


# ---------------------------------------------------------------- the adapter


@dataclass(frozen=True)
class DenyResult:
    principal_arn: str
    policy_name: str
    resources: tuple[str, ...]  # ("*",) when the deny is a wildcard
    fell_back_to_wildcard: bool  # specific resources were asked for, "*" was written (size quota)
    dry_run: bool
    changed: bool  # the policy was written (dry run: would have been)


class _Api:
    """The user/role variants of the IAM inline-policy calls."""

    def __init__(self, client: Any, ref: PrincipalRef) -> None:
        self.client = client
        self.ref = ref
        cap = ref.kind.capitalize()
        self.cap = cap
        self.key = {f"{cap}Name": ref.name}

    def call(self, verb: str, **kwargs: Any) -> Any:
        op = self.op(verb)
        method: Callable[..., Any] = getattr(self.client, _snake(op))
        return _guard(op, lambda: method(**self.key, **kwargs))

    def op(self, verb: str) -> str:
        return f"{verb}{self.cap}Policy"

    def list_names(self) -> list[str]:
        op = f"List{self.cap}Policies"

        def collect() -> list[str]:
            names: list[str] = []
            for page in self.client.get_paginator(_snake(op)).paginate(**self.key):
                names.extend(page.get("PolicyNames", []))
            return names

        return _guard(op, collect)

    def get(self, name: str) -> Any | None:
        """The stored document (raw), or None when there is no such policy."""
        try:
            return self.call("Get", PolicyName=name).get("PolicyDocument")
        except AwsError as exc:
            if exc.code == "NoSuchEntity":
                return None
            raise


def _snake(op: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()


def _guard(op: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(op, exc) from exc


class IamAccess:
    """Put/delete the bot's inline deny policies on IAM users and roles.

    ``dry_run=True`` (``BOT_DRY_RUN=1``) reads IAM as usual but never writes: ``deny`` and
    ``allow`` report what they would have done.
    """

    def __init__(self, iam_client: Any, dry_run: bool = False) -> None:
        self.iam = iam_client
        self.dry_run = dry_run

    def deny(self, principal_arn: str, subject_name: str, resources: Sequence[str] | None) -> DenyResult:
        """Deny Bedrock invocation to the principal for this subject (idempotent)."""
        ref = parse_principal(principal_arn)
        refuse_aws_managed(ref, "PutRolePolicy")
        name = policy_name(subject_name)
        api = _Api(self.iam, ref)
        limit = INLINE_LIMITS[ref.kind]

        others = 0
        existing: Any | None = None
        for other in api.list_names():
            raw = api.get(other)
            if other == name:
                existing = raw
            elif raw is not None:
                others += _raw_size(raw)

        wanted = deny_document(resources)
        doc = wanted
        fell_back = False
        if others + document_size(doc) > limit:
            doc = deny_document(None)
            fell_back = wanted != doc
            if others + document_size(doc) > limit:
                raise AwsError(
                    api.op("Put"), "LimitExceeded",
                    f"cannot deny Bedrock to {ref.arn}: its other inline policies already use {others} of "
                    f"{limit} characters and even the wildcard deny needs {document_size(doc)}; "
                    "move some of them to managed policies")

        if existing is not None and _parse_document(existing) == doc:
            return self._result(ref, name, doc, fell_back, changed=False)
        if not self.dry_run:
            try:
                api.call("Put", PolicyName=name, PolicyDocument=_serialize(doc))
            except AwsError as exc:
                # IAM may count differently from us: the scoped deny was refused for size, so the
                # wildcard (broader, smaller) is the safe answer rather than no deny at all.
                if exc.code not in ("LimitExceeded", "LimitExceededException") or _is_wildcard(doc):
                    raise
                doc = deny_document(None)
                fell_back = True
                if existing is not None and _parse_document(existing) == doc:
                    return self._result(ref, name, doc, fell_back, changed=False)
                api.call("Put", PolicyName=name, PolicyDocument=_serialize(doc))
        return self._result(ref, name, doc, fell_back, changed=True)

    def allow(self, principal_arn: str, subject_name: str) -> bool:
        """Remove this subject's deny from the principal; True when one was (would be) deleted."""
        ref = parse_principal(principal_arn)
        refuse_aws_managed(ref, "DeleteRolePolicy")
        name = policy_name(subject_name)
        api = _Api(self.iam, ref)
        if self.dry_run:
            return api.get(name) is not None
        try:
            api.call("Delete", PolicyName=name)
        except AwsError as exc:
            if exc.code == "NoSuchEntity":
                return False
            raise
        return True

    def has_deny(self, principal_arn: str, subject_name: str) -> bool:
        ref = parse_principal(principal_arn)
        return _Api(self.iam, ref).get(policy_name(subject_name)) is not None

    def denied_subjects(self, principal_arn: str) -> list[str]:
        """Subject parts of the bot's deny policies on the principal, sorted (for reconcile).

        For subject names that ``policy_name`` had to sanitise this is the sanitised,
        hash-suffixed form: reconcile by comparing ``POLICY_PREFIX + s`` with ``policy_name(subject)``.
        """
        ref = parse_principal(principal_arn)
        names = _Api(self.iam, ref).list_names()
        return sorted(n[len(POLICY_PREFIX):] for n in names if n.startswith(POLICY_PREFIX))

    def _result(self, ref: PrincipalRef, name: str, doc: dict[str, Any], fell_back: bool,
                changed: bool) -> DenyResult:
        resource = doc["Statement"][0]["Resource"]
        resources = (resource,) if isinstance(resource, str) else tuple(resource)
        return DenyResult(principal_arn=ref.arn, policy_name=name, resources=resources,
                          fell_back_to_wildcard=fell_back, dry_run=self.dry_run, changed=changed)


def _is_wildcard(doc: dict[str, Any]) -> bool:
    return bool(doc["Statement"][0]["Resource"] == "*")
