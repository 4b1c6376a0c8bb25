"""One enforcement method per principal kind, chosen automatically (docs/enforcement.md).

- user, role → ``inline-deny``: ``bedrock-bot-deny-<subject>`` on the user/role (``IamAccess``);
- apikey → ``api-key``: that deny on the key's IAM user, and its active Bedrock
  service-specific credentials set Inactive (exactly those are reactivated on restore);
- session → ``session-deny``: one bot-owned inline policy ``bedrock-bot-sessions-deny`` on the
  shared role, denying when ``aws:userid`` is ``<RoleId>:<session>`` of a revoked session;
- sso → ``aip-tags`` (``BOT_SSO_METHOD=tags``): the subject's AIPs tagged
  ``bedrock-bot:access=revoked`` (the permission set allows inference only through AIPs
  tagged ``allowed``); ``scp`` (``BOT_SSO_METHOD=scp``): one SCP ``bedrock-bot-sessions-deny``
  denying when ``aws:userid`` matches; otherwise ``none``: reported as *not blocked*.

An Identity Center role is never written to (``refuse_aws_managed``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from bot.aws.access import (
    DENY_ACTIONS,
    INLINE_LIMITS,
    IamAccess,
    PrincipalRef,
    _Api,
    _guard,
    _parse_document,
    _raw_size,
    _serialize,
    document_size,
    refuse_aws_managed,
)
from bot.aws.principals import KIND_LABEL, Linked, classify
from bot.errors import AwsError

SESSIONS_POLICY = "bedrock-bot-sessions-deny"  # not under POLICY_PREFIX: no subject owns it
SESSIONS_SID = "BedrockBotDenySessions"
ACCESS_TAG = "bedrock-bot:access"  # allowed | revoked, on AIPs (BOT_SSO_METHOD=tags)
BEDROCK_SERVICE = "bedrock.amazonaws.com"
SCP_LIMIT = 5120  # AWS Organizations: maximum SCP document size, characters
SSO_METHODS = ("tags", "scp", "none")


@dataclass(frozen=True)
class Block:
    """What one principal's block did."""

    arn: str
    kind: str
    method: str  # inline-deny | api-key | session-deny | aip-tags | scp | none
    blocked: bool  # the principal can no longer invoke (dry run: would not)
    changed: bool
    reason: str = ""  # why not blocked
    credentials: tuple[str, ...] = ()  # service-specific credentials this call deactivated

    @property
    def label(self) -> str:
        return KIND_LABEL.get(self.kind, self.kind)


@dataclass(frozen=True)
class Method:
    """The method a revoke would use for a principal, and what it lacks (for /bedrock check)."""

    kind: str
    method: str
    would_block: bool
    missing: str = ""


