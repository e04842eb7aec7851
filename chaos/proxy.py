"""An HTTP proxy between the units and the hub that can lose replies and deliver reports twice.

Units talk to the hub through it. On the `resend-reports` fault it (a) forwards the next few
reports (complete/fail, or a `POST /tasks/reports` batch, which is how taskhub-unit reports) to the
hub and then drops the connection instead of answering, so the unit sends the same report again,
and (b) replays reports it saw earlier straight to the hub. Either way the hub must keep one
accepted result per task: a repeat is answered `accepted: false`, a report for an attempt that is
no longer live is refused (409; in a batch, that item's error).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPORT = re.compile(r"^/api/v1/tasks/(\d+/(complete|fail)|reports)$")
FORWARD_TIMEOUT = 60
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "proxy-connection"}


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a unit killed mid-request is part of the run, not news


class ReportProxy:
    def __init__(self, backend_port: int, port: int = 0) -> None:
        self.backend_port = backend_port
        self.lock = threading.Lock()
        self.seen: deque[tuple[str, dict[str, str], bytes]] = deque(maxlen=300)
        self.drop_next = 0
        self.counts: Counter[str] = Counter()
        self.server = QuietServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="chaos-proxy", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list[Any], bytes]:
        # Longer than any long-poll claim the units hold (--claim-wait + --request-timeout).
        conn = http.client.HTTPConnection("127.0.0.1", self.backend_port, timeout=FORWARD_TIMEOUT)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def lose_replies(self, n: int) -> None:
        with self.lock:
            self.drop_next += n

    def replay(self, n: int, pick: Any) -> list[tuple[int, Any]]:
        """Send `n` earlier reports again, straight to the hub. Returns (status, body) of each."""
        with self.lock:
            pool = list(self.seen)
        results = []
        for path, headers, body in (pick(pool) for _ in range(min(n, len(pool)))):
            try:
                status, _, raw = self.forward("POST", path, headers, body)
                reply = json.loads(raw or b"null")
            except (OSError, ValueError, http.client.HTTPException):
                status, reply = 0, None
            results.append((status, reply))
            self._count_report("replayed", status, reply)
        return results

    def _count_report(self, how: str, status: int, reply: Any) -> None:
        items = reply.get("items") if status == 200 and isinstance(reply, dict) else None
        with self.lock:
            if not isinstance(items, list):
                self.counts[f"{how}:{status}"] += 1
                if status == 200 and isinstance(reply, dict):
                    self.counts[f"{how}:accepted={reply.get('accepted')}"] += 1
                return
            # A batch: count each item as the single endpoint would have answered it.
            for item in items:
                error = item.get("error") if isinstance(item, dict) else None
                code = str(error.get("code")) if isinstance(error, dict) else ""
                single = 200 if not error else {"stale_attempt": 409, "conflict": 409, "not_found": 404}.get(code, 400)
                self.counts[f"{how}:{single}"] += 1
                if single == 200:
                    self.counts[f"{how}:accepted={item.get('accepted')}"] += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                is_report = self.command == "POST" and bool(REPORT.match(self.path))
                if is_report:
                    with proxy.lock:
                        proxy.seen.append((self.path, headers, body))
                try:
                    status, reply_headers, raw = proxy.forward(self.command, self.path, headers, body)
                except (OSError, http.client.HTTPException):
                    # The hub is restarting: answer as a load balancer would.
                    raw = json.dumps(
                        {"statusCode": 502, "code": "bad_gateway", "message": "hub unreachable (chaos proxy)"}
                    ).encode()
                    status, reply_headers = 502, [("Content-Type", "application/json"), ("Retry-After", "1")]
                if is_report:
                    try:
                        reply = json.loads(raw or b"null")
                    except ValueError:
                        reply = None
                    proxy._count_report("unit", status, reply)
                    with proxy.lock:
                        drop = proxy.drop_next > 0 and status == 200
                        if drop:
                            proxy.drop_next -= 1
                            proxy.counts["replies-lost"] += 1
                    if drop:
                        self.close_connection = True  # the hub has the report; the unit never hears
                        return
                try:
                    self.send_response(status)
                    for name, value in reply_headers:
                        if name.lower() not in HOP_BY_HOP:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the unit was killed while waiting

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        return Handler
