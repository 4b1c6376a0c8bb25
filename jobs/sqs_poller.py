"""Long-poll BOT_SQS_QUEUE_URL for SNS envelopes and hand them to the same SNS handler.

A message is deleted only after the handler has committed (200) or refused it for good
(403: a forged or foreign message would fail again); anything else stays in the queue
and comes back after its visibility timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from bot.aws.clients import aws_error

log = logging.getLogger(__name__)
Handler = Callable[[bytes], tuple[int, str]]
FINAL = (200, 403)


class SqsPoller:
    def __init__(self, client: Any, queue_url: str, handler: Handler, wait_seconds: int = 20) -> None:
        self.client = client
        self.queue_url = queue_url
        self.handler = handler
        self.wait_seconds = wait_seconds

    def poll_once(self) -> list[tuple[str, int]]:
        """One long poll; returns (message id, status) for each message handled."""
        try:
            resp = self.client.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=self.wait_seconds)
        except Exception as exc:
            raise aws_error("ReceiveMessage", exc) from exc
        done = []
        for msg in resp.get("Messages", []):
            status, _ = self.handler(str(msg.get("Body", "")).encode())
            if status in FINAL:
                self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
            done.append((str(msg.get("MessageId")), status))
        return done

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # keep polling; SQS or the network will come back
                log.warning("SQS poll failed: %s", exc)
                stop.wait(5)
