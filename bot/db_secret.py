"""The database password from Secrets Manager: ``BOT_DATABASE_SECRET`` with a ``DATABASE_URL``
that names user, host and database but no password (what the CloudFormation stack sets).

The secret is RDS's managed master-user secret: JSON with ``username`` and ``password``. RDS
rotates it (every 7 days by default), and ECS injects a task's ``Secrets`` only when the task
starts, so an injected password would stop working a week later. The bot therefore reads the
secret itself: once at start (``resolve``: the URL used by migrations and the engine gets the
password), and again whenever PostgreSQL refuses the password on a new connection
(``attach``: a ``do_connect`` hook on the long-running engine reads the rotated value and
retries once).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from bot.config import Settings

log = logging.getLogger(__name__)
_ARN_REGION = re.compile(r"^arn:[a-z-]+:secretsmanager:(?P<region>[a-z0-9-]+):")


class DatabaseSecretError(ValueError):
    """The secret could not be read or holds no password (one line, names the secret)."""


class DatabaseSecret:
    """Reads the password from Secrets Manager; caches it until ``refresh()``."""

    def __init__(self, client: Any, arn: str) -> None:
        self.client = client
        self.arn = arn
        self._lock = threading.Lock()
        self._password: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseSecret:
        from bot.aws import clients

        arn = settings.aws.database_secret
        if not arn:
            raise DatabaseSecretError("BOT_DATABASE_SECRET is not set")
        region = _ARN_REGION.match(arn)
        # The ARN names its region: no AWS_REGION needed to read it.
        aws = settings.aws.model_copy(update={"region": region["region"] if region else settings.aws.region})
        return cls(clients.client("secretsmanager", aws), arn)

    def password(self) -> str:
        with self._lock:
            if self._password is None:
                self._password = self._read()
            return self._password

    def refresh(self) -> str:
        with self._lock:
            self._password = self._read()
            return self._password

    def _read(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            raw = self.client.get_secret_value(SecretId=self.arn).get("SecretString")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            raise DatabaseSecretError(f"cannot read {self.arn}: {code}") from None
        except BotoCoreError as exc:
            raise DatabaseSecretError(f"cannot read {self.arn}: {type(exc).__name__}") from None
        try:
            value = json.loads(raw or "")
        except ValueError:
            value = None
        password = value.get("password") if isinstance(value, dict) else None
        if not isinstance(password, str) or not password:
            raise DatabaseSecretError(f"{self.arn} is not JSON with a \"password\" (an RDS master secret)")
        return password


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` in it, quoted as SQLAlchemy needs (RDS passwords hold ``%``, ``:``…)."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql"):
        raise DatabaseSecretError("BOT_DATABASE_SECRET needs a postgresql+psycopg:// DATABASE_URL")
    if parsed.password:
        raise DatabaseSecretError("DATABASE_URL already has a password: drop it or BOT_DATABASE_SECRET")
    return parsed.set(password=password).render_as_string(hide_password=False)


def resolve(settings: Settings, secret: DatabaseSecret | None = None) -> Settings:
    """The settings with the secret's password in ``DATABASE_URL`` (unchanged without a secret)."""
    if not settings.aws.database_secret:
        return settings
    secret = secret or DatabaseSecret.from_settings(settings)
    url = with_password(settings.db.url, secret.password())
    return dataclasses.replace(settings, db=settings.db.model_copy(update={"url": url}))


def _auth_failed(exc: Exception) -> bool:
    # SQLSTATE 28P01 (invalid_password); libpq reports it on connect as text, without the code.
    return getattr(exc, "sqlstate", None) == "28P01" or "password authentication failed" in str(exc)


def attach(engine: Engine, secret: DatabaseSecret) -> None:
    """New connections on ``engine`` retry once with a freshly read password when PostgreSQL
    refuses the current one (the secret was rotated since the bot started)."""
    state: dict[str, str] = {}

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if "password" in state:
            cparams["password"] = state["password"]
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as exc:
            if not _auth_failed(exc):
                raise
            fresh = secret.refresh()
            if fresh == cparams.get("password"):
                raise
            log.warning("database password refused; using the rotated one from %s", secret.arn)
            state["password"] = cparams["password"] = fresh
            return dialect.connect(*cargs, **cparams)
