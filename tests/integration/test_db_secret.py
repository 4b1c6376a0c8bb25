"""BOT_DATABASE_SECRET (bot/db_secret.py): the password of a DATABASE_URL without one comes from
Secrets Manager (moto here) — at start, quoted into the URL, and again on a new connection
after PostgreSQL refuses the old one (RDS rotated the managed secret).

PostgreSQL here trusts every local connection, so a wrong password cannot be refused for real:
the rotation test stands in for libpq's refusal by wrapping the dialect's connect, and still
connects to the real server with the password the hook chose."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import psycopg
import pytest
from moto import mock_aws
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bot.config import load_settings
from bot.db_secret import DatabaseSecret, DatabaseSecretError, attach, resolve, with_password
from handlers.main import main

REGION = "eu-west-1"
PASSWORD = "p@ss:w/rd%20?#"  # every character a URL would mangle


@pytest.fixture
def secrets() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("secretsmanager", REGION)


def _secret(client: Any, value: Any) -> str:
    body = value if isinstance(value, str) else json.dumps(value)
    return str(client.create_secret(Name="rds!db-1234", SecretString=body)["ARN"])


def test_the_password_goes_into_the_url_quoted(secrets: Any) -> None:
    arn = _secret(secrets, {"username": "bedrockbot", "password": PASSWORD})
    settings = load_settings(None, DATABASE_URL="postgresql://bedrockbot@db.internal:5432/bedrockbot",
                             BOT_DATABASE_SECRET=arn, AWS_REGION="us-east-1")  # the ARN names eu-west-1
    url = make_url(resolve(settings).db.url)
    assert (url.username, url.password, url.host, url.database) == ("bedrockbot", PASSWORD, "db.internal",
                                                                    "bedrockbot")
    assert url.drivername == "postgresql+psycopg"
    assert resolve(load_settings(None, DATABASE_URL="sqlite:///x.db")).db.url == "sqlite:///x.db"  # no secret


@pytest.mark.parametrize(("value", "says"), [
    ("not json", "is not JSON with a \"password\""),
    ({"username": "bedrockbot"}, "is not JSON with a \"password\""),
    ({"password": ""}, "is not JSON with a \"password\""),
])
def test_a_secret_without_a_password_is_refused(secrets: Any, value: Any, says: str) -> None:
    arn = _secret(secrets, value)
    with pytest.raises(DatabaseSecretError) as err:
        DatabaseSecret(secrets, arn).password()
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_missing_secret_names_the_aws_error(secrets: Any) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:gone-AbCdEf"
    with pytest.raises(DatabaseSecretError) as err:
        DatabaseSecret(secrets, arn).password()
    assert str(err.value) == f"cannot read {arn}: ResourceNotFoundException"


def test_urls_it_will_not_complete() -> None:
    with pytest.raises(DatabaseSecretError, match="already has a password"):
        with_password("postgresql+psycopg://u:old@h/db", "new")
    with pytest.raises(DatabaseSecretError, match="needs a postgresql"):
        with_password("sqlite:///bot.db", "new")


def test_a_bad_secret_stops_the_cli_with_one_line(secrets: Any, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://bedrockbot@127.0.0.1:1/bedrockbot")
    gone = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:gone-AbCdEf"
    monkeypatch.setenv("BOT_DATABASE_SECRET", gone)
    assert main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: BOT_DATABASE_SECRET: cannot read") and err.count("\n") == 1
    # commands that never connect do not read it
    monkeypatch.setenv("AWS_REGION", REGION)
    assert main(["iam-policy"]) == 0
    assert "secretsmanager:GetSecretValue" in capsys.readouterr().out


def test_migrate_connects_with_the_secrets_password(
        secrets: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Any) -> None:
    arn = _secret(secrets, {"username": "postgres", "password": PASSWORD})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    monkeypatch.setenv("BOT_DATABASE_SECRET", arn)
    assert main(["migrate"]) == 0
    out = capsys.readouterr().out
    assert "database at head" in out and PASSWORD not in out and ":***@" in out


def test_a_rotated_password_is_read_again_on_the_next_connection(secrets: Any, pg_url: str) -> None:
    arn = _secret(secrets, {"username": "postgres", "password": "old"})
    secret = DatabaseSecret(secrets, arn)
    engine = create_engine(with_password(pg_url, secret.password()))
    attach(engine, secret)
    tried: list[str] = []
    real_connect = engine.dialect.connect

    def libpq(*cargs: Any, **cparams: Any) -> Any:  # stands in for a server that rotated to "new"
        tried.append(cparams.get("password", ""))
        if cparams.get("password") != "new":
            raise psycopg.OperationalError('password authentication failed for user "postgres"')
        return real_connect(*cargs, **cparams)

    engine.dialect.connect = libpq  # type: ignore[method-assign]
    try:
        secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({"password": "new"}))
        with engine.connect() as conn:  # old password refused, the secret read again, retried
            assert conn.execute(text("select 1")).scalar() == 1
        engine.pool.dispose()
        with engine.connect() as conn:  # the next connection uses the new one at once
            conn.execute(text("select 1"))
        assert tried == ["old", "new", "new"]

        secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({"password": "newer"}))
        engine.dialect.connect = lambda *a, **k: (_ for _ in ()).throw(  # type: ignore[method-assign]
            psycopg.OperationalError("connection refused"))
        engine.pool.dispose()
        with pytest.raises(Exception, match="connection refused"):  # not an auth failure: no re-read
            engine.connect()
        assert secret.password() == "new"
    finally:
        engine.dispose()
