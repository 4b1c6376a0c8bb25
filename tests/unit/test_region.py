"""The AWS region, found as boto3 finds it: AWS_REGION (the bot's own variable, .env too), then
AWS_DEFAULT_REGION, then the `region` of the AWS profile through botocore's session. With none,
`bedrock-bot iam-policy` refuses to guess (it used to scope every ARN to us-east-1) and says in
one line how to set one; `serve` and `socket` do the same (handlers/preflight.py)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from bot.aws import clients
from bot.cli import main
from bot.config import REGION_HINT, load_settings


@pytest.fixture
def no_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No region anywhere: no variables, an empty AWS config, no .env in the working directory."""
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.chdir(tmp_path)
    return config


def test_aws_region_wins(no_region: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert load_settings(None).aws.region == "eu-west-1"


def test_aws_default_region_alone_is_used(no_region: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    settings = load_settings(None)
    assert settings.aws.region == "ap-south-1"
    client = clients.client("sts", settings.aws)
    assert client.meta.region_name == "ap-south-1"


def test_the_profiles_region_is_used(no_region: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_region.write_text("[default]\nregion = eu-north-1\n\n[profile ml]\nregion = eu-central-2\n")
    assert load_settings(None).aws.region == "eu-north-1"
    monkeypatch.setenv("AWS_PROFILE", "ml")
    assert load_settings(None).aws.region == "eu-central-2"
    assert boto3.session.Session().region_name == "eu-central-2"  # what boto3 itself would use


def test_a_dotenv_region_is_read(no_region: Path) -> None:
    (no_region.parent / ".env").write_text("AWS_DEFAULT_REGION=sa-east-1\n")
    assert load_settings().aws.region == "sa-east-1"


def test_a_missing_profile_is_no_region_not_a_crash(no_region: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    assert load_settings(None).aws.region == ""


def test_no_region_is_empty_not_us_east_1(no_region: Path) -> None:
    assert load_settings(None).aws.region == ""


def test_a_malformed_region_is_refused(no_region: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_REGION", "Frankfurt")
    assert main(["iam-policy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("configuration error: AWS_REGION") and "\n" not in err


def test_iam_policy_refuses_to_guess_the_region(no_region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["iam-policy"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"iam-policy: {REGION_HINT}\n"
    assert "export AWS_REGION=" in err and err.count("\n") == 1


def test_iam_policy_scopes_arns_to_the_found_region(no_region: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert main(["iam-policy", "--account-id", "123456789012"]) == 0
    text = capsys.readouterr().out
    assert ":eu-west-3:123456789012:" in text and "us-east-1" not in text
    json.loads(text)
