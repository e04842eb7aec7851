"""Responses that wait: a held task read (`waitFor=terminal`) and the event stream.

A view authenticates, validates and makes its first read as any other (DRF, sync, short), then
returns a response whose body is produced later, by one of two drivers of the same steps:
- under ASGI an async iterator: waiting is an awaited doorbell ticket, each database read a call on
  the web process's kept-connection threads (taskhub.base.syncpool.run_kept, as the woken long-poll
  claim's), so a waiter holds no thread and no connection of its own between reads;
- under WSGI (runserver, gunicorn's threads, the test client) a plain iterator, which holds its
  worker thread (and that thread's connection) for the wait: WSGI has no other way.
Both wait on the results doorbell (taskhub.base.historybell): every committed state change rings it
for its task, and a waiter reads again on the ring: one indexed query per change it may care about,
not one per interval. Each step arms a ticket *before* its read, so a change committed between the
read and the wait still rings. Without a ring a waiter reads again every RESULTS_POLL_INTERVAL (the
safety net under a lost ring); a stream also wakes for its heartbeat, its end and the moment the
rows it holds back behind a missing id are given up on (tasks.events: no ring comes for a rollback).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from taskhub.api.principals import Principal
from taskhub.api.serializers.tasks import TaskSerializer
from taskhub.apikeys.models import ApiKey
from taskhub.base.historybell import BELL
from taskhub.base.syncpool import run_kept
from tasks.events import EventCursor, is_done
from tasks.selectors import visible_tasks

T = TypeVar("T")
logger = logging.getLogger("taskhub.api")


def _django_request(request: Any) -> HttpRequest:
    return getattr(request, "_request", request)


def is_asgi(request: Any) -> bool:
    return isinstance(_django_request(request), ASGIRequest)


async def _read(fn: Callable[..., T], *args: Any) -> T:
    return await run_kept(fn, *args)


# --- GET /tasks/{id}?waitFor=terminal ---------------------------------------------------------


def _task_json_if_done(principal: Principal, task_id: int, fallback: bytes) -> bytes | None:
    """The task as GET /tasks/{id} renders it, read again with the caller's visibility, if it is
    done (one read); `fallback` (its state when the wait began) if it is gone by now; else None."""
    task = visible_tasks(principal).filter(pk=task_id).first()
    if task is None:
        return fallback
    return JSONRenderer().render(TaskSerializer(task).data) if is_done(task.status, task.next_retry_at) else None


def _task_json(principal: Principal, task_id: int, fallback: bytes) -> bytes:
    task = visible_tasks(principal).filter(pk=task_id).first()
    return fallback if task is None else JSONRenderer().render(TaskSerializer(task).data)


def held_task(request: Any, principal: Principal, task_id: int, seconds: float, first: Any) -> StreamingHttpResponse:
    fallback = JSONRenderer().render(first)
    interval = settings.RESULTS_POLL_INTERVAL
    ids = frozenset({task_id})

    def waiting() -> Iterator[bytes]:
        deadline = time.monotonic() + seconds
        while True:
            ticket = BELL.arm_sync(ids)
            if (body := _task_json_if_done(principal, task_id, fallback)) is not None:
                break
            if (left := deadline - time.monotonic()) <= 0:
                body = _task_json(principal, task_id, fallback)
                break
            BELL.wait_sync(ticket, min(interval, left))
        BELL.disarm(ticket)
        yield body

    async def waiting_async() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + seconds
        while True:
            ticket = await BELL.arm(ids)
            if (body := await _read(_task_json_if_done, principal, task_id, fallback)) is not None:
                break
            if (left := deadline - time.monotonic()) <= 0:
                body = await _read(_task_json, principal, task_id, fallback)
                break
            await BELL.wait(ticket, min(interval, left))
        BELL.disarm(ticket)
        yield body

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

    def wait_seconds(self) -> float:
        """How long a caught-up stream may wait for a ring: until the safety net's next read, its
        next heartbeat, its end or the moment its held-back rows are given up on, whichever is first."""
        now = time.monotonic()
        wait = min(settings.RESULTS_POLL_INTERVAL, self.last_sent + self.heartbeat - now, self.ends_at - now)
        if self.cursor.held_until is not None:
            wait = min(wait, (self.cursor.held_until - timezone.now()).total_seconds())
        return max(wait, 0.0)

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
    ids = stream.cursor.filter.task_ids

    def sending() -> Iterator[bytes]:
        ticket = BELL.arm_sync(ids)
        try:
            yield stream.opening()  # armed: a change committed from now on rings this stream
            while True:
                before = stream.cursor.position
                if (events := stream.poll_or_end()) is None:
                    return
                if chunk := stream.frames(events):
                    yield chunk
                if stream.cursor.position == before:  # caught up: wait for a ring (else read on at once)
                    BELL.wait_sync(ticket, stream.wait_seconds())
                BELL.disarm(ticket)
                ticket = BELL.arm_sync(ids)
        finally:
            BELL.disarm(ticket)

    async def sending_async() -> AsyncIterator[bytes]:
        ticket = await BELL.arm(ids)
        try:
            yield stream.opening()
            while True:
                before = stream.cursor.position
                if (events := await _read(stream.poll_or_end)) is None:
                    return
                if chunk := stream.frames(events):
                    yield chunk
                if stream.cursor.position == before:
                    await BELL.wait(ticket, stream.wait_seconds())
                BELL.disarm(ticket)
                ticket = await BELL.arm(ids)
        finally:
            BELL.disarm(ticket)

    body = sending_async() if is_asgi(request) else sending()
    response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
    return response
