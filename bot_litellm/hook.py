"""A LiteLLM proxy hook that makes bedrock-usage-bot the quota brain of the proxy.

Install it next to the proxy (`pip install 'bedrock-usage-bot[litellm]'`) and list it in the
proxy's config.yaml::

    litellm_settings:
      callbacks: ["bot_litellm.hook.handler"]

Before each call (`async_pre_call_hook`) it asks `POST /v1/quota/check` with an estimate
(prompt tokens + max_tokens), which reserves that much headroom; a refusal becomes a 429 carrying
the bot's reason. After the call (`async_log_success_event` / `async_log_failure_event`) it
reports the real usage to `POST /v1/usage` with LiteLLM's call id as the request id (so a
retried report counts once) and the reservation, which settles it.

Configuration, read from the environment on first use (docs/gateway.md):

- `BEDROCK_BOT_URL`, `BEDROCK_BOT_TOKEN` (one of the bot's `BOT_GATEWAY_TOKENS`): required;
- `BEDROCK_BOT_FAIL_OPEN`: `1` lets calls through while the bot cannot answer (default `0`: closed);
- `BEDROCK_BOT_SUBJECT_FROM`: where the subject comes from, first found wins, among `key_metadata`
  (the virtual key's metadata `bedrock_subject`), `user_id`, `key_alias`, `team_alias`, `team_id`,
  `end_user` (the request's `user`); default `key_metadata,user_id,team_alias`;
- `BEDROCK_BOT_DEFAULT_MAX_TOKENS`: output tokens assumed without `max_tokens` (default 4096);
- `BEDROCK_BOT_TIMEOUT_MS`: per call to the bot (default 2000).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

log = logging.getLogger("bot_litellm")
SOURCES = ("key_metadata", "user_id", "key_alias", "team_alias", "team_id", "end_user")
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")
_NAME = re.compile(r"[^a-z0-9._-]+")
META_KEY = "bedrock_bot"  # where the hook keeps {subject, reservation} on the request


@dataclass(frozen=True)
class HookSettings:
    url: str
    token: str
    fail_open: bool = False
    subject_from: tuple[str, ...] = ("key_metadata", "user_id", "team_alias")
    default_max_tokens: int = 4096
    timeout: float = 2.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> HookSettings:
        env = dict(os.environ if env is None else env)
        url, token = env.get("BEDROCK_BOT_URL", "").rstrip("/"), env.get("BEDROCK_BOT_TOKEN", "")
        if not url.startswith(("http://", "https://")) or not token:
            raise ValueError("bot_litellm needs BEDROCK_BOT_URL (http(s)://…) and BEDROCK_BOT_TOKEN")
        sources = tuple(s.strip() for s in env.get("BEDROCK_BOT_SUBJECT_FROM",
                                                   "key_metadata,user_id,team_alias").split(",") if s.strip())
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ValueError(f"BEDROCK_BOT_SUBJECT_FROM: use some of {', '.join(SOURCES)}")
        return cls(url, token, env.get("BEDROCK_BOT_FAIL_OPEN", "0") in ("1", "true", "yes"), sources,
                   int(env.get("BEDROCK_BOT_DEFAULT_MAX_TOKENS", "4096")),
                   int(env.get("BEDROCK_BOT_TIMEOUT_MS", "2000")) / 1000)


def who(value: str) -> dict[str, str]:
    """A LiteLLM identity → how the bot is asked: an ARN, a Slack id, or a subject name
    (an e-mail's local part, lower-cased: `Alice@example.com` → `alice`)."""
    value = value.strip()
    if value.startswith("arn:"):
        return {"principal_arn": value}
    if _SLACK_ID.match(value):
        return {"slack_user_id": value}
    return {"subject": _NAME.sub("-", value.lower().partition("@")[0]).strip("-._")[:64]}


def subject_of(key: Any, data: dict[str, Any], sources: tuple[str, ...]) -> dict[str, str] | None:
    """The first identity found among `sources`, from the virtual key and the request."""
    for source in sources:
        if source == "key_metadata":
            value = (getattr(key, "metadata", None) or {}).get("bedrock_subject")
        elif source == "end_user":
            value = data.get("user")
        else:
            value = getattr(key, source, None)
        if isinstance(value, str) and value.strip() and value != "default_user_id":
            return who(value)
    return None


def bare_model(model: str) -> str:
    """LiteLLM's `bedrock/converse/anthropic.…` → the Bedrock model id the bot prices."""
    parts = model.split("/")
    while len(parts) > 1 and parts[0] in ("bedrock", "converse", "invoke"):
        parts = parts[1:]
    return "/".join(parts)[:256]


def usage_of(response: Any) -> dict[str, int]:
    """input/output/cache tokens from an OpenAI-shaped usage block (prompt tokens include the
    cached ones there; the bot counts them apart)."""
    usage = getattr(response, "usage", None) or {}
    get = (lambda k: getattr(usage, k, None)) if not isinstance(usage, dict) else usage.get
    prompt, completion = int(get("prompt_tokens") or 0), int(get("completion_tokens") or 0)
    details = get("prompt_tokens_details")
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    read = int(cached or get("cache_read_input_tokens") or 0)
    write = int(get("cache_creation_input_tokens") or 0)
    return {"input_tokens": max(0, prompt - read - write), "output_tokens": completion,
            "cache_read_tokens": read, "cache_write_tokens": write}


class BedrockBotQuota(CustomLogger):
    """The hook. One instance per proxy process (`handler` below)."""

    def __init__(self, settings: HookSettings | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._client: httpx.AsyncClient | None = None

    @property
    def settings(self) -> HookSettings:
        if self._settings is None:
            self._settings = HookSettings.from_env()
        return self._settings

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.settings.timeout, headers={
                "authorization": f"Bearer {self.settings.token}"})
        return self._client

    async def _post(self, path: str, doc: dict[str, Any]) -> httpx.Response | None:
        try:
            return await self.client().post(self.settings.url + path, json=doc)
        except httpx.HTTPError as exc:
            log.warning("bedrock-bot %s unreachable: %s", path, type(exc).__name__)
            return None

    # -- before the call ---------------------------------------------------------------------

    def estimate(self, data: dict[str, Any]) -> int:
        out = data.get("max_tokens") or data.get("max_completion_tokens") or self.settings.default_max_tokens
        prompt = 0
        try:
            import litellm

            prompt = int(litellm.token_counter(model=str(data.get("model") or ""),
                                               messages=data.get("messages") or []))
        except Exception:  # an unknown tokenizer must not block the call; the reservation is a bound
            prompt = sum(len(str(m.get("content", ""))) for m in data.get("messages") or []) // 3
        return max(1, prompt + int(out))

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        subject = subject_of(user_api_key_dict, data, self.settings.subject_from)
        if subject is None:
            raise HTTPException(status_code=403, detail={
                "error": "bedrock-bot: no subject for this key or user; ask an admin to map it"})
        doc = {**subject, "estimated_tokens": self.estimate(data)}
        if isinstance(data.get("model"), str):
            doc["model"] = bare_model(data["model"])
        resp = await self._post("/v1/quota/check", doc)
        if resp is None or resp.status_code >= 500:
            if self.settings.fail_open:
                log.warning("bedrock-bot unavailable: letting the call through (fail open)")
                return data
            raise HTTPException(status_code=503, detail={"error": "bedrock-bot: quota service unavailable"})
        answer = _json(resp)
        if resp.status_code != 200:
            why = answer.get("error", resp.text[:200])
            raise HTTPException(status_code=403, detail={"error": f"bedrock-bot: {why}"})
        if not answer.get("allowed"):
            raise HTTPException(status_code=429, detail={"error": f"bedrock-bot: {answer.get('reason')}"})
        meta = data.setdefault("metadata", {})
        if isinstance(meta, dict):
            meta[META_KEY] = {"who": subject, "reservation": answer.get("reservation")}
        return data

    # -- after the call ----------------------------------------------------------------------

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        await self._report(kwargs, usage_of(response_obj))

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        # A failed call used nothing the bot can count; its reservation is given back.
        await self._report(kwargs, dict.fromkeys(("input_tokens", "output_tokens", "cache_read_tokens",
                                                  "cache_write_tokens"), 0))

    async def _report(self, kwargs: dict[str, Any], tokens: dict[str, int]) -> None:
        params = kwargs.get("litellm_params") or {}
        meta = (params.get("metadata") or {}).get(META_KEY)
        call_id = kwargs.get("litellm_call_id") or params.get("litellm_call_id")
        if not isinstance(meta, dict) or not call_id:
            return  # not a call this hook let through (or one it refused)
        doc = {**meta["who"], "request_id": str(call_id)[:128],
               "model": bare_model(str(kwargs.get("model") or "")),
               "reservation": meta.get("reservation"), **tokens}
        if not doc["model"]:
            del doc["model"]
        resp = await self._post("/v1/usage", doc)
        if resp is None or resp.status_code != 202:
            # The reservation expires on its own; the usage is lost to the gateway meter (the
            # invocation-log or CloudWatch meters still see the call if configured for it).
            log.error("bedrock-bot did not take usage for %s: %s", call_id,
                      resp.status_code if resp is not None else "unreachable")


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        doc = resp.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


handler = BedrockBotQuota()
