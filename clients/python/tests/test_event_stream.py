"""events()'s connection handling over real HTTP, against a scripted event-stream server: until the
hub serves GET /api/v1/events (test_events.py runs against it then), this is what shows the
reconnection sends Last-Event-ID, honours `retry:`, and maps the answers that end a stream."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import aclosing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hub import Tap, TapTransport
from taskhub_client import AsyncClient, Client, Event, NotFound, TaskhubError

Answer = Callable[[BaseHTTPRequestHandler], None]
Server = tuple[str, list[Answer], list[dict[str, str]]]


def event(n: int, status: str) -> bytes:
    return (
        f'id: ev-{n}\nevent: task.status\ndata: {{"taskId": 7, "toStatus": "{status}", "historyId": {n}}}\n\n'.encode()
    )


def stream(*chunks: bytes) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.end_headers()
        for chunk in chunks:  # then the connection closes: the stream ends, the client reconnects
            handler.wfile.write(chunk)
            handler.wfile.flush()

    return answer


def status(code: int, body: dict[str, object] | None = None) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(code)
        payload = json.dumps(body).encode() if body is not None else b""
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    return answer


@pytest.fixture
def server() -> Iterator[Server]:
    """(url, answers to give in turn, headers of each request seen)."""
    answers: list[Answer] = []
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({**dict(self.headers.items()), "path": self.path})
            answers.pop(0)(self)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", answers, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_stream_that_ends_is_resumed_from_the_last_complete_event(server: Server) -> None:
    url, answers, seen = server
    answers += [
        # retry: 1500 ms; event 2 is cut off before its blank line, so it must be asked for again.
        stream(b"retry: 1500\n: keep-alive\n\n", event(1, "PENDING"), b'id: ev-2\ndata: {"taskId": 7'),
        stream(event(2, "RUNNING"), event(3, "COMPLETED")),
    ]
    sleeps: list[float] = []
    with Client(url, "k", sleep=sleeps.append) as client:
        events = list(itertools.islice(client.events(task_ids=[7, 8], task_type="T", mine=True), 3))
    assert [(e.id, e.to_status, e.history_id, e.task_id) for e in events] == [
        ("ev-1", "PENDING", 1, 7),
        ("ev-2", "RUNNING", 2, 7),
        ("ev-3", "COMPLETED", 3, 7),
    ]
    assert events[0] == Event("ev-1", "task.status", {"taskId": 7, "toStatus": "PENDING", "historyId": 1})
    assert "Last-Event-ID" not in seen[0] and seen[1]["Last-Event-ID"] == "ev-1"
    assert seen[0]["Accept"] == "text/event-stream"
    assert seen[0]["path"] == "/api/v1/events?taskIds=7%2C8&taskType=T&mine=true"
    assert sleeps == [1.5]  # the stream's retry time


def test_a_dropped_connection_is_resumed_and_a_saved_id_starts_a_stream(server: Server) -> None:
    url, answers, seen = server
    answers += [stream(event(4, "RUNNING"), event(5, "FAILED")), stream(event(5, "FAILED"))]
    tap = Tap()
    with Client(url, "k", transport=TapTransport(tap, cuts=1), sleep=lambda s: None) as client:
        # The transport breaks the first connection after its first event: a ReadError mid-stream.
        events = list(itertools.islice(client.events(last_event_id="ev-3"), 2))
    assert [e.id for e in events] == ["ev-4", "ev-5"]
    assert [h["Last-Event-ID"] for h in seen] == ["ev-3", "ev-4"]


def test_a_refused_stream_raises_and_a_204_ends_it(server: Server) -> None:
    url, answers, _ = server
    answers += [status(404, {"statusCode": 404, "code": "not_found", "message": "No route"}), status(204)]
    with Client(url, "k") as client:
        with pytest.raises(NotFound):
            next(client.events())
        assert list(client.events()) == []


def test_a_server_error_is_retried_then_streamed(server: Server) -> None:
    url, answers, _ = server
    answers += [status(503, {"code": "service_unavailable", "message": "db"}), stream(event(1, "PENDING"))]
    sleeps: list[float] = []
    with Client(url, "k", sleep=sleeps.append, rng=lambda: 1.0) as client:
        assert next(client.events()).id == "ev-1"
    assert sleeps == [0.5]


def test_an_answer_that_is_not_an_event_stream_is_refused(server: Server) -> None:
    url, answers, _ = server
    answers += [status(200, {"items": []})]
    with Client(url, "k") as client, pytest.raises(TaskhubError, match="not text/event-stream"):
        next(client.events())


@pytest.mark.anyio
async def test_the_async_client_resumes_a_stream_too(server: Server) -> None:
    url, answers, seen = server
    answers += [stream(b"retry: 10\n", event(1, "PENDING")), stream(event(2, "CANCELLED"))]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async with AsyncClient(url, "k", sleep=sleep) as client:
        received = []
        async with aclosing(client.events()) as events:  # releases the connection at the break
            async for item in events:
                received.append(item.to_status)
                if len(received) == 2:
                    break
    assert received == ["PENDING", "CANCELLED"] and seen[1]["Last-Event-ID"] == "ev-1" and sleeps == [0.01]
