"""A local webhook receiver for the tests and the benchmark: records every request and answers
with the status its `answers` function chooses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int
    at: float = 0.0  # time.perf_counter() when it arrived


@dataclass
class Receiver:
    url: str
    answers: Callable[[int], int]  # request number (0-based) -> status
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def receiver(answers: Callable[[int], int] = lambda n: 200) -> Iterator[Receiver]:
    box: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            me = box[0]
            with me.lock:
                status = me.answers(len(me.requests))
                me.requests.append(Received(dict(self.headers.items()), body, status, time.perf_counter()))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    box.append(Receiver(f"http://127.0.0.1:{httpd.server_address[1]}/hook", answers))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield box[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
