"""Amazon Bedrock Application Inference Profiles (AIPs): one interface, two backends.

`AwsProfiles` talks to Bedrock. `LocalProfiles` is the offline registry
(`BOT_PROFILES_BACKEND=local`) kept in the bot's own database, outside the production
schema (bot/aws/local_registry.py), with the same ids, ARN shapes and error codes,
because moto has no inference-profile API. The pure helpers
turn what an admin typed into a model source ARN, a valid profile name and the tags.

Patterns follow the Bedrock service model (botocore `bedrock/2023-04-20`).
"""

from __future__ import annotations

import re
import secrets
import string
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.aws.clients import aws_error
from bot.aws.local_registry import LocalInferenceProfile, ensure_table
from bot.clock import Clock
from bot.db import Database
from bot.errors import AwsError, BadInput

if TYPE_CHECKING:
    from mypy_boto3_bedrock import BedrockClient
    from mypy_boto3_bedrock.type_defs import (
        CreateInferenceProfileRequestTypeDef,
        InferenceProfileSummaryTypeDef,
    )

__all__ = [
    "FM_ID_RE",
    "GEO_PREFIXES",
    "MANAGED_BY_KEY",
    "MANAGED_BY_VALUE",
    "MAX_PROFILE_NAME",
    "PROFILE_ARN_RE",
    "PROFILE_DESCRIPTION_RE",
    "PROFILE_ID_RE",
    "PROFILE_NAME_RE",
    "AwsProfiles",
    "InferenceProfileInfo",
    "LocalProfiles",
    "ProfilesBackend",
    "derive_profile_name",
    "managed_tags",
    "model_id_of",
    "partition_of",
    "resolve_model_source",
]

APPLICATION: Final = "APPLICATION"
ACTIVE: Final = "ACTIVE"
MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "bedrock-bot"
MAX_PROFILE_NAME = 64
MAX_TAGS = 50  # AWS's per-resource tag limit
NOT_FOUND = "ResourceNotFoundException"

# Geo prefixes of system-defined (cross-region) inference profiles; us-gov before us.
GEO_PREFIXES = ("us-gov", "us", "eu", "apac", "global", "ca", "jp", "au")

# The foundation-model id part of the service model's ModelArn pattern.
_FM = r"[a-z0-9-]{1,63}\.(?:[a-z0-9-]{1,63}\.){0,2}[a-z0-9-]{1,63}(?::[a-z0-9-]{1,63}){0,2}"
_GEO_ID = rf"(?P<geo>{'|'.join(re.escape(g) for g in GEO_PREFIXES)})\.(?P<fm>{_FM})"
_PARTITION = r"aws(?:-us-gov|-cn|-iso|-iso-b)?"
# The service model allows an empty region; a real ARN never has one.
_ARN_HEAD = rf"arn:{_PARTITION}:bedrock:[a-z0-9-]{{1,20}}"

FM_ID_RE = re.compile(rf"\A{_FM}\Z")
_GEO_ID_RE = re.compile(rf"\A{_GEO_ID}\Z")
_FM_ARN_RE = re.compile(rf"\A{_ARN_HEAD}:(?:[0-9]{{12}})?:foundation-model/(?P<fm>{_FM})\Z")
_SYSTEM_ARN_RE = re.compile(rf"\A{_ARN_HEAD}:(?:[0-9]{{12}})?:inference-profile/{_GEO_ID}\Z")
_IDENTIFIER_RE = re.compile(
    r"\A(arn:aws(|-us-gov|-cn|-iso|-iso-b):bedrock:(|[0-9a-z-]{0,20}):(|[0-9]{12}):"
    r"(inference-profile|application-inference-profile)/)?[a-zA-Z0-9:.-]+\Z"
)
_TOKEN_RE = re.compile(r"\A[a-zA-Z0-9](?:[-a-zA-Z0-9]{0,254}[a-zA-Z0-9])?\Z")

PROFILE_ID_RE = re.compile(r"\A[a-z0-9]{12}\Z")
PROFILE_ARN_RE = re.compile(
    rf"\A{_ARN_HEAD}:[0-9]{{12}}:application-inference-profile/(?P<id>[a-z0-9]{{12}})\Z"
)
PROFILE_NAME_RE = re.compile(r"\A(?:[0-9a-zA-Z][ _-]?)+\Z")
PROFILE_DESCRIPTION_RE = re.compile(r"\A(?:[0-9a-zA-Z:.][ _-]?)+\Z")  # max 200 chars
# Bedrock's TagKey/TagValue pattern, `\s` narrowed to a plain space.
_TAG_CHARS_RE = re.compile(r"\A[a-zA-Z0-9 ._:/=+@-]*\Z")

