"""What `serve` and `socket` run besides the request handlers: the scheduler and the SQS poller."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor

from bot.flows.usage_stream_loop import StreamLoop
from bot.runtime import Services
from handlers.answer_procs import AnswerProcesses
from handlers.app import create_app, slack_client
from handlers.gateway import Gateway
from handlers.http import WsgiApp
from handlers.sns import SnsEndpoint
from jobs.scheduler import JobRunner
from jobs.sqs_poller import SqsPoller

log = logging.getLogger(__name__)


def build_wsgi(services: Services, answers: Executor | None = None,
               answer_workers: AnswerProcesses | None = None) -> WsgiApp:
    settings = services.settings
    app = create_app(settings, services, slack_client(settings), answer_executor=answers,
                     answer_workers=answer_workers)
    return WsgiApp(services, app, sns=SnsEndpoint(services, services.sns_verifier()),
                   gateway=Gateway(services) if settings.bot.gateway_tokens else None)


class Background:
    """The leader-elected scheduler, the usage-stream reader on the leader (BOT_USAGE_STREAM set),
    and, when configured, the SQS poller thread."""

    def __init__(self, services: Services, scheduler: bool = True) -> None:
        self.services = services
        self.runner = JobRunner(services) if scheduler else None
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.stream: StreamLoop | None = None
        self.stream_thread: threading.Thread | None = None

    def start(self) -> None:
        if self.runner is not None:
            self.runner.start()
            if self.services.settings.aws.usage_stream:  # reads only while this replica leads
                self.stream = StreamLoop(self.services, is_leader=self.runner.is_leader,
                                         fence=self.runner.fence, stop=self.stop)
                self.stream_thread = threading.Thread(target=self.stream.run, name="usage-stream",
                                                      daemon=True)
                self.stream_thread.start()
        queue = self.services.settings.aws.sqs_queue_url
        if queue:
            endpoint = SnsEndpoint(self.services, self.services.sns_verifier(max_age=None))
            poller = SqsPoller(self.services.aws_client("sqs"), queue, endpoint)
            self.thread = threading.Thread(target=poller.run, args=(self.stop,), name="sqs-poller",
                                           daemon=True)
            self.thread.start()
            log.info("polling %s for SNS messages", queue)

    def shutdown(self) -> None:
        self.stop.set()
        if self.stream_thread is not None:
            self.stream_thread.join(timeout=10)
        if self.runner is not None:
            self.runner.shutdown()
        if self.thread is not None:
            self.thread.join(timeout=25)
