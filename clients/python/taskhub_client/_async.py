"""`AsyncClient`: `Client`'s methods as coroutines (and async iterators), over the same `Core`.
Only `_drive` and `_perform` differ from the blocking client: they await httpx's async API."""

from __future__ import annotations

import builtins
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from taskhub_client import _core
from taskhub_client._core import Core, client_headers, event_params, list_filters
from taskhub_client._steps import Close, Emit, Outcome, Read, Send, Sleep, Step, Steps, returning
from taskhub_client.models import BatchItem, Event, HistoryEntry, LogEntry, Stats, Task

T = TypeVar("T")


class AsyncClient:
    """As `Client`, for asyncio: `await client.submit(...)`, `async for task in client.list()`.
    An async iterator left early holds its connection until it is closed: wrap it in
    `contextlib.aclosing(...)` to release it at once (an event stream above all)."""

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        tracer_provider: Any = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=_core.api_base(url), headers=client_headers(key), timeout=timeout, transport=transport
        )
        self._core = Core(
            self._http, timeout=timeout, retries=retries, clock=clock, rng=rng, tracer_provider=tracer_provider
        )
        if sleep is None:
            # Here rather than at the top: importing asyncio costs a blocking client's import ~35 ms.
            import asyncio

            sleep = asyncio.sleep
        self._sleep = sleep

    # --- performing steps: the only I/O ---------------------------------------------------------

    async def _drive(self, steps: Steps[Any]) -> AsyncGenerator[Any, None]:
        readers: dict[httpx.Response, AsyncIterator[bytes]] = {}
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
                    outcome = await self._perform(step, readers)
        finally:
            steps.close()
            for response in readers:
                await response.aclose()

    async def _perform(self, step: Step, readers: dict[httpx.Response, AsyncIterator[bytes]]) -> Outcome:
        try:
            if isinstance(step, Send):
                response = await self._http.send(step.request, stream=step.stream)
                if step.stream:
                    readers[response] = response.aiter_bytes()
                    if not response.is_success:
                        await response.aread()
                return Outcome(response)
            if isinstance(step, Read):
                return Outcome(await anext(readers[step.response], b""))
            if isinstance(step, Close):
                readers.pop(step.response, None)
                await step.response.aclose()
            elif isinstance(step, Sleep):
                await self._sleep(step.seconds)
            return Outcome()
        except httpx.TransportError as exc:
            return Outcome(error=exc)

    async def _run(self, steps: Steps[T]) -> T:
        async with aclosing(self._drive(returning(steps))) as values:
            return await anext(values)

    # --- the API (documented on Client) ------------------------------------------------------------

    async def submit(
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
        item = BatchItem(
            name, task_type, config, priority, max_retries, timeout_seconds, scheduled_at, idempotency_key, traceparent
        )
        return await self._run(self._core.submit(item))

    async def submit_many(self, items: Iterable[BatchItem | Mapping[str, Any]]) -> builtins.list[Task]:
        return await self._run(self._core.submit_many(items))

    async def get(self, task_id: int) -> Task:
        return await self._run(self._core.get(task_id))

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
    ) -> AsyncGenerator[Task, None]:
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

    async def cancel(self, task_id: int, reason: str = "") -> Task:
        return await self._run(self._core.cancel(task_id, reason))

    async def retry(self, task_id: int) -> Task:
        return await self._run(self._core.retry(task_id))

    async def history(self, task_id: int) -> builtins.list[HistoryEntry]:
        return await self._run(self._core.history(task_id))

    def logs(
        self,
        task_id: int,
        *,
        attempt: int | None = None,
        level: str | None = None,
        after: int = 0,
        page_size: int = 500,
    ) -> AsyncGenerator[LogEntry, None]:
        return self._drive(self._core.logs(task_id, list_filters(attempt=attempt, level=level), after, page_size))

    async def stats(self) -> Stats:
        return await self._run(self._core.stats())

    async def wait(self, task_id: int, timeout: float | None = None) -> Task:
        return await self._run(self._core.wait(task_id, timeout))

    def events(
        self,
        task_ids: Iterable[int] | None = None,
        task_type: str | None = None,
        mine: bool = False,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        return self._drive(self._core.events(event_params(task_ids, task_type, mine), last_event_id))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()
