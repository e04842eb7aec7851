"""The results doorbell: "these tasks' history changed", from whoever commits a state change to the
held task reads (`waitFor=terminal`) and event streams waiting in any web process.

`tasks.history.write_history` (the one writer of state changes) rings it when the transaction
commits (`ring_on_commit`), naming the tasks whose history it wrote (past MAX_IDS: "some tasks",
which wakes every waiter); a rolled-back change rings nothing. The transport is the claims'
doorbell's (taskhub.base.doorbell) on a channel of its own: Redis pub/sub when REDIS_HOST is set,
else Unix datagram sockets. A process subscribes once (per event loop, or one listener thread for
the sync drivers), when its first waiter arms: O(1) subscriptions per process, however many wait,
and none in a process where nobody waits.

A waiter *arms* a one-shot ticket for the task ids it follows (None: any task), then reads the
database, then waits on the ticket: a change committed after the arm rings it, one committed
before is in the read, so nothing falls between the two. The first arm of a process waits (at most
READY_SECONDS) until its subscription is confirmed, so "armed" means "a ring reaches me". Rings are
best effort (Redis away, a full socket buffer): each waiter also reads again every
RESULTS_POLL_INTERVAL, the safety net, never the way changes are normally seen.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterable, Sequence
from functools import partial

from django.db import transaction

from taskhub.base import doorbell

log = logging.getLogger("taskhub.doorbell")

MAX_IDS = 256  # task ids a ring names at most; a larger change wakes every waiter
READY_SECONDS = 2.0  # how long a process's first waiter waits for the subscription to be confirmed


# --- ringing (sync: any process, any thread) -------------------------------------------------------


def ring(task_ids: Sequence[int]) -> None:
    """Tell every waiting process that these tasks' history changed (committed)."""
    named = sorted(set(task_ids))
    message = json.dumps(named if len(named) <= MAX_IDS else None, separators=(",", ":")).encode()
    try:
        _transport().send(message)
    except Exception as exc:  # best effort: the waiters' safety net reads again anyway
        log.warning("history bell: ring lost (%s)", exc)


def ring_on_commit(task_ids: Iterable[int]) -> None:
    """`ring` once the current transaction commits (nothing if it rolls back), from this process's
    sender thread: the committing request does not wait for Redis, and the claims' doorbell rung
    by the same commit (a task to dispatch) goes out first."""
    ids = sorted(set(task_ids))
    if ids:
        transaction.on_commit(partial(_SENDER.put, ids))


class _Sender:
    """One thread per process that sends the rings queued by commits; rings queued while it sends
    are merged into one message (fewer publishes under load, the same wake-ups). At exit the
    process waits (at most FLUSH_SECONDS) until what it queued is sent: a short-lived process (a
    management command, a script) must not take its rings with it."""

    FLUSH_SECONDS = 3.0

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.sent = threading.Condition()
        self.pending = 0  # rings queued and not sent yet
        self.pid = 0

    def put(self, ids: list[int]) -> None:
        if self.pid != os.getpid():  # first use in this process (or after a fork)
            with self.lock:
                if self.pid != os.getpid():
                    self.queue, self.sent, self.pending = queue.SimpleQueue(), threading.Condition(), 0
                    threading.Thread(target=self._run, name="taskhub-history-ring", daemon=True).start()
                    if self.pid == 0:
                        atexit.register(self.flush)
                    self.pid = os.getpid()
        with self.sent:
            self.pending += 1
        self.queue.put(ids)

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while sum(len(ids) for ids in batch) <= MAX_IDS:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                ring(sorted({i for ids in batch for i in ids}))
            finally:
                with self.sent:
                    self.pending -= len(batch)
                    self.sent.notify_all()

    def flush(self) -> None:
        if self.pid == os.getpid():
            with self.sent:
                self.sent.wait_for(lambda: self.pending <= 0, self.FLUSH_SECONDS)


_SENDER = _Sender()


_transport_instance: doorbell.Transport | None = None
_transport_lock = threading.Lock()


def _transport() -> doorbell.Transport:
    global _transport_instance
    if _transport_instance is None:
        with _transport_lock:
            if _transport_instance is None:
                _transport_instance = doorbell.make_transport("history")
    return _transport_instance


# --- waiting ---------------------------------------------------------------------------------------


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Ticket:
    """One waiter's wish to be woken once, for changes of `ids` (None: of any task). An async
    ticket is a future of its event loop; a sync one a threading.Event."""

    __slots__ = ("event", "future", "ids", "loop")

    def __init__(self, ids: frozenset[int] | None, loop: asyncio.AbstractEventLoop | None) -> None:
        self.ids, self.loop = ids, loop
        self.future: asyncio.Future[None] | None = loop.create_future() if loop is not None else None
        self.event: threading.Event | None = threading.Event() if loop is None else None

    @property
    def rang(self) -> bool:
        return self.future.done() if self.future is not None else bool(self.event and self.event.is_set())

    def ring(self) -> None:
        """From whichever listener delivered the ring (its own loop or another thread)."""
        if self.event is not None:
            self.event.set()
            return
        assert self.future is not None and self.loop is not None
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self.loop:
            _resolve(self.future)
        else:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits on it any more
                self.loop.call_soon_threadsafe(_resolve, self.future)