def sessions_document(userids: Sequence[str]) -> dict[str, Any]:
    """Deny inference to the listed ``aws:userid`` values (``<RoleId>:<session>``), exact match."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": SESSIONS_SID, "Effect": "Deny", "Action": list(DENY_ACTIONS), "Resource": "*",
        "Condition": {"StringEquals": {"aws:userid": sorted(set(userids))}}}]}


def userids_in(doc: dict[str, Any] | None) -> set[str]:
    """The ``aws:userid`` values a sessions document denies (empty for anything else)."""
    if not doc:
        return set()
    found: set[str] = set()
    for st in doc.get("Statement") or []:
        if isinstance(st, dict) and st.get("Sid") == SESSIONS_SID:
            value = (st.get("Condition") or {}).get("StringEquals", {}).get("aws:userid", [])
            found.update([value] if isinstance(value, str) else value)
    return found


class Enforcer(IamAccess):
    """IamAccess plus the methods for sessions, SSO sessions and API keys."""

    def __init__(self, iam_client: Any, dry_run: bool = False, sso_method: str = "none",
                 client: Callable[[str], Any] | None = None, scp_target: str | None = None) -> None:
        super().__init__(iam_client, dry_run)
        if sso_method not in SSO_METHODS:
            raise ValueError(f"BOT_SSO_METHOD must be one of {', '.join(SSO_METHODS)}")
        self.sso_method = sso_method
        self.scp_target = scp_target
        self._client = client

    def aws(self, service: str) -> Any:
        if self._client is None:
            raise AwsError(service, "NotConfigured", f"no {service} client configured")
        return self._client(service)

    # ------------------------------------------------------------ choosing

    def method(self, arn: str) -> Method:
        p = classify(arn)
        if p.kind in ("user", "role"):
            return Method(p.kind, "inline-deny", True)
        if p.kind == "apikey":
            return Method(p.kind, "api-key", True)
        if p.kind == "session":
            return Method(p.kind, "session-deny", True)
        if self.sso_method == "tags":
            return Method(p.kind, "aip-tags", True)
        if self.sso_method == "scp":
            if not self.scp_target:
                return Method(p.kind, "scp", False, "BOT_SCP_TARGET (account, OU or root id) is not set")
            return Method(p.kind, "scp", True)
        return Method(p.kind, "none", False, "no method configured (BOT_SSO_METHOD=tags or scp); "
                      "see docs/enforcement.md")

    # ------------------------------------------------------------ block / release

    def block(self, arn: str, subject: str, resources: Sequence[str] | None,
              aips: Sequence[str] = ()) -> Block:
        p = classify(arn)
        m = self.method(arn)
        if not m.would_block:
            return Block(arn, p.kind, m.method, False, False, m.missing)
        if m.method == "inline-deny":
            return Block(arn, p.kind, m.method, True, self.deny(arn, subject, resources).changed)
        if m.method == "api-key":
            changed = self.deny(arn, subject, resources).changed
            off = self.keys_off(p.name)
            return Block(arn, p.kind, m.method, True, changed or bool(off), credentials=tuple(off))
        if m.method == "session-deny":
            return Block(arn, p.kind, m.method, True, self.session_deny(p, add=True))
        if m.method == "aip-tags":
            return Block(arn, p.kind, m.method, True, self.tag_aips(aips, "revoked"))
        return Block(arn, p.kind, m.method, True, self.scp_deny(p, add=True))

    def release(self, arn: str, subject: str, credentials: Sequence[str] = (),
                aips: Sequence[str] = ()) -> bool:
        """Undo `block` (idempotent). True when something was (would be) changed."""
        p = classify(arn)
        m = self.method(arn)
        if m.method in ("inline-deny", "api-key"):
            changed = self.allow(arn, subject)
            if m.method == "api-key":
                changed = self.keys_on(p.name, credentials) or changed
            return changed
        if m.method == "session-deny":
            return self.session_deny(p, add=False)
        if m.method == "aip-tags":
            return self.tag_aips(aips, "allowed")
        if m.method == "scp" and m.would_block:
            return self.scp_deny(p, add=False)
        return False

    def is_blocked(self, arn: str, subject: str, aips: Sequence[str] = ()) -> bool | None:
        """What AWS holds now for this principal (None: nothing the bot can read)."""
        p = classify(arn)
        m = self.method(arn)
        if m.method in ("inline-deny", "api-key"):
            return self.has_deny(arn, subject)
        if m.method == "session-deny":
            return self._userid(p) in userids_in(_parse_document(self._role_api(p).get(SESSIONS_POLICY)))
        if m.method == "aip-tags":
            return all(self._tags(a).get(ACCESS_TAG) == "revoked" for a in aips) if aips else None
        if m.method == "scp" and m.would_block:
            found = self._scp()
            return self._userid(p) in userids_in(found[1] if found else None)
        return None

    # ------------------------------------------------------------ shared-role sessions

    def _role_api(self, p: Linked) -> _Api:
        return _Api(self.iam, PrincipalRef("role", p.name, p.role_arn))

    def _role(self, p: Linked) -> tuple[str, PrincipalRef]:
        """GetRole: the session's ``aws:userid`` (``<RoleId>:<session>``) and the role itself."""
        role = _guard("GetRole", lambda: self.iam.get_role(RoleName=p.name))["Role"]
        ref = PrincipalRef("role", role["RoleName"], role["Arn"], role.get("Path", "/"))
        return f"{role['RoleId']}:{p.session}", ref

    def _userid(self, p: Linked) -> str:
        return self._role(p)[0]

    def session_deny(self, p: Linked, add: bool) -> bool:
        """Add/remove one session in the role's sessions policy; the whole role is never denied."""
        uid, ref = self._role(p)
        refuse_aws_managed(ref, "PutRolePolicy")  # an SSO role under another name: its path says so
        api = self._role_api(p)
        others = 0
        current: set[str] = set()
        for name in api.list_names():
            raw = api.get(name)
            if name == SESSIONS_POLICY:
                current = userids_in(_parse_document(raw))
            elif raw is not None:
                others += _raw_size(raw)
        wanted = current | {uid} if add else current - {uid}
        if wanted == current:
            return False
        if self.dry_run:
            return True
        if not wanted:
            api.call("Delete", PolicyName=SESSIONS_POLICY)
            return True
        doc = sessions_document(sorted(wanted))
        if others + document_size(doc) > INLINE_LIMITS["role"]:
            raise AwsError("PutRolePolicy", "LimitExceeded",
                           f"cannot deny session {p.session} of {p.role_arn}: the role's inline policies "
                           f"would need {others + document_size(doc)} of {INLINE_LIMITS['role']} "
                           "characters; the bot never blocks the whole role instead — revoke fewer "
                           "sessions or move the role's other inline policies to managed policies")
        api.call("Put", PolicyName=SESSIONS_POLICY, PolicyDocument=_serialize(doc))
        return True

    # ------------------------------------------------------------ SSO: SCP

    def _scp(self) -> tuple[str, dict[str, Any]] | None:
        org = self.aws("organizations")
        pages = org.get_paginator("list_policies").paginate(Filter="SERVICE_CONTROL_POLICY")
        for page in _guard("ListPolicies", lambda: list(pages)):
            for summary in page.get("Policies", []):
                if summary["Name"] == SESSIONS_POLICY:
                    pid = str(summary["Id"])
                    got = _guard("DescribePolicy", partial(org.describe_policy, PolicyId=pid))
                    return pid, json.loads(got["Policy"]["Content"])
        return None

    def scp_deny(self, p: Linked, add: bool) -> bool:
        uid = self._userid(p)
        org = self.aws("organizations")
        found = self._scp()
        current = userids_in(found[1] if found else None)
        wanted = current | {uid} if add else current - {uid}
        if wanted == current:
            return False
        if self.dry_run:
            return True
        # An SCP cannot be left with no statement; an empty set keeps a Deny that matches nobody.
        doc = sessions_document(sorted(wanted) or ["bedrock-bot:nobody"])
        text = _serialize(doc)
        if len(text) > SCP_LIMIT:
            raise AwsError("UpdatePolicy", "ConstraintViolationException",
                           f"the SCP {SESSIONS_POLICY} would be {len(text)} of {SCP_LIMIT} characters")
        if found:
            _guard("UpdatePolicy", lambda: org.update_policy(PolicyId=found[0], Content=text))
            return True
        created = _guard("CreatePolicy", lambda: org.create_policy(
            Content=text, Description="bedrock-bot: revoked sessions", Name=SESSIONS_POLICY,
            Type="SERVICE_CONTROL_POLICY"))
        policy_id = created["Policy"]["PolicySummary"]["Id"]
        _guard("AttachPolicy", lambda: org.attach_policy(PolicyId=policy_id, TargetId=self.scp_target))
        return True

    # ------------------------------------------------------------ SSO: AIP tags

    def _tags(self, aip: str) -> dict[str, str]:
        got = _guard("ListTagsForResource", lambda: self.aws("bedrock").list_tags_for_resource(
            resourceARN=aip))
        return {t["key"]: t["value"] for t in got.get("tags", [])}

    def tag_aips(self, aips: Sequence[str], value: str) -> bool:
        changed = False
        for aip in aips:
            if self._tags(aip).get(ACCESS_TAG) == value:
                continue
            changed = True
            if not self.dry_run:
                _guard("TagResource", partial(self.aws("bedrock").tag_resource, resourceARN=aip,
                                              tags=[{"key": ACCESS_TAG, "value": value}]))
        return changed

    # ------------------------------------------------------------ API keys

    def _credentials(self, user: str) -> list[dict[str, Any]]:
        got = _guard("ListServiceSpecificCredentials", lambda: self.iam.list_service_specific_credentials(
            UserName=user, ServiceName=BEDROCK_SERVICE))
        return list(got.get("ServiceSpecificCredentials", []))

    def keys_off(self, user: str) -> list[str]:
        """Deactivate the user's active Bedrock API keys; their ids (to reactivate exactly those)."""
        active = [c["ServiceSpecificCredentialId"] for c in self._credentials(user)
                  if c["Status"] == "Active"]
        if not self.dry_run:
            for cid in active:
                self._set_key(user, cid, "Inactive")
        return active

    def keys_on(self, user: str, credentials: Sequence[str]) -> bool:
        """Reactivate the listed keys (those the bot deactivated), if still inactive."""
        inactive = {c["ServiceSpecificCredentialId"] for c in self._credentials(user)
                    if c["Status"] == "Inactive"}
        todo = [cid for cid in credentials if cid in inactive]
        if not self.dry_run:
            for cid in todo:
                self._set_key(user, cid, "Active")
        return bool(todo)

    def _set_key(self, user: str, cid: str, status: str) -> None:
        _guard("UpdateServiceSpecificCredential", lambda: self.iam.update_service_specific_credential(
            UserName=user, ServiceSpecificCredentialId=cid, Status=status))


def enforcer(access: IamAccess) -> Enforcer:
    """An IamAccess built elsewhere (tests, old callers) as an Enforcer with no SSO method."""
    return access if isinstance(access, Enforcer) else Enforcer(access.iam, access.dry_run)