_ACCEPTED = ("give a foundation-model id (anthropic.claude-3-haiku-20240307-v1:0) or ARN, "
             "or a system inference-profile id (us.anthropic.…) or ARN")


@dataclass(frozen=True)
class InferenceProfileInfo:
    id: str  # CloudWatch's ModelId dimension value
    arn: str
    name: str
    model_source: str  # the copyFrom ARN (first model ARN when only models are known)
    model_arns: tuple[str, ...]
    status: str
    type: str
    description: str = ""
    tags: Mapping[str, str] | None = None  # None = not fetched


@runtime_checkable
class ProfilesBackend(Protocol):
    def create(self, name: str, model_source_arn: str, tags: Mapping[str, str],
               description: str, client_token: str) -> InferenceProfileInfo: ...

    def get(self, identifier: str) -> InferenceProfileInfo | None: ...

    def list_application(self) -> list[InferenceProfileInfo]: ...

    def tags_of(self, arn: str) -> dict[str, str]: ...

    def delete(self, identifier: str) -> None: ...

    def account_id(self) -> str: ...


# --- pure helpers -------------------------------------------------------------------------


def partition_of(region: str) -> str:
    """The ARN partition a region lives in (GovCloud, China and ISO regions differ)."""
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-isob-"):
        return "aws-iso-b"
    if region.startswith("us-iso-"):
        return "aws-iso"
    return "aws"


def resolve_model_source(model: str, region: str, account_id: str) -> str:
    """The `copyFrom` ARN for what an admin typed; BadInput saying what is accepted."""
    if len(model) > 2048:
        raise BadInput(f"that model is too long (over 2048 characters): {_ACCEPTED}")
    if _FM_ARN_RE.match(model) or _SYSTEM_ARN_RE.match(model):
        return model
    partition = partition_of(region)
    # A geo id also fits the looser foundation-model pattern, so test it first.
    if _GEO_ID_RE.match(model):
        return f"arn:{partition}:bedrock:{region}:{account_id}:inference-profile/{model}"
    if FM_ID_RE.match(model):
        return f"arn:{partition}:bedrock:{region}::foundation-model/{model}"
    if PROFILE_ARN_RE.match(model):
        raise BadInput(f"an application inference profile can't be copied: {_ACCEPTED}")
    raise BadInput(f"{model[:80]!r} is not a model: {_ACCEPTED}")


def model_id_of(model_source_arn: str) -> str:
    """The foundation-model id behind a source ARN (or id), for pricing."""
    for pattern in (_FM_ARN_RE, _SYSTEM_ARN_RE, _GEO_ID_RE):
        found = pattern.match(model_source_arn)
        if found:
            return found.group("fm")
    if FM_ID_RE.match(model_source_arn):
        return model_source_arn
    raise BadInput(f"{model_source_arn[:80]!r} names no foundation model: {_ACCEPTED}")


def _slug(text: str) -> str:
    """ASCII letters, digits and single `-`/`_` separators, none at either end."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^0-9A-Za-z_-]+", "-", text)
    text = re.sub(r"[_-]{2,}", lambda m: "_" if set(m.group()) == {"_"} else "-", text)
    return text.strip("_-")


def _cut(text: str, limit: int) -> str:
    """`text` within `limit` chars, cut at a separator when one is reasonably near."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if text[limit] not in "-_":
        boundary = max(head.rfind("-"), head.rfind("_"))
        if boundary >= limit // 2:
            head = head[:boundary]
    return head.rstrip("-_")


def derive_profile_name(subject_name: str, model: str, suffix: str = "") -> str:
    """A readable, valid AIP name: `<subject>-<model>[-<suffix>]`, at most 64 chars."""
    if model.startswith("arn:"):  # the ARN's resource id is the readable part
        model = model.rsplit("/", 1)[-1]
    tail = _slug(suffix)[:16].strip("-_")
    room = MAX_PROFILE_NAME - (len(tail) + 1 if tail else 0)
    base = "-".join(part for part in (_slug(subject_name), _slug(model)) if part) or "profile"
    name = _cut(base, room)
    name = f"{name}-{tail}" if tail else name
    return name if PROFILE_NAME_RE.match(name) else "profile"


