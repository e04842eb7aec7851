"""Responses that wait: a held task read (`waitFor=terminal`) and the event stream.

A view authenticates, validates and makes its first read as any other (DRF, sync, short), then
returns a response whose body is produced later, by one of two drivers of the same steps:
- under ASGI an async iterator: waiting is `asyncio.sleep`, each database read a
  `sync_to_async(thread_sensitive=False)` call that closes its connection before returning, so a
  waiter holds no thread and no connection between reads;
- under WSGI (runserver, gunicorn's threads, the test client) a plain iterator, which holds its
  worker thread (and that thread's connection) for the wait: WSGI has no other way.
Reads are one indexed query every RESULTS_POLL_INTERVAL (250 ms by default): what a doorbell
(Redis pub/sub) may replace later without changing either endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from taskhub.api.principals import Principal
from taskhub.api.serializers.tasks import TaskSerializer
from taskhub.apikeys.models import ApiKey
from tasks.events import EventCursor, task_done
from tasks.selectors import visible_tasks

T = TypeVar("T")
logger = logging.getLogger("taskhub.api")


def _django_request(request: Any) -> HttpRequest:
    return getattr(request, "_request", request)


def is_asgi(request: Any) -> bool:
    return isinstance(_django_request(request), ASGIRequest)


def _closing(fn: Callable[..., T]) -> Callable[..., T]:
    def run(*args: Any) -> T:
        try:
            return fn(*args)
        finally:
            connections.close_all()  # this executor thread's connections: none is kept between reads

    return run


async def _read(fn: Callable[..., T], *args: Any) -> T:
    return await sync_to_async(_closing(fn), thread_sensitive=False)(*args)


# --- GET /tasks/{id}?waitFor=terminal ---------------------------------------------------------


def _task_json(principal: Principal, task_id: int, fallback: bytes) -> bytes:
    """The task as GET /tasks/{id} renders it, read again with the caller's visibility; `fallback`
    (its state when the wait began) if it is gone by now."""
    task = visible_tasks(principal).filter(pk=task_id).first()
    return fallback if task is None else JSONRenderer().render(TaskSerializer(task).data)


def held_task(request: Any, principal: Principal, task_id: int, seconds: float, first: Any) -> StreamingHttpResponse:
    fallback = JSONRenderer().render(first)
    interval = settings.RESULTS_POLL_INTERVAL

    def waiting() -> Iterator[bytes]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(interval, left))
            if task_done(task_id) is not False:
                break
        yield _task_json(principal, task_id, fallback)

    async def waiting_async() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(interval, left))
            if await _read(task_done, task_id) is not False:
                break
        yield await _read(_task_json, principal, task_id, fallback)

    body = waiting_async() if is_asgi(request) else waiting()
    response = StreamingHttpResponse(body, content_type="application/json")
    response["Cache-Control"] = "no-store"
    return response


# --- GET /api/v1/events -----------------------------------------------------------------------


class EventStream:
    """The frames of one stream, whichever driver sends them."""

    def __init__(self, cursor: EventCursor, key_id: int | None) -> None:
        self.cursor, self.key_id = cursor, key_id
        self.started = self.last_sent = time.monotonic()
        self.heartbeat = settings.EVENTS_HEARTBEAT_SECONDS
        self.ends_at = self.started + settings.EVENTS_STREAM_MAX_SECONDS

    def opening(self) -> bytes:
        # Sent at once, so the client (and any proxy) knows the stream is open before any event.
        retry_ms = int(max(settings.RESULTS_POLL_INTERVAL, 1.0) * 1000)
        return f"retry: {retry_ms}\n: events after {self.cursor.position}\n\n".encode()

    def poll(self) -> list[dict[str, Any]] | None:
        """The next events (a database read); None when the stream should end (its time is up, or
        its API key was revoked: checked with each heartbeat)."""
        now = time.monotonic()
        if now >= self.ends_at:
            return None
        revoked = (
            self.key_id is not None
            and now - self.last_sent >= self.heartbeat
            and not ApiKey.objects.filter(pk=self.key_id, revoked_at__isnull=True).exists()
        )
        if revoked:
            return None
        return self.cursor.poll(timezone.now())

    def poll_or_end(self) -> list[dict[str, Any]] | None:
        """`poll`, and a read that fails (the database gone away) ends the stream: the client
        reconnects with Last-Event-ID, on a fresh connection, and misses nothing."""
        try:
            return self.poll()
        except Exception:
            logger.warning("event stream ended: a read failed", exc_info=True)
            return None

    def frames(self, events: list[dict[str, Any]]) -> bytes:
        now = time.monotonic()
        if events:
            self.last_sent = now
            return b"".join(
                f"id: {e['historyId']}\nevent: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode()
                for e in events
            )
        if now - self.last_sent >= self.heartbeat:
            self.last_sent = now
            return b": heartbeat\n\n"
        return b""


def event_stream(request: Any, stream: EventStream) -> StreamingHttpResponse:
    interval = settings.RESULTS_POLL_INTERVAL

    def sending() -> Iterator[bytes]:
        yield stream.opening()
        while (events := stream.poll_or_end()) is not None:
            if chunk := stream.frames(events):
                yield chunk
            if not events:  # caught up: wait; otherwise read the next batch at once
                time.sleep(interval)

    async def sending_async() -> AsyncIterator[bytes]:
        yield stream.opening()
        while (events := await _read(stream.poll_or_end)) is not None:
            if chunk := stream.frames(events):
                yield chunk
            if not events:
                await asyncio.sleep(interval)

    body = sending_async() if is_asgi(request) else sending()
    response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
    return response