class _Listener:
    """One subscription: a task in an event loop, or a thread running a loop of its own."""

    def __init__(self) -> None:
        self.up = False
        self.settled = threading.Event()  # its first attempt is over: subscribed, or failed

    def mark(self, up: bool) -> None:
        self.up = up
        self.settled.set()


class Bell:
    """The waiting results of one process: tickets by task id, and those for any task."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_task: dict[int, set[Ticket]] = {}
        self.anyone: set[Ticket] = set()
        self.loops: dict[asyncio.AbstractEventLoop, tuple[_Listener, asyncio.Task[None]]] = {}
        self.thread: tuple[_Listener, threading.Thread] | None = None
        self.stats = {"rings": 0, "woken": 0}

    # registry

    def _add(self, ticket: Ticket) -> Ticket:
        with self.lock:
            if ticket.ids is None:
                self.anyone.add(ticket)
            else:
                for task_id in ticket.ids:
                    self.by_task.setdefault(task_id, set()).add(ticket)
        return ticket

    def _remove_locked(self, ticket: Ticket) -> None:
        if ticket.ids is None:
            self.anyone.discard(ticket)
            return
        for task_id in ticket.ids:
            tickets = self.by_task.get(task_id)
            if tickets is not None:
                tickets.discard(ticket)
                if not tickets:
                    del self.by_task[task_id]

    def disarm(self, ticket: Ticket | None) -> None:
        if ticket is not None:
            with self.lock:
                self._remove_locked(ticket)

    def waiting(self) -> int:
        with self.lock:
            return len(self.anyone) + len({t for tickets in self.by_task.values() for t in tickets})

    def deliver(self, raw: bytes) -> None:
        try:
            named = json.loads(raw)
            ids = None if named is None else {int(i) for i in named}
        except (ValueError, TypeError):
            return
        with self.lock:
            self.stats["rings"] += 1
            if ids is None:
                hit = set(self.anyone).union(*self.by_task.values())
            else:
                hit = set(self.anyone).union(*(self.by_task.get(i, ()) for i in ids))
            for ticket in hit:
                self._remove_locked(ticket)
            self.stats["woken"] += len(hit)
        for ticket in hit:
            ticket.ring()

    async def _listen(self, listener: _Listener) -> None:
        while True:
            try:
                await _transport().listen(self.deliver, listener.mark)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # e.g. the socket directory gone: the safety net covers the gap
                listener.mark(False)
                log.warning("history bell: listener failed (%s); listening again", exc)
                await asyncio.sleep(1.0)

    # async waiters (the ASGI drivers)

    async def arm(self, ids: frozenset[int] | None) -> Ticket:
        loop = asyncio.get_running_loop()
        listener = self._loop_listener(loop)
        if not listener.settled.is_set():
            for _ in range(int(READY_SECONDS / 0.005)):
                await asyncio.sleep(0.005)
                if listener.settled.is_set():
                    break
        return self._add(Ticket(ids, loop))

    def _loop_listener(self, loop: asyncio.AbstractEventLoop) -> _Listener:
        known = self.loops.get(loop)
        if known is not None and not known[1].done():
            return known[0]
        for other in [other for other in self.loops if other.is_closed()]:
            del self.loops[other]
        listener = _Listener()
        self.loops[loop] = (listener, loop.create_task(self._listen(listener)))
        return listener

    async def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Until the ticket rings (True) or `timeout` passes (False); it is disarmed either way."""
        assert ticket.future is not None
        try:
            if timeout > 0 and not ticket.future.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(ticket.future), timeout)
            return ticket.future.done()
        finally:
            self.disarm(ticket)

    # sync waiters (the WSGI drivers: runserver, gthread, Django's test client)

    def arm_sync(self, ids: frozenset[int] | None) -> Ticket:
        listener = self._thread_listener()
        listener.settled.wait(READY_SECONDS)
        return self._add(Ticket(ids, None))

    def _thread_listener(self) -> _Listener:
        with self.lock:
            if self.thread is not None and self.thread[1].is_alive():
                return self.thread[0]
            listener = _Listener()
            thread = threading.Thread(
                target=asyncio.run, args=(self._listen(listener),), name="taskhub-history-bell", daemon=True
            )
            self.thread = (listener, thread)
        thread.start()
        return listener

    def wait_sync(self, ticket: Ticket, timeout: float) -> bool:
        assert ticket.event is not None
        try:
            return ticket.event.wait(timeout) if timeout > 0 else ticket.event.is_set()
        finally:
            self.disarm(ticket)


BELL = Bell()
