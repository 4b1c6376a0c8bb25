"""usage_stream: one pass over the usage stream (`bedrock-bot run-job usage_stream`), then enforce.

The scheduler does not run this job on its own: with BOT_USAGE_STREAM set, `serve` and `socket`
read the stream continuously on the leader (bot/flows/usage_stream_loop.py), and a usage sync
with no continuous reader running in its process (`run-job usage_sync`)
reads it first (bot/flows/usage_sync.run; docs/usage-stream.md).
"""

from __future__ import annotations

from bot.errors import BadInput
from bot.flows import usage_stream
from bot.flows.runner import Outcome, attempt
from bot.flows.usage_stream import NAME, ConsumeResult
from bot.runtime import Services
from jobs import enforce

__all__ = ["NAME", "run"]


def run(services: Services) -> Outcome[ConsumeResult]:
    if not services.settings.aws.usage_stream:
        return Outcome(error=BadInput("BOT_USAGE_STREAM is not set: there is no stream to read"))
    out = attempt(lambda: usage_stream.consume(services, consumer=usage_stream.consumer_for(services)))
    if out.ok and out.value.counted:
        enforce.run(services)
    return out
