"""The SDK's logic, written once for `Client` and `AsyncClient` and free of I/O (the "sans-I/O"
shape of h11 and h2): each operation is a generator that yields the steps it needs performed —
send this request, sleep this long, read the next chunk of that stream, hand this item to the
caller — and is sent each step's result. The two clients only perform steps, with httpx's sync or
async API, so request building, the retry policy, error mapping, paging, waiting and the event
stream's reconnection exist once.

Which calls are repeated after a failure (`Call.repeatable`):
- GETs, and POST /tasks and /tasks/batch (every submit carries an idempotency key, the same on
  each repeat, so the hub returns the task the first attempt created): after any transient
  failure — a connection error or timeout, 408, 429, 5xx.
- PUT /tasks/{id}/status and POST /tasks/{id}/retry are not idempotent (a second cancel of a task
  the first one cancelled is a 409; a second retry may retry a later failure): only when the hub
  surely did not act — no connection was made, 408, 429 (the throttle refuses before the view
  runs), or the hub's own 503 `service_unavailable` (its database call failed and rolled back).
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx

from taskhub_client._steps import Close, Emit, Read, Send, Sleep, Steps
from taskhub_client._tracing import SubmitSpan, check_traceparent
from taskhub_client._version import __version__
from taskhub_client.errors import HubUnavailable, ServerError, TaskhubError, WaitTimeout, error_from_response
from taskhub_client.errors import retry_after as retry_after_of
from taskhub_client.models import BatchItem, Event, HistoryEntry, LogEntry, Stats, Task, decode
from taskhub_client.sse import SSEDecoder

T = TypeVar("T")

API_PREFIX = "/api/v1"
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is raised to the caller rather than slept through
LONG_POLL_MAX = 20  # seconds asked of the hub per long-poll (below any proxy's idle timeout)
STREAM_READ_TIMEOUT = 90.0  # silence on an event stream longer than this reconnects it
LOG_PAGE_MAX = 1000  # GET /tasks/{id}/logs caps `limit` here


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None
    repeatable: bool = True
    timeout: httpx.Timeout | float | None = None  # this call's, instead of the client's
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential with "equal jitter": the n-th wait is drawn from [c/2, c], c = min(cap, base·2^n).
    The fixed half keeps waits growing; the random half keeps clients that failed together from
    coming back in step."""

    base: float
    cap: float

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        ceiling = self.cap if attempt > 30 else min(self.cap, self.base * 2.0**attempt)
        return ceiling / 2 + rng() * ceiling / 2


