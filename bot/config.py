"""Settings, grouped by concern and built once by `load_settings()`.

Nothing here reads the environment at import time: `load_settings()` is called by the
CLI (or a test) and the resulting object is passed down.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_BASE = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,}\Z")
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}\Z")
_TOKEN = re.compile(r"^[!-+\--~]{16,256}\Z")  # printable ASCII, no space, no comma
_IAM_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:(user|role)/[\w+=,.@/-]{1,512}\Z")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}\Z")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}\Z")
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@!-]{1,512}\Z")
REGION_HINT = ("no AWS region: set one with `export AWS_REGION=eu-west-1` (or AWS_DEFAULT_REGION, "
               "or `region` in your AWS profile)")
# Kinesis: a stream name is 1-128 of [a-zA-Z0-9_.-]; BOT_USAGE_STREAM is a name or the stream's ARN.
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}\Z")
_STREAM_ARN = re.compile(
    r"^arn:aws[a-z-]*:kinesis:(?P<region>[a-z0-9-]+):\d{12}:stream/(?P<name>[A-Za-z0-9_.-]{1,128})\Z")

_SCP_TARGET = re.compile(r"\d{12}|ou-[0-9a-z]{4,32}-[a-z0-9]{8,32}|r-[0-9a-z]{4,32}")


def _split_csv(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError("expected a comma-separated list")


class SlackSettings(BaseSettings):
    model_config = _BASE
    bot_token: str = Field("", validation_alias="SLACK_BOT_TOKEN", repr=False)
    signing_secret: str = Field("", validation_alias="SLACK_SIGNING_SECRET", repr=False)
    app_token: str = Field("", validation_alias="SLACK_APP_TOKEN", repr=False)
    api_url: str = Field("https://slack.com/api/", validation_alias="SLACK_API_URL")

    @field_validator("api_url")
    @classmethod
    def _trailing_slash(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("SLACK_API_URL must be an http(s) URL")
        return v if v.endswith("/") else v + "/"


class DatabaseSettings(BaseSettings):
    model_config = _BASE
    url: str = Field("sqlite:///bedrock-bot.db", validation_alias="DATABASE_URL", repr=False)

    @field_validator("url")
    @classmethod
    def _known_dialect(cls, v: str) -> str:
        if v.startswith("postgres://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgres://")
        if v.startswith("postgresql://"):
            v = "postgresql+psycopg://" + v.removeprefix("postgresql://")
        if not v.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ValueError("DATABASE_URL must be sqlite:/// or postgresql+psycopg://")
        return v


class AwsSettings(BaseSettings):
    model_config = _BASE
    # "" = none found; see _resolve_region. serve, socket, run-job and iam-policy refuse to start
    # without one (REGION_HINT) instead of guessing.
    region: str = Field("", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    endpoint_url: str | None = Field(None, validation_alias="AWS_ENDPOINT_URL")
    profiles_backend: Literal["aws", "local"] = Field("aws", validation_alias="BOT_PROFILES_BACKEND")
    invocation_log_group: str | None = Field(None, validation_alias="BOT_INVOCATION_LOG_GROUP")
    metadata_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="BOT_METADATA_KEYS"
    )
    sns_topic_arns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="BOT_SNS_TOPIC_ARNS"
    )
    alarm_topic_arn_raw: str | None = Field(None, validation_alias="BOT_ALARM_TOPIC_ARN")
    sns_cert_dir: str | None = Field(None, validation_alias="BOT_SNS_CERT_DIR")
    sqs_queue_url: str | None = Field(None, validation_alias="BOT_SQS_QUEUE_URL")
    database_secret: str | None = Field(None, validation_alias="BOT_DATABASE_SECRET")
    dry_run: bool = Field(False, validation_alias="BOT_DRY_RUN")
    usage_stream: str | None = Field(None, validation_alias="BOT_USAGE_STREAM")

    # How IAM Identity Center sessions are blocked (docs/enforcement.md): `tags` once the
    # baseline permission set (`bedrock-bot iam-policy --permission-set`) is in place, `scp`
    # when the bot may manage an SCP in AWS Organizations, `none`: reported as not blocked.
    sso_method: Literal["tags", "scp", "none"] = Field("none", validation_alias="BOT_SSO_METHOD")
    scp_target: str | None = Field(None, validation_alias="BOT_SCP_TARGET")

    _split = field_validator("metadata_keys", "sns_topic_arns", mode="before")(
        classmethod(lambda cls, v: _split_csv(v))
    )

    @field_validator("metadata_keys")
    @classmethod
    def _valid_keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _METADATA_KEY.match(key):
                raise ValueError(f"{key!r} is not a requestMetadata key (letters, digits, _; ≤64)")
        return v

    @field_validator("region")
    @classmethod
    def _valid_region(cls, v: str) -> str:
        v = v.strip()
        if v and not _REGION.match(v):
            raise ValueError(f"{v!r} is not an AWS region (like eu-west-1)")
        return v

    @model_validator(mode="after")
    def _resolve_region(self) -> AwsSettings:
        """As boto3 finds it: AWS_REGION (the bot's own, .env too), AWS_DEFAULT_REGION, then the
        `region` of the AWS profile (AWS_PROFILE or default) through botocore's session."""
        if not self.region:
            self.region = profile_region()
        return self

    @field_validator("database_secret")
    @classmethod
    def _valid_secret(cls, v: str | None) -> str | None:
        if v is not None and not _SECRET_ARN.match(v.strip()):
            raise ValueError(f"not a Secrets Manager secret ARN: {v!r}")
        return v.strip() if v else None

    @field_validator("scp_target")
    @classmethod
    def _valid_target(cls, v: str | None) -> str | None:
        if v is not None and not _SCP_TARGET.fullmatch(v):
            raise ValueError(f"BOT_SCP_TARGET must be an account id, an OU id or a root id: {v!r}")
        return v

    @field_validator("alarm_topic_arn_raw")
    @classmethod
    def _valid_alarm_topic(cls, v: str | None) -> str | None:
        if v is not None and not _TOPIC_ARN.match(v):
            raise ValueError(f"not an SNS topic ARN: {v!r}")
        return v

    @field_validator("sns_topic_arns")
    @classmethod
    def _valid_arns(cls, v: list[str]) -> list[str]:
        for arn in v:
            if not _TOPIC_ARN.match(arn):
                raise ValueError(f"not an SNS topic ARN: {arn!r}")
        return v

    @field_validator("usage_stream")
    @classmethod
    def _valid_stream(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip()
        if not (_STREAM_NAME.match(v) or _STREAM_ARN.match(v)):
            raise ValueError(f"BOT_USAGE_STREAM: {v[:200]!r} is not a Kinesis stream name (1-128 of "
                             "A-Z a-z 0-9 _ . -) or arn:aws:kinesis:<region>:<account>:stream/<name>")
        return v

    @model_validator(mode="after")
    def _stream_in_region(self) -> AwsSettings:
        m = _STREAM_ARN.match(self.usage_stream or "")
        if m and self.region and m["region"] != self.region:  # no region: startup refuses anyway
            raise ValueError(f"BOT_USAGE_STREAM is in {m['region']}, but AWS_REGION is {self.region}: "
                             "the bot reads the stream in its own region")
        return self

    @property
    def usage_stream_name(self) -> str | None:
        """The stream's name, whether BOT_USAGE_STREAM holds the name or the ARN."""
        m = _STREAM_ARN.match(self.usage_stream or "")
        return m["name"] if m else self.usage_stream

    @property
    def alarm_topic_arn(self) -> str | None:
        return self.alarm_topic_arn_raw or (self.sns_topic_arns[0] if self.sns_topic_arns else None)


def profile_region() -> str:
    """The region botocore's session resolves (AWS_DEFAULT_REGION, then the profile's `region`),
    or "" when there is none or the profile cannot be read."""
    import botocore.session
    from botocore.exceptions import BotoCoreError

    try:
        region = botocore.session.Session().get_config_variable("region")
    except BotoCoreError:  # AWS_PROFILE names a profile that does not exist
        return ""
    region = str(region or "").strip()
    return region if _REGION.match(region) else ""


_TPM_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,255}")


def parse_model_tpm(raw: object) -> dict[str, int]:
    """BOT_MODEL_TPM: `model-id=tokens-per-minute,…` (a dict is taken as it is, checked the same)."""
    if isinstance(raw, dict):
        pairs = [(str(k), str(v)) for k, v in raw.items()]
    elif raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    elif isinstance(raw, str):
        pairs = []
        for item in raw.split(","):
            model, eq, value = item.strip().rpartition("=")
            if not eq:
                raise ValueError(f"BOT_MODEL_TPM: {item.strip()[:60]!r} is not model-id=tokens-per-minute")
            pairs.append((model.strip(), value.strip()))
    else:
        raise ValueError("BOT_MODEL_TPM must be model-id=tokens-per-minute, comma separated")
    out: dict[str, int] = {}
    for model, value in pairs:
        if not _TPM_MODEL.fullmatch(model):
            raise ValueError(f"BOT_MODEL_TPM: {model[:60]!r} is not a model id")
        if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 10**12:
            raise ValueError(f"BOT_MODEL_TPM: {model}: {value[:20]!r} is not a whole number of "
                             "tokens per minute (1 to 10^12)")
        out[model] = int(value)
    return out


class BotSettings(BaseSettings):
    # hide_input_in_errors: a rejected BOT_GATEWAY_TOKENS value is a secret, never echoed.
    model_config = SettingsConfigDict(**_BASE, hide_input_in_errors=True)
    admins: Annotated[list[str], NoDecode] = Field(default_factory=list, validation_alias="BOT_ADMINS")
    alert_channel: str | None = Field(None, validation_alias="BOT_ALERT_CHANNEL")
    digest_channel: str | None = Field(None, validation_alias="BOT_DIGEST_CHANNEL")
    digest_time: time = Field(time(9, 0), validation_alias="BOT_DIGEST_TIME")
    timezone: str = Field("UTC", validation_alias="BOT_TIMEZONE")
    week_start: str = Field("monday", validation_alias="BOT_WEEK_START")
    sync_seconds: int = Field(60, ge=10, le=3600, validation_alias="BOT_SYNC_SECONDS")
    # Adaptive polling (docs/usage-sync.md): a profile or mantle project is read when the subject
    # could reach its next threshold at the model's TPM quota, or after BOT_SYNC_IDLE_SECONDS.
    sync_adaptive: bool = Field(True, validation_alias="BOT_SYNC_ADAPTIVE")
    sync_idle_seconds: int = Field(900, ge=10, le=3600, validation_alias="BOT_SYNC_IDLE_SECONDS")
    enforce_target_seconds: int = Field(60, ge=0, le=3600, validation_alias="BOT_ENFORCE_TARGET_SECONDS")
    default_tpm: int = Field(2_000_000, ge=1, le=10**12, validation_alias="BOT_DEFAULT_TPM")
    model_tpm: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict,
                                                           validation_alias="BOT_MODEL_TPM")
    port: int = Field(3000, ge=1, le=65535, validation_alias="BOT_PORT")
    # serve's worker processes for read-only /bedrock answers (handlers/answer_procs.py):
    # unset = one per core but one (at least 1), 0 = answer on threads only.
    answer_processes: int | None = Field(None, ge=0, le=64, validation_alias="BOT_ANSWER_PROCESSES")
    # serve writes the port it listens on here, so the image's HEALTHCHECK follows `--port`
    port_file: str | None = Field(None, validation_alias="BOT_PORT_FILE")
    request_ttl_hours: int = Field(72, ge=1, le=24 * 30, validation_alias="BOT_REQUEST_TTL_HOURS")
    pricing_file: str | None = Field(None, validation_alias="BOT_PRICING_FILE")
    # Estimate vs AWS bill: a closed day off by more than this (%) is posted with its likely cause.
    bill_divergence_pct: float = Field(10.0, gt=0, le=1000, validation_alias="BOT_BILL_DIVERGENCE_PCT")
    # An activated IAM-principal cost-allocation tag key whose values are subject names (the key
    # exactly as Cost Explorer lists it); unset = no principal attribution read.
    bill_principal_tag_key: str | None = Field(None, max_length=128,
                                               validation_alias="BOT_BILL_PRINCIPAL_TAG_KEY")
    # The gateway quota API (docs/gateway.md): off (404) while no token is set.
    gateway_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="BOT_GATEWAY_TOKENS", repr=False)
    gateway_reservation_seconds: int = Field(600, ge=10, le=86_400,
                                             validation_alias="BOT_GATEWAY_RESERVATION_SECONDS")
    gateway_principals: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="BOT_GATEWAY_PRINCIPALS")

    _split = field_validator("admins", "gateway_tokens", "gateway_principals", mode="before")(
        classmethod(lambda cls, v: _split_csv(v)))

    @field_validator("model_tpm", mode="before")
    @classmethod
    def _tpm(cls, v: object) -> dict[str, int]:
        return parse_model_tpm(v)

    @field_validator("gateway_tokens")
    @classmethod
    def _tokens(cls, v: list[str]) -> list[str]:
        for token in v:
            if len(token) < 16 or not _TOKEN.match(token):
                raise ValueError("BOT_GATEWAY_TOKENS: each token is 16-256 printable characters "
                                 "without spaces or commas")
        return v

    @field_validator("gateway_principals")
    @classmethod
    def _gateway_arns(cls, v: list[str]) -> list[str]:
        for arn in v:
            if not _IAM_ARN.match(arn):
                raise ValueError(f"BOT_GATEWAY_PRINCIPALS: {arn[:80]!r} is not an IAM user or role ARN")
        return v

    @field_validator("admins")
    @classmethod
    def _slack_ids(cls, v: list[str]) -> list[str]:
        for uid in v:
            if not _SLACK_ID.match(uid):
                raise ValueError(f"BOT_ADMINS: {uid!r} is not a Slack user id (like U012ABC)")
        return v

    @field_validator("pricing_file")
    @classmethod
    def _pricing(cls, v: str | None) -> str | None:
        if v:
            from bot.pricing import PriceTable

            PriceTable.load(v)  # a bad file stops the bot at start, with the reason
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @field_validator("week_start")
    @classmethod
    def _weekday(cls, v: str) -> str:
        v = v.strip().lower()
        if v not in WEEKDAYS:
            raise ValueError(f"BOT_WEEK_START must be one of {', '.join(WEEKDAYS)}")
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def week_start_index(self) -> int:
        return WEEKDAYS.index(self.week_start)


