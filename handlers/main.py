"""`bedrock-bot`: the core subcommands plus serve, run-job (and later socket, demo)."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from bot.cli import build_parser, run
from bot.config import Settings
from bot.db_secret import DatabaseSecret, attach
from bot.migrate import upgrade
from bot.runtime import Services, build_services
from bot.services import directory
from handlers.answer_procs import AnswerProcesses

log = logging.getLogger(__name__)
SWITCH_INTERVAL = 0.001  # seconds; bench/serve_variant.py `switch5ms` measures the default beside it


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from waitress.server import create_server

    from handlers import preflight, shutdown, slash
    from handlers.answers_pool import answer_pool
    from handlers.app import slack_client
    from handlers.server import Background, build_wsgi

    if not settings.slack.signing_secret or not settings.slack.bot_token:
        print("serve needs SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET", file=sys.stderr)
        return 2
    client = slack_client(settings)
    me = preflight.check(settings, client)  # region, auth.test: one line and exit when wrong
    stop = shutdown.GracefulStop().install()  # SIGTERM/SIGINT from here on: stop within 10 s
    services = _prepare(settings)
    preflight.join_channels(services, client, me.user_id)
    background = Background(services, scheduler=not args.no_scheduler)
    port = args.port or settings.bot.port
    answers = answer_pool()
    workers = slash.worker_processes(services, client, answers)
    app = build_wsgi(services, answers, workers)
    _freeze_then_fork(workers)
    # A thread that blocked (on a socket, SQLite, a lock) waits up to the switch interval for
    # the GIL when another thread computes; the default 5 ms, paid at each of an ack's few
    # blocking calls while answers compute, made ack tails (issue 19). 1 ms costs the answers
    # a little throughput.
    sys.setswitchinterval(SWITCH_INTERVAL)
    server = create_server(app, host=args.host, port=port, threads=args.threads, ident="bedrock-bot")
    log.info("serving on %s:%d (Slack at /slack/events, SNS at /sns)", args.host, port)
    try:
        background.start()
        stop.announce_port(settings.bot.port_file, port)
        server.run()  # returns on SIGTERM/SIGINT
    finally:
        stop.finish(server.close, background)
        if workers is not None:
            workers.close(min(5.0, stop.remaining()))  # queued answers are still posted
        app.close()  # writes the last minute's refusal counts
    return 0


def cmd_socket(args: argparse.Namespace, settings: Settings) -> int:
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    from handlers import preflight, shutdown, slash
    from handlers.answers_pool import answer_pool
    from handlers.app import create_app, slack_client
    from handlers.server import Background

    if not settings.slack.app_token or not settings.slack.bot_token:
        print("socket needs SLACK_APP_TOKEN and SLACK_BOT_TOKEN", file=sys.stderr)
        return 2
    client = slack_client(settings)
    me = preflight.check(settings, client, socket=True, prog="socket")
    stop = shutdown.GracefulStop().install()
    services = _prepare(settings)
    preflight.join_channels(services, client, me.user_id)
    background = Background(services, scheduler=not args.no_scheduler)
    answers = answer_pool()
    workers = slash.worker_processes(services, client, answers)
    app = create_app(settings, services, client, answer_executor=answers, answer_workers=workers)
    _freeze_then_fork(workers)  # before the handler: its Socket Mode client starts threads at once
    handler: SocketModeHandler | None = None
    try:
        handler = SocketModeHandler(app, settings.slack.app_token)
        background.start()
        handler.start()  # waits until SIGTERM/SIGINT
    except shutdown.Stopping:
        pass
    finally:
        stop.finish(handler.close if handler is not None else None, background)
        if workers is not None:
            workers.close(min(5.0, stop.remaining()))
    return 0


def _freeze_then_fork(workers: AnswerProcesses | None) -> None:
    """Everything built so far lives as long as the process: move it out of the collector's view,
    so the full collections that long-lived request threads set off scan only what requests
    allocate (each one pauses every thread, an ack included), and so the answer processes forked
    next share these pages instead of copying them when a collection runs. The fork must come
    before any thread exists (handlers/answer_procs.py)."""
    gc.collect()
    gc.freeze()
    if workers is not None:
        workers.start()


def _prepare(settings: Settings) -> Services:
    """Migrate, build the services, make BOT_ADMINS owners: what every long-running mode needs."""
    from bot.slack.notifier import SlackNotifier
    from bot.slack.outbox import OutboxNotifier
    from handlers.app import slack_client

    upgrade(settings.db.url)
    services = build_services(settings)
    if settings.aws.database_secret:  # a rotated password is read again on the next connection
        secret = DatabaseSecret.from_settings(settings)
        for engine in services.db.engines():
            attach(engine, secret)
    if settings.slack.bot_token:  # before any job runs: announcements must reach Slack
        services.notifier = OutboxNotifier(SlackNotifier(slack_client(settings)), services.db,
                                           services.clock)
    with services.db.session_scope() as session:
        directory.bootstrap_admins(session, services.clock, settings.bot.admins)
    return services


def cmd_run_job(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.registry import JOBS

    services = _prepare(settings)
    out = JOBS[args.job](services)
    if getattr(out, "ok", True):
        print(f"{args.job}: ok {getattr(out, 'value', '')}")
        return 0
    print(f"{args.job}: {out.message}", file=sys.stderr)
    return 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from demo.walkthrough import run_demo

    if not args.verbose:  # the story is the output; logs only when asked for
        for name in ("", "botocore", "boto3", "urllib3", "s3transfer"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return run_demo()


def main(argv: list[str] | None = None) -> int:
    from jobs.registry import JOBS

    parser, sub = build_parser()
    serve = sub.add_parser("serve", help="HTTP server: /slack/events, /sns, /healthz, /metrics")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--threads", type=int, default=16)
    serve.add_argument("--no-scheduler", action="store_true", help="do not run jobs here")
    serve.set_defaults(func=cmd_serve)
    sock = sub.add_parser("socket", help="Socket Mode: events over a websocket, SNS from the SQS poller")
    sock.add_argument("--no-scheduler", action="store_true", help="do not run jobs here")
    sock.set_defaults(func=cmd_socket)
    job = sub.add_parser("run-job", help="run one job now, then exit")
    job.add_argument("job", choices=sorted(JOBS))
    job.set_defaults(func=cmd_run_job)
    sub.add_parser("demo", help="the offline walk-through: real server, moto as AWS, "
                   "a printing Slack stand-in").set_defaults(func=cmd_demo, needs_database=False)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