RETRY_BACKOFF = Backoff(base=0.5, cap=8.0)
POLL_BACKOFF = Backoff(base=0.25, cap=2.0)

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def api_base(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(API_PREFIX) else url + API_PREFIX


def client_headers(key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json",
        "User-Agent": f"taskhub-client/{__version__} httpx/{httpx.__version__}",
    }


_FILTER_NAMES = {
    "task_type": "taskType",
    "unit_id": "unitId",
    "created_after": "createdAfter",
    "created_before": "createdBefore",
}


def list_filters(**filters: Any) -> dict[str, Any]:
    """Keyword arguments as the hub's query parameters (camelCase), the unset ones left out."""
    return {_FILTER_NAMES.get(name, name): value for name, value in filters.items() if value is not None}


def event_params(task_ids: Iterable[int] | None, task_type: str | None, mine: bool) -> dict[str, Any]:
    return {
        "taskIds": ",".join(str(int(i)) for i in task_ids) if task_ids is not None else None,
        "taskType": task_type,
        "mine": True if mine else None,
    }


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _text(value: Any) -> str | None:
    """A query parameter as the hub reads it (None: left out)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _iso(value)
    return str(value)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes sent to the hub must be timezone-aware (e.g. datetime.now(UTC))")
    return value.isoformat()


def task_body(item: BatchItem) -> dict[str, Any]:
    """The body of POST /tasks (and of a batch item, without its key)."""
    body: dict[str, Any] = {
        "name": item.name,
        "taskType": item.task_type,
        "priority": item.priority,
        "config": dict(item.config or {}),
    }
    if item.max_retries is not None:
        body["maxRetries"] = item.max_retries
    if item.timeout_seconds is not None:
        body["timeoutSeconds"] = item.timeout_seconds
    if item.scheduled_at is not None:
        body["scheduledAt"] = _iso(item.scheduled_at)
    return body


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ServerError(
            f"the hub answered {response.status_code} with a body that is not JSON: {response.text[:200]!r}",
            status_code=response.status_code,
            code="bad_response",
        ) from None


class Core:
    """What both clients share; `http` is used only to build requests (base URL, headers, timeout)."""

    def __init__(
        self,
        http: httpx.Client | httpx.AsyncClient,
        *,
        timeout: float,
        retries: int,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
        tracer_provider: Any = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.http = http
        self.timeout = timeout
        self.retries = retries
        self.clock = clock
        self.rng = rng
        self.tracer_provider = tracer_provider  # None: OpenTelemetry's global one (if installed)
        # Whether the hub long-polls GET /tasks/{id}?waitFor=terminal: None until a wait finds out;
        # False for the rest of this client's life once the hub answered without waiting.
        self.long_poll: bool | None = None

    # --- one call, with the retry policy -------------------------------------------------------

    def request(self, call: Call) -> Steps[httpx.Response]:
        """A 2xx response to `call`, or the error the hub's answer (or its silence) maps to."""
        params = {k: v for k, v in ((k, _text(v)) for k, v in (call.params or {}).items()) if v is not None}
        timeout = httpx.USE_CLIENT_DEFAULT if call.timeout is None else call.timeout
        request = self.http.build_request(
            call.method, call.path, params=params, json=call.json, headers=call.headers, timeout=timeout
        )
        attempt = 0
        while True:
            try:
                response: httpx.Response = yield Send(request, stream=call.stream)
            except httpx.TransportError as exc:
                if attempt < self.retries and (call.repeatable or isinstance(exc, _NOT_SENT)):
                    yield Sleep(RETRY_BACKOFF.delay(attempt, self.rng))
                    attempt += 1
                    continue
                maybe = "" if isinstance(exc, _NOT_SENT) else " (the hub may have acted on it)"
                raise HubUnavailable(
                    f"{call.method} {request.url.path}: no answer after {attempt + 1} attempt(s){maybe}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if response.is_success:
                return response
            error = error_from_response(response)
            delay = self._retry_delay(call, error, response, attempt)
            if delay is None:
                raise error
            yield Sleep(delay)
            attempt += 1

    def _retry_delay(self, call: Call, error: TaskhubError, response: httpx.Response, attempt: int) -> float | None:
        status = error.status_code or 0
        refused_unread = status in (408, 429) or (status == 503 and error.code == "service_unavailable")
        if attempt >= self.retries or not (refused_unread or (status >= 500 and call.repeatable)):
            return None
        hinted = retry_after_of(response)
        if hinted is None:
            return RETRY_BACKOFF.delay(attempt, self.rng)
        return hinted if hinted <= MAX_RETRY_AFTER else None

    def get_json(self, path: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> Steps[Any]:
        response = yield from self.request(Call("GET", path, params=params, **kwargs))
        return _json(response)

    # --- operations ----------------------------------------------------------------------------

    def submit(self, item: BatchItem) -> Steps[Task]:
        key = item.idempotency_key or new_idempotency_key()
        span = SubmitSpan(
            self.tracer_provider,
            check_traceparent(item.traceparent),
            {"taskhub.task.type": item.task_type, "taskhub.task.name": item.name},
        )
        try:
            # The same traceparent on every retry of the call, as the same idempotency key.
            call = Call("POST", "/tasks", json=task_body(item), headers={"Idempotency-Key": key, **span.headers()})
            response = yield from self.request(call)
            replayed = response.headers.get("Idempotency-Replayed", "").lower() == "true"
            task = decode(Task, _json(response), replayed=replayed)
        except BaseException as exc:
            span.end(exc)
            raise
        span.end(**{"task.id": task.id, "replayed": replayed})
        return task

    def submit_many(self, items: Iterable[BatchItem | Mapping[str, Any]]) -> Steps[list[Task]]:
        specs = [item if isinstance(item, BatchItem) else BatchItem(**item) for item in items]
        if not specs:
            return []
        rows = []
        for spec in specs:
            row = {**task_body(spec), "idempotencyKey": spec.idempotency_key or new_idempotency_key()}
            if spec.traceparent is not None:
                row["traceparent"] = check_traceparent(spec.traceparent)
            rows.append(row)
        # One span for the request; an item's own traceparent goes with the item instead.
        span = SubmitSpan(self.tracer_provider, None, {"taskhub.batch.size": len(specs)})
        try:
            response = yield from self.request(
                Call("POST", "/tasks/batch", json={"tasks": rows}, headers=span.headers())
            )
            tasks = [decode(Task, row, replayed=row.get("created") is False) for row in _json(response)["items"]]
        except BaseException as exc:
            span.end(exc)
            raise
        span.end()
        return tasks

    def get(self, task_id: int) -> Steps[Task]:
        return decode(Task, (yield from self.get_json(f"/tasks/{int(task_id)}")))

    def cancel(self, task_id: int, reason: str) -> Steps[Task]:
        call = Call(
            "PUT", f"/tasks/{int(task_id)}/status", json={"status": "CANCELLED", "reason": reason}, repeatable=False
        )
        return decode(Task, _json((yield from self.request(call))))

    def retry(self, task_id: int) -> Steps[Task]:
        call = Call("POST", f"/tasks/{int(task_id)}/retry", repeatable=False)
        return decode(Task, _json((yield from self.request(call))))

    def history(self, task_id: int) -> Steps[list[HistoryEntry]]:
        body = yield from self.get_json(f"/tasks/{int(task_id)}/history")
        return [decode(HistoryEntry, row) for row in body["items"]]

    def stats(self) -> Steps[Stats]:
        return decode(Stats, (yield from self.get_json("/tasks/stats")))

    def list_tasks(self, filters: Mapping[str, Any], ordering: str | None, page_size: int) -> Steps[None]:
        """Every matching task. Cursor mode (newest first, no count, stable while tasks are added)
        unless another `ordering` is asked for: then page mode, where a task created during the walk
        can shift a page and be seen twice."""
        params: dict[str, Any] = {**filters, "limit": page_size}
        if ordering in (None, "-id"):
            cursor: str | None = ""
            while cursor is not None:
                body = yield from self.get_json("/tasks", {**params, "cursor": cursor})
                for row in body["items"]:
                    yield Emit(decode(Task, row))
                cursor = body.get("nextCursor") or None
            return
        page = 1
        while True:
            body = yield from self.get_json("/tasks", {**params, "ordering": ordering, "page": page})
            for row in body["items"]:
                yield Emit(decode(Task, row))
            if len(body["items"]) < body.get("limit", page_size) or not body["items"]:
                return
            page += 1

    def logs(self, task_id: int, filters: Mapping[str, Any], after: int, page_size: int) -> Steps[None]:
        limit = max(1, min(page_size, LOG_PAGE_MAX))
        while True:
            body = yield from self.get_json(f"/tasks/{int(task_id)}/logs", {**filters, "after": after, "limit": limit})
            for row in body["items"]:
                yield Emit(decode(LogEntry, row))
            if len(body["items"]) < limit or body.get("nextAfter", after) == after:
                return
            after = body["nextAfter"]

    def wait(self, task_id: int, timeout: float | None) -> Steps[Task]:
        """The task once `done`, long-polling where the hub holds the request; else polling with a
        capped exponential backoff. A hub without long-poll ignores the parameters and answers at
        once: an answer not done, and faster than half the wait asked, marks it so."""
        deadline = math.inf if timeout is None else self.clock() + timeout
        polls = 0
        while True:
            # Whole seconds, rounded: the time left just after a call (2.99 s of a 3 s wait) is
            # asked as 3, not cut to 2 and followed by a second of polling. The last second before
            # the deadline is plain gets.
            left = min(LONG_POLL_MAX, deadline - self.clock())
            ask = int(left + 0.5) if left >= 1 else 0
            if self.long_poll is not False and ask >= 1:
                started = self.clock()
                body = yield from self.get_json(
                    f"/tasks/{int(task_id)}",
                    {"waitFor": "terminal", "waitSeconds": ask},
                    timeout=self.timeout + ask,
                )
                task = decode(Task, body)
                if task.done:
                    return task
                if self.clock() - started >= ask / 2:
                    self.long_poll, polls = True, 0
                    continue  # the hub held it: ask again at once
                if not task.waiting_for_retry:  # a hub may count FAILED as final and answer at once
                    self.long_poll = False
            else:
                task = yield from self.get(task_id)
                if task.done:
                    return task
            left = deadline - self.clock()
            if left <= 0:
                raise WaitTimeout(f"task {task_id} is still {task.status} after {timeout:g}s", task=task)
            yield Sleep(min(POLL_BACKOFF.delay(polls, self.rng), left))
            polls += 1

    def events(self, params: Mapping[str, Any], last_event_id: str | None) -> Steps[None]:
        """The event stream, reconnected after a drop with Last-Event-ID so nothing is missed or
        repeated, after the stream's `retry:` time (growing while connections bring nothing).
        A refused connection (4xx) raises; 5xx and connection failures are retried as any GET,
        then raise. HTTP 204 ends the stream, as the standard says."""
        last_id = last_event_id or ""
        retry_ms: int | None = None
        idle = 0  # connections in a row that brought no bytes
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT)
            call = Call("GET", "/events", params=params, headers=headers, stream=True, timeout=timeout)
            response = yield from self.request(call)
            if response.status_code == 204:
                yield Close(response)
                return
            kind = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if kind != "text/event-stream":
                yield Close(response)
                raise TaskhubError(f"GET /events answered {kind or 'no content type'}, not text/event-stream")
            decoder = SSEDecoder(last_id)
            received = False
            while True:
                try:
                    chunk = yield Read(response)
                except httpx.TransportError:
                    break  # dropped: reconnect below
                if not chunk:
                    break
                received = True
                for raw in decoder.feed(chunk):
                    yield Emit(Event.from_sse(raw.id, raw.event, raw.data))
                last_id = decoder.last_event_id
                retry_ms = decoder.retry_ms if decoder.retry_ms is not None else retry_ms
            yield Close(response)
            idle = 0 if received else idle + 1
            base = retry_ms / 1000 if retry_ms is not None else RETRY_BACKOFF.base
            yield Sleep(max(base, RETRY_BACKOFF.delay(idle - 1, self.rng)) if idle else base)
