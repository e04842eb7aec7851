"""`Client`: the blocking client. Each method hands one of `Core`'s operations to `_drive`."""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import closing
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from taskhub_client import _core
from taskhub_client._core import Core, client_headers, event_params, list_filters
from taskhub_client._steps import Close, Emit, Outcome, Read, Send, Sleep, Step, Steps, returning
from taskhub_client.models import BatchItem, Event, HistoryEntry, LogEntry, Stats, Task

T = TypeVar("T")


class Client:
    """A taskhub hub, for producers: submit tasks, watch them, wait for their results.

    `url` is the hub's address (`http://127.0.0.1:8000`, with or without `/api/v1`); `key` an API
    key (scopes `tasks:read`, and `tasks:write` to submit, cancel or retry). `timeout` is seconds
    per request; `retries` how many times a failed call is repeated where that is safe (see
    `taskhub_client._core`), with exponential backoff and the hub's Retry-After. `transport` is
    passed to httpx (a proxy, a test's transport); `sleep`, `clock` and `rng` let tests run the
    backoff without waiting. `tracer_provider`: the OpenTelemetry TracerProvider of the submit
    spans (default: the global one; see `submit`). Thread-safe; use it as a context manager or call
    `close()`."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        tracer_provider: Any = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=_core.api_base(url), headers=client_headers(key), timeout=timeout, transport=transport
        )
        self._core = Core(
            self._http, timeout=timeout, retries=retries, clock=clock, rng=rng, tracer_provider=tracer_provider
        )
        self._sleep = sleep

    # --- performing steps: the only I/O ---------------------------------------------------------

    def _drive(self, steps: Steps[Any]) -> Generator[Any, None, None]:
        readers: dict[httpx.Response, Iterator[bytes]] = {}
        outcome = Outcome()
        try:
            while True:
                try:
                    step = outcome.resume(steps)
                except StopIteration:
                    return
                if isinstance(step, Emit):
                    yield step.value
                    outcome = Outcome()
                else:
                    outcome = self._perform(step, readers)
        finally:
            steps.close()
            for response in readers:
                response.close()

    def _perform(self, step: Step, readers: dict[httpx.Response, Iterator[bytes]]) -> Outcome:
        try:
            if isinstance(step, Send):
                response = self._http.send(step.request, stream=step.stream)
                if step.stream:
                    readers[response] = response.iter_bytes()
                    if not response.is_success:
                        response.read()
                return Outcome(response)
            if isinstance(step, Read):
                return Outcome(next(readers[step.response], b""))
            if isinstance(step, Close):
                readers.pop(step.response, None)
                step.response.close()
            elif isinstance(step, Sleep):
                self._sleep(step.seconds)
            return Outcome()
        except httpx.TransportError as exc:
            return Outcome(error=exc)

    def _run(self, steps: Steps[T]) -> T:
        with closing(self._drive(returning(steps))) as values:
            return next(values)  # type: ignore[no-any-return]

    # --- the API ---------------------------------------------------------------------------------

    def submit(
        self,
        name: str,
        task_type: str,
        *,
        config: Mapping[str, Any] | None = None,
        priority: int = 0,
        max_retries: int | None = None,
        timeout_seconds: int | None = None,
        scheduled_at: datetime | None = None,
        idempotency_key: str | None = None,
        traceparent: str | None = None,
    ) -> Task:
        """Create a task (POST /tasks). Without `idempotency_key` one is made for this call and sent
        on each of its retries, so a retried submit never creates a second task; `task.replayed`
        says the hub returned a task an earlier request with the key created.

        Trace context: `traceparent` (W3C) is sent as the request's header and stored with the task
        (handed to the unit that runs it). With OpenTelemetry installed (`taskhub-client[otel]`) and
        a TracerProvider set, a `taskhub.submit` span is made around the request, a child of the
        current span (or of `traceparent`), and its context is the one sent."""
        item = BatchItem(
            name, task_type, config, priority, max_retries, timeout_seconds, scheduled_at, idempotency_key, traceparent
        )
        return self._run(self._core.submit(item))

    def submit_many(self, items: Iterable[BatchItem | Mapping[str, Any]]) -> builtins.list[Task]:
        """Create tasks in one request (POST /tasks/batch), all or nothing, in order. Items are
        BatchItems or mappings of `submit`'s arguments; each gets an idempotency key unless it has
        one. Not split: more than the hub's TASK_BATCH_MAX (100) is a ValidationError, so chunk
        large inputs yourself (each chunk is all or nothing and safe to send again)."""
        return self._run(self._core.submit_many(items))

    def get(self, task_id: int) -> Task:
        return self._run(self._core.get(task_id))

    def list(
        self,
        *,
        status: str | None = None,
        task_type: str | None = None,
        unit_id: str | None = None,
        priority: int | None = None,
        search: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        ordering: str | None = None,
        page_size: int = 100,
    ) -> Generator[Task, None, None]:
        """Every matching task, fetched a page at a time as you iterate: cursor mode (newest first)
        by default, page mode for another `ordering` (`priority`, `-createdAt`, ...)."""
        filters = list_filters(
            status=status,
            task_type=task_type,
            unit_id=unit_id,
            priority=priority,
            search=search,
            created_after=created_after,
            created_before=created_before,
        )
        return self._drive(self._core.list_tasks(filters, ordering, page_size))

    def cancel(self, task_id: int, reason: str = "") -> Task:
        """PUT /tasks/{id}/status CANCELLED; a task already done is a Conflict."""
        return self._run(self._core.cancel(task_id, reason))

    def retry(self, task_id: int) -> Task:
        """Retry a FAILED task now (POST /tasks/{id}/retry): back to PENDING."""
        return self._run(self._core.retry(task_id))

    def history(self, task_id: int) -> builtins.list[HistoryEntry]:
        return self._run(self._core.history(task_id))

    def logs(
        self,
        task_id: int,
        *,
        attempt: int | None = None,
        level: str | None = None,
        after: int = 0,
        page_size: int = 500,
    ) -> Generator[LogEntry, None, None]:
        """The task's log lines after the id `after`, oldest first, a page at a time."""
        return self._drive(self._core.logs(task_id, list_filters(attempt=attempt, level=level), after, page_size))

    def stats(self) -> Stats:
        return self._run(self._core.stats())

    def wait(self, task_id: int, timeout: float | None = None) -> Task:
        """The task once it is done (COMPLETED, CANCELLED, or FAILED with no retry pending), or
        WaitTimeout (carrying the last state seen) after `timeout` seconds (None: no limit)."""
        return self._run(self._core.wait(task_id, timeout))

    def events(
        self,
        task_ids: Iterable[int] | None = None,
        task_type: str | None = None,
        mine: bool = False,
        last_event_id: str | None = None,
    ) -> Generator[Event, None, None]:
        """State changes as they happen (GET /api/v1/events, Server-Sent Events), resumed after a
        dropped connection from the last event seen. Pass a saved `Event.id` as `last_event_id`
        to continue where an earlier stream stopped."""
        return self._drive(self._core.events(event_params(task_ids, task_type, mine), last_event_id))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
