"""The Slack stand-in in a process of its own, for benches that time acks from their client threads.

In the client's process, the stand-in's HTTP threads parsed every answer posted to a response_url
on the same GIL as the threads timing acks: the more (and the bigger) the answers, the slower the
acks looked, although serve had sent them just as fast. Here the stand-in runs in a child process
and reports each response_url arrival as one line (name, CLOCK_MONOTONIC time, the text's start)
on a pipe; `time.perf_counter` reads the same clock in every process on Linux, so arrival times
compare with the client's send times.

    with SlackSink(on_answer) as slack:   # on_answer(name, at, text) runs on a reader thread
        env["SLACK_API_URL"] = slack.url; body = ...response_url=slack.response_url(name)...
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_seconds

OnAnswer = Callable[[str, float, str], None]


class SlackSink:
    def __init__(self, on_answer: OnAnswer) -> None:
        self.on_answer = on_answer
        self.proc: subprocess.Popen[str] | None = None
        self.root = ""
        self._reader: threading.Thread | None = None

    def __enter__(self) -> SlackSink:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None
        self.root = self.proc.stdout.readline().strip()
        if not self.root.startswith("http://"):
            raise RuntimeError(f"the Slack stand-in did not start: {self.root!r}")
        self._reader = threading.Thread(target=self._read, name="slack-sink", daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the child stops when its stdin ends
            self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)

    @property
    def url(self) -> str:
        return f"{self.root}/api/"

    def response_url(self, name: str) -> str:
        return f"{self.root}/response/{name}"

    def cpu_seconds(self) -> float:
        """The stand-in's CPU time so far (its work is Slack's, on another machine in production)."""
        return cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            name, at, text = line.rstrip("\n").split("\t", 2)
            self.on_answer(name, float(at), text)


def _child() -> None:
    from tests.fakes.slack_api import Call, FakeSlack

    lock = threading.Lock()

    def on_call(call: Call) -> None:
        if call.method.startswith("response_url:"):
            at = time.perf_counter()
            text = str(call.args.get("text", ""))[:200].replace("\n", " ").replace("\t", " ")
            with lock:
                sys.stdout.write(f"{call.method.split(':', 1)[1]}\t{at!r}\t{text}\n")
                sys.stdout.flush()

    with FakeSlack(on_call=on_call) as fake:
        print(fake.root, flush=True)
        sys.stdin.read()  # until the parent closes it


if __name__ == "__main__":
    _child()
