"""boto3 clients built one way: standard retry mode, the configured region and endpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bot.config import AwsSettings
from bot.errors import AwsError

T = TypeVar("T")
RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 5}, connect_timeout=5,
                 read_timeout=20)


def client(service: str, aws: AwsSettings, **kwargs: Any) -> Any:
    """A boto3 client; `AWS_ENDPOINT_URL` (moto server offline) applies to every service."""
    return boto3.client(service,  # type: ignore[call-overload]
                        region_name=kwargs.pop("region_name", None) or aws.region or None,
                        endpoint_url=aws.endpoint_url,
                        config=kwargs.pop("config", RETRIES), **kwargs)


def call(operation: str, method: Callable[..., T], **kwargs: Any) -> T:
    """One AWS call; any botocore failure comes back as an AwsError naming the operation."""
    try:
        return method(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise aws_error(operation, exc) from exc


def aws_error(operation: str, exc: Exception) -> AwsError:
    """Turn a botocore failure into an AwsError naming the AWS error code."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return AwsError(operation, str(err.get("Code", "Unknown")), str(err.get("Message", ""))[:300])
    if isinstance(exc, BotoCoreError):
        return AwsError(operation, type(exc).__name__, str(exc)[:300])
    raise exc