def _tag_problem(key: str, value: str) -> str | None:
    """Why AWS would refuse this tag, or None."""
    if not 1 <= len(key) <= 128:
        return f"tag key {key[:40]!r} must be 1-128 characters"
    if len(value) > 256:
        return f"tag value for {key[:40]!r} must be at most 256 characters"
    if key.lower().startswith("aws:"):
        return f"tag key {key[:40]!r} may not start with aws:"
    if not _TAG_CHARS_RE.match(key) or not _TAG_CHARS_RE.match(value):
        return (f"tag {key[:40]!r}={value[:40]!r} may only use letters, digits, "
                "spaces and _ . : / = + - @")
    return None


def managed_tags(kind: str, subject_name: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The tags the bot puts on an AIP it makes; `extra` cannot rebind the owner."""
    if kind not in ("user", "team"):
        raise BadInput(f"unknown subject kind {kind[:20]!r}: user or team")
    reserved = {"user", "team", MANAGED_BY_KEY}
    clash = sorted(k for k in extra if k.lower() in reserved)
    if clash:
        raise BadInput(f"tag {clash[0][:40]!r} is set by the bot and can't be given")
    tags = {kind: subject_name, MANAGED_BY_KEY: MANAGED_BY_VALUE, **extra}
    if len(tags) > MAX_TAGS:
        raise BadInput(f"at most {MAX_TAGS - 2} extra tags can be given")
    for key, value in tags.items():
        problem = _tag_problem(key, value)
        if problem:
            raise BadInput(problem)
    return tags


def _id_from_arn(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


# --- AWS backend --------------------------------------------------------------------------


@contextmanager
def _aws_call(operation: str) -> Iterator[None]:
    """No raw botocore exception leaves this module."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(operation, exc) from exc


def _summary_info(item: InferenceProfileSummaryTypeDef | Mapping[str, Any]) -> InferenceProfileInfo:
    """Get and List answer the same shape; neither says what the profile was copied from."""
    models = tuple(m["modelArn"] for m in item.get("models", []) if m.get("modelArn"))
    return InferenceProfileInfo(
        id=item["inferenceProfileId"], arn=item["inferenceProfileArn"],
        name=item["inferenceProfileName"], model_source=models[0] if models else "",
        model_arns=models, status=item["status"], type=item["type"],
        description=item.get("description") or "", tags=None,
    )


class AwsProfiles:
    """AIPs in Bedrock. Errors come out as `AwsError` naming the AWS code."""

    def __init__(self, bedrock_client: BedrockClient, sts_client: Any | None = None,
                 account_id: str | None = None) -> None:
        if account_id is None and sts_client is None:
            raise ValueError("AwsProfiles needs an account id or an STS client")
        self._bedrock = bedrock_client
        self._sts: Any = sts_client
        self._account_id = account_id

    def create(self, name: str, model_source_arn: str, tags: Mapping[str, str],
               description: str, client_token: str) -> InferenceProfileInfo:
        params: CreateInferenceProfileRequestTypeDef = {
            "inferenceProfileName": name,
            "modelSource": {"copyFrom": model_source_arn},
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if description:  # the API refuses an empty description
            params["description"] = description
        if client_token:  # otherwise botocore generates one
            params["clientRequestToken"] = client_token
        with _aws_call("CreateInferenceProfile"):
            resp = self._bedrock.create_inference_profile(**params)
        arn = resp["inferenceProfileArn"]
        return InferenceProfileInfo(
            id=_id_from_arn(arn), arn=arn, name=name, model_source=model_source_arn,
            model_arns=(model_source_arn,), status=resp.get("status") or ACTIVE,
            type=APPLICATION, description=description, tags=dict(tags),
        )

    def get(self, identifier: str) -> InferenceProfileInfo | None:
        try:
            with _aws_call("GetInferenceProfile"):
                resp = self._bedrock.get_inference_profile(inferenceProfileIdentifier=identifier)
        except AwsError as err:
            if err.code == NOT_FOUND:
                return None
            raise
        return _summary_info(resp)

    def list_application(self) -> list[InferenceProfileInfo]:
        found: list[InferenceProfileInfo] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            with _aws_call("ListInferenceProfiles"):
                if token:
                    page = self._bedrock.list_inference_profiles(
                        typeEquals=APPLICATION, maxResults=1000, nextToken=token)
                else:
                    page = self._bedrock.list_inference_profiles(
                        typeEquals=APPLICATION, maxResults=1000)
            found.extend(_summary_info(s) for s in page.get("inferenceProfileSummaries", []))
            token = page.get("nextToken")
            if not token or token in seen:  # a repeated token would loop forever
                return found
            seen.add(token)

    def tags_of(self, arn: str) -> dict[str, str]:
        with _aws_call("ListTagsForResource"):
            resp = self._bedrock.list_tags_for_resource(resourceARN=arn)
        return {t["key"]: t["value"] for t in resp.get("tags", [])}

    def delete(self, identifier: str) -> None:
        try:
            with _aws_call("DeleteInferenceProfile"):
                self._bedrock.delete_inference_profile(inferenceProfileIdentifier=identifier)
        except AwsError as err:
            if err.code != NOT_FOUND:
                raise

    def account_id(self) -> str:
        if self._account_id is None:
            with _aws_call("GetCallerIdentity"):
                self._account_id = str(self._sts.get_caller_identity()["Account"])
        return self._account_id


# --- local backend ------------------------------------------------------------------------

_ID_ALPHABET = string.ascii_lowercase + string.digits
_CREATE = "CreateInferenceProfile"


def _validation(operation: str, field: str, value: str, constraint: str) -> AwsError:
    """Worded like Bedrock's own validation errors."""
    return AwsError(operation, "ValidationException",
                    f"Value {value[:80]!r} at '{field}' failed to satisfy constraint: {constraint}")


def _row_info(row: LocalInferenceProfile, with_tags: bool = True) -> InferenceProfileInfo:
    arns = tuple(str(a) for a in (row.models or {}).get("arns", [])) or (row.model_source,)
    return InferenceProfileInfo(
        id=row.id, arn=row.arn, name=row.name, model_source=row.model_source, model_arns=arns,
        status=row.status, type=APPLICATION, description=row.description or "",
        tags={str(k): str(v) for k, v in (row.tags or {}).items()} if with_tags else None,
    )


class LocalProfiles:
    """The offline AIP registry. Each call is its own transaction, as an AWS call would be."""

    def __init__(self, db: Database, region: str, account_id: str, clock: Clock) -> None:
        if not re.fullmatch(r"[0-9]{12}", account_id):
            raise ValueError(f"account id must be 12 digits, got {account_id!r}")
        if not re.fullmatch(r"[a-z0-9-]{1,20}", region):
            raise ValueError(f"not a region: {region!r}")
        self._db = db
        self._region = region
        self._account_id = account_id
        self._clock = clock

    def create(self, name: str, model_source_arn: str, tags: Mapping[str, str],
               description: str, client_token: str) -> InferenceProfileInfo:
        self._validate_create(name, model_source_arn, tags, description, client_token)
        # A lost race on name/token (or a random-id collision) is re-judged on fresh state.
        for _ in range(3):
            try:
                return self._insert_or_replay(name, model_source_arn, tags, description,
                                              client_token)
            except IntegrityError:
                continue
        raise AwsError(_CREATE, "ConflictException", "concurrent modification, try again")

    def get(self, identifier: str) -> InferenceProfileInfo | None:
        self._check_identifier("GetInferenceProfile", identifier)
        with self._session() as s:
            row = s.scalar(select(LocalInferenceProfile).where(_matches(identifier)))
            return _row_info(row) if row else None

    def list_application(self) -> list[InferenceProfileInfo]:
        with self._session() as s:
            rows = s.scalars(select(LocalInferenceProfile).order_by(
                LocalInferenceProfile.created_at, LocalInferenceProfile.id))
            # Tags left out, as ListInferenceProfiles does, so callers can't come to rely on them.
            return [_row_info(row, with_tags=False) for row in rows]

    def tags_of(self, arn: str) -> dict[str, str]:
        with self._session() as s:
            row = s.scalar(select(LocalInferenceProfile).where(LocalInferenceProfile.arn == arn))
            if row is None:
                raise AwsError("ListTagsForResource", NOT_FOUND, f"{arn[:200]} was not found")
            return dict(_row_info(row).tags or {})

    def delete(self, identifier: str) -> None:
        self._check_identifier("DeleteInferenceProfile", identifier)
        with self._session() as s:
            s.execute(delete(LocalInferenceProfile).where(_matches(identifier)))

    def account_id(self) -> str:
        return self._account_id

    @contextmanager
    def _session(self) -> Iterator[Session]:
        # Joins the caller's transaction: on SQLite a second writer would wait on the first.
        with self._db.session_scope(join=True) as s:
            ensure_table(s)
            yield s

    def _insert_or_replay(self, name: str, source: str, tags: Mapping[str, str],
                          description: str, token: str) -> InferenceProfileInfo:
        with self._session() as s:
            if token:
                prior = s.scalar(select(LocalInferenceProfile)
                                 .where(LocalInferenceProfile.client_request_token == token))
                if prior is not None:
                    if (prior.name, prior.model_source) != (name, source):
                        raise AwsError(_CREATE, "ConflictException",
                                       "clientRequestToken was used with other parameters")
                    return _row_info(prior)
            taken = s.scalar(select(LocalInferenceProfile.id)
                             .where(LocalInferenceProfile.name == name))
            if taken is not None:
                raise AwsError(_CREATE, "ConflictException",
                               f"An inference profile named {name} already exists")
            row = self._new_row(name, source, tags, description, token)
            s.add(row)
            s.flush()
            return _row_info(row)

    def _new_row(self, name: str, source: str, tags: Mapping[str, str], description: str,
                 token: str) -> LocalInferenceProfile:
        profile_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        partition = partition_of(self._region)
        arn = (f"arn:{partition}:bedrock:{self._region}:{self._account_id}"
               f":application-inference-profile/{profile_id}")
        # Bedrock lists the foundation model(s) behind a profile; ours is in our region.
        fm_arn = f"arn:{partition}:bedrock:{self._region}::foundation-model/{model_id_of(source)}"
        return LocalInferenceProfile(
            id=profile_id, arn=arn, name=name, description=description, model_source=source,
            models={"arns": [fm_arn]}, tags=dict(tags), status=ACTIVE,
            client_request_token=token or None, created_at=self._clock(),
        )

    @staticmethod
    def _validate_create(name: str, source: str, tags: Mapping[str, str], description: str,
                         token: str) -> None:
        if not 1 <= len(name) <= MAX_PROFILE_NAME or not PROFILE_NAME_RE.match(name):
            raise _validation(_CREATE, "inferenceProfileName", name,
                              "Member must match ([0-9a-zA-Z][ _-]?)+ and be 1-64 characters")
        # Narrower than the service model's copyFrom pattern: AWS goes on to look the model
        # up, which we can't offline, so the id must at least be shaped like a model's.
        if len(source) > 2048 or not (_FM_ARN_RE.match(source) or _SYSTEM_ARN_RE.match(source)):
            raise _validation(_CREATE, "modelSource.copyFrom", source,
                              "Member must be a foundation-model or inference-profile ARN")
        if description and (len(description) > 200
                            or not PROFILE_DESCRIPTION_RE.match(description)):
            raise _validation(_CREATE, "description", description,
                              "Member must match ([0-9a-zA-Z:.][ _-]?)+ and be 1-200 characters")
        if token and not _TOKEN_RE.match(token):
            raise _validation(_CREATE, "clientRequestToken", token,
                              "Member must match [a-zA-Z0-9]([-a-zA-Z0-9]{0,254}[a-zA-Z0-9])?")
        if len(tags) > MAX_TAGS:
            raise AwsError(_CREATE, "TooManyTagsException", f"at most {MAX_TAGS} tags")
        for key, value in tags.items():
            problem = _tag_problem(key, value)
            if problem:
                raise _validation(_CREATE, "tags", f"{key}={value}", problem)

    @staticmethod
    def _check_identifier(operation: str, identifier: str) -> None:
        if not 1 <= len(identifier) <= 2048 or not _IDENTIFIER_RE.match(identifier):
            raise _validation(operation, "inferenceProfileIdentifier", identifier,
                              "Member must be an inference profile id or ARN")


def _matches(identifier: str) -> Any:
    """Bedrock takes an id or an ARN wherever it takes an identifier."""
    return or_(LocalInferenceProfile.id == identifier, LocalInferenceProfile.arn == identifier)
