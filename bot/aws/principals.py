"""What a linked principal is, from its ARN: the kind decides how it can be blocked.

Kinds (docs/enforcement.md has the AWS pages each rule rests on):

- ``user``: an IAM user (``arn:aws:iam::<acct>:user/[path/]name``);
- ``apikey``: the IAM user behind a long-term Bedrock API key (name ``BedrockAPIKey_*``);
- ``role``: an IAM role that is this subject's alone (``…:role/[path/]name``);
- ``session``: one session of a shared customer-managed role
  (``arn:aws:sts::<acct>:assumed-role/<role>/<session>``);
- ``sso``: an IAM Identity Center session (role ``AWSReservedSSO_*``). AWS refuses every
  write to those roles ("this role is only modifiable by AWS"), so such a role is never
  linked whole and never written to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.aws.access import SSO_ROLE_PATH, SSO_ROLE_PREFIX, is_sso_role, parse_principal

KINDS = ("user", "apikey", "role", "session", "sso")
KIND_LABEL = {"user": "IAM user", "apikey": "Bedrock API key", "role": "IAM role",
              "session": "shared-role session", "sso": "SSO session"}
SSO_PREFIX, SSO_PATH = SSO_ROLE_PREFIX, SSO_ROLE_PATH
API_KEY_PREFIX = "BedrockAPIKey_"

_STS = re.compile(r"^arn:(?P<partition>aws(?:-[a-z]+)*):sts::(?P<account>\d{12}):assumed-role/"
                  r"(?P<role>[\w+=,.@-]{1,64})/(?P<session>[\w+=,.@-]{2,64})$", re.ASCII)


@dataclass(frozen=True)
class Linked:
    """A principal as the bot governs it."""

    kind: str
    arn: str  # as linked (the session ARN for session/sso)
    account: str
    name: str  # user or role name
    session: str | None = None  # session / sso only

    @property
    def role_arn(self) -> str:
        """The IAM role behind a session (its path is unknown from the session ARN)."""
        partition = self.arn.split(":")[1]
        return f"arn:{partition}:iam::{self.account}:role/{self.name}"


def classify(arn: str) -> Linked:
    """ARN → Linked, or ValueError with a one-line reason."""
    text = (arn or "").strip()
    m = _STS.match(text)
    if m:
        kind = "sso" if is_sso_role(m["role"]) else "session"
        return Linked(kind, text, m["account"], m["role"], m["session"])
    if text.startswith("arn:") and ":sts:" in text[:20]:
        raise ValueError(f"{text[:120]!r} is not an assumed-role session ARN "
                         "(expected arn:aws:sts::123456789012:assumed-role/<role>/<session>)")
    ref = parse_principal(text)
    account = text.split(":")[4]
    if ref.aws_managed:
        raise ValueError(f"{text[:120]!r} is an IAM Identity Center role, shared by everyone with "
                         "that permission set and only modifiable by AWS: link one session instead, "
                         f"arn:aws:sts::{account}:assumed-role/{ref.name}/<user name>")
    if ref.kind == "user":
        kind = "apikey" if ref.name.startswith(API_KEY_PREFIX) else "user"
        return Linked(kind, ref.arn, account, ref.name)
    return Linked("role", ref.arn, account, ref.name)


def kind_of(arn: str) -> str:
    """The kind of an ARN already validated (for rows written before kinds existed)."""
    try:
        return classify(arn).kind
    except ValueError:
        return "role" if ":role/" in arn else "user"