MIN_AUDIT_KEY = 32


def _audit_key(name: str, key: SecretStr) -> SecretStr:
    """The reason names the setting, never the value (errors and logs would show it)."""
    raw = key.get_secret_value()
    if len(raw) < MIN_AUDIT_KEY:
        raise ValueError(f"{name} must be at least {MIN_AUDIT_KEY} characters")
    if raw != raw.strip():
        raise ValueError(f"{name} has leading or trailing whitespace")
    return key


class AuditSettings(BaseSettings):
    """The audit chain's anchors: a key the database never sees, and checkpoints of the head
    written where the database cannot change them (docs/reliability.md, threat model)."""

    model_config = SettingsConfigDict(**_BASE, hide_input_in_errors=True)  # keys stay out of errors
    key: SecretStr | None = Field(None, validation_alias="BOT_AUDIT_KEY")
    previous_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias="BOT_AUDIT_PREVIOUS_KEYS")
    checkpoint_file: str | None = Field(None, validation_alias="BOT_AUDIT_CHECKPOINT_FILE")
    checkpoint_channel: str | None = Field(None, validation_alias="BOT_AUDIT_CHECKPOINT_CHANNEL")

    _split = field_validator("previous_keys", mode="before")(
        classmethod(lambda cls, v: _split_csv(v)))

    @field_validator("key", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("key")
    @classmethod
    def _valid_key(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _audit_key("BOT_AUDIT_KEY", v)

    @field_validator("previous_keys")
    @classmethod
    def _valid_previous(cls, v: list[SecretStr]) -> list[SecretStr]:
        return [_audit_key("BOT_AUDIT_PREVIOUS_KEYS", k) for k in v]

    @field_validator("checkpoint_file")
    @classmethod
    def _checkpoint_dir(cls, v: str | None) -> str | None:
        if not v:
            return None
        parent = os.path.dirname(os.path.abspath(v))
        if not os.path.isdir(parent):
            raise ValueError(f"BOT_AUDIT_CHECKPOINT_FILE: directory {parent} does not exist")
        return v


@dataclass(frozen=True)
class Settings:
    slack: SlackSettings
    db: DatabaseSettings
    aws: AwsSettings
    bot: BotSettings
    audit: AuditSettings


def load_settings(env_file: str | None = ".env", **overrides: object) -> Settings:
    """Build every settings group once. `overrides` are env-style names (tests, demo)."""
    groups = {}
    for key, cls in (("slack", SlackSettings), ("db", DatabaseSettings), ("aws", AwsSettings),
                     ("bot", BotSettings), ("audit", AuditSettings)):
        names: set[str] = set()
        for f in cls.model_fields.values():
            alias = f.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(str(a) for a in alias.choices)
            else:
                names.add(str(alias))
        mine = {k: v for k, v in overrides.items() if k in names}
        groups[key] = cls(_env_file=env_file, **mine)  # type: ignore[call-arg, arg-type]
    return Settings(**groups)  # type: ignore[arg-type]
