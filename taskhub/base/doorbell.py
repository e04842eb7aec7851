"""The doorbell: "work may be claimable for this key" from whoever makes it so, to the long-poll
claims waiting in any web process.

Keys are strings: `type:<taskType>` (a task of that type became claimable, or will at `due`) and
`unit:<id>` (that unit's capacity or status changed). A ring names the key, how many waiters it is
for (one per new task: a create wakes one waiter per process, not all of them) and, for a task that
becomes claimable later (scheduledAt, a retry's backoff), when.

Transport, whoever rings (a web thread, a Celery worker, beat):
- Redis pub/sub when REDIS_HOST is set: one channel per Redis database, one subscription per
  waiting process.
- The embedded default: a Unix datagram socket per waiting process in a directory of the hub's
  own; a ring sends one datagram to each (a dead process's socket is removed on the way).
Both are best effort: a ring that is lost (Redis down, a full socket buffer) is made up by the
safety net of each waiting process: one cheap query per task type with waiters every
`RECHECK_SECONDS` (is anything claimable now, when is the next due), see `Waiters`.

Rings are sent after the transaction that made the work claimable commits (`ring_on_commit`): a
waiter woken earlier would find nothing, and a rolled-back change rings nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from django.conf import settings
from django.db import transaction

log = logging.getLogger("taskhub.doorbell")

# How often each waiting process asks the database itself (per task type with waiters): the safety
# net under lost rings, never the way work is normally found.
RECHECK_SECONDS = 1.0
# How old a probe's "nothing claimable" may be for a long poll to skip its first claim on it: two
# rechecks (the probe of a type with waiters runs every RECHECK_SECONDS; a slow one gets no say).
QUIET_MAX_AGE = 2 * RECHECK_SECONDS
ALL = 1_000_000  # a count meaning "every waiter of the key" (a unit's own wake-up)


def type_key(task_type: str) -> str:
    return f"type:{task_type}"


def unit_key(unit_id: str) -> str:
    return f"unit:{unit_id}"


# --- ringing (sync: any process, any thread) -------------------------------------------------------


def ring(key: str, count: int = 1, due: datetime | None = None) -> None:
    """Tell every waiting process: `count` waiters of `key` may find work (at `due`, if later)."""
    message = json.dumps([key, count, due.timestamp() if due is not None else None]).encode()
    try:
        _transport().send(message)
    except Exception as exc:  # best effort: the waiters' safety net finds the work anyway
        log.warning("doorbell: ring for %s lost (%s)", key, exc)


def ring_on_commit(rings: Iterable[tuple[str, int, datetime | None]]) -> None:
    """`ring` each (key, count, due) once the current transaction commits (at once outside one)."""
    rings = list(rings)
    if rings:
        transaction.on_commit(partial(_ring_all, rings))


def _ring_all(rings: list[tuple[str, int, datetime | None]]) -> None:
    for key, count, due in rings:
        ring(key, count, due)


def claimable_rings(pairs: Iterable[tuple[str, datetime | None]]) -> list[tuple[str, int, datetime | None]]:
    """(task type, claimable from) of tasks that became PENDING -> one ring per type: as many
    waiters as tasks, at the earliest time any of them becomes claimable."""
    counts: dict[str, int] = {}
    earliest: dict[str, datetime | None] = {}
    for task_type, due in pairs:
        counts[task_type] = counts.get(task_type, 0) + 1
        known = earliest.get(task_type, due)
        earliest[task_type] = None if due is None or known is None else min(due, known)
    return [(type_key(t), n, earliest[t]) for t, n in counts.items()]


def _ignore(up: bool) -> None:
    return None


class _RedisTransport:
    def __init__(self, url: str, channel: str) -> None:
        import redis

        self.url, self.channel = url, channel
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def send(self, message: bytes) -> None:
        self.client.publish(self.channel, message)

    async def listen(self, deliver: Callable[[bytes], None], ready: Callable[[bool], None] = _ignore) -> None:
        """Deliver each message of the channel, for ever; `ready(True)` once Redis confirmed the
        subscription (a ring published after it reaches this process), `ready(False)` when it is lost."""
        from redis.asyncio import Redis

        while True:
            client = Redis.from_url(self.url)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "message":
                        deliver(message["data"])
                    elif kind == "subscribe":
                        ready(True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: the safety net covers the gap
                ready(False)
                log.warning("doorbell: subscription to %s lost (%s); resubscribing", self.channel, exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()


class _SocketTransport:
    """Unix datagram sockets in a directory of this hub's own (derived from VAR_DIR, under the
    temporary directory: socket paths are limited to ~100 bytes)."""

    def __init__(self, var_dir: str, name: str = "doorbell") -> None:
        digest = hashlib.sha1(os.path.realpath(var_dir).encode()).hexdigest()[:12]
        self.directory = Path(tempfile.gettempdir()) / f"taskhub-{name}-{digest}"
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setblocking(False)
        self.lock = threading.Lock()

    def send(self, message: bytes) -> None:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return  # nobody waits
        with self.lock:
            for name in names:
                path = self.directory / name
                try:
                    self.sender.sendto(message, str(path))
                except (ConnectionRefusedError, FileNotFoundError):
                    with contextlib.suppress(OSError):
                        path.unlink()  # its process is gone
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                        raise

    async def listen(self, deliver: Callable[[bytes], None], ready: Callable[[bool], None] = _ignore) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        path = self.directory / f"{os.getpid()}-{secrets.token_hex(3)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        ready(True)  # bound: the next ring's listdir finds it
        try:
            while True:
                deliver(await loop.sock_recv(sock, 65536))
        finally:
            sock.close()
            with contextlib.suppress(OSError):
                path.unlink()


Transport = _RedisTransport | _SocketTransport
_transport_instance: Transport | None = None
_transport_lock = threading.Lock()


def make_transport(name: str) -> Transport:
    """The transport of the bell called `name` (its own Redis channel or socket directory)."""
    if getattr(settings, "REDIS_URL", ""):
        return _RedisTransport(settings.REDIS_URL, f"taskhub:{name}:{settings.REDIS_DB}")
    return _SocketTransport(str(settings.VAR_DIR), name)


def _transport() -> Transport:
    global _transport_instance
    if _transport_instance is None:
        with _transport_lock:
            if _transport_instance is None:
                _transport_instance = make_transport("doorbell")
    return _transport_instance


# --- waiting (async: the web process's event loop) -------------------------------------------------


@dataclass(frozen=True)
class Probed:
    """What a probe found for a task type: when its next PENDING task is claimable (None: none is
    PENDING), and whether "none claimable now" may stand in for a claim of the type (False when a
    claim replies more than "nothing" for it, e.g. a queue with settings: paused, limits)."""

    due: datetime | None
    stands_for_claim: bool = False


class Waiters:
    """The long-poll claims of one process, a FIFO of futures per key. A ring for `type:t` with
    count n wakes the n oldest waiters of t (fewer if fewer wait); `unit:u` wakes all of u's.
    A woken waiter claims; if another process's waiter took the task first, it waits again.

    `probe(task_type)` is the safety net, called (in a thread) once per `RECHECK_SECONDS` for each
    type that has waiters: it returns when that type's next PENDING task is claimable (None: none
    is), so a task due now wakes one waiter and a task due later wakes one at its time.

    The probe's finding is kept (`nothing_claimable`): a new long poll of a type this process
    probed a moment ago, found nothing claimable for and heard no ring of since, may skip its
    first claim (see taskhub.api.views.longpoll) and go straight to waiting."""

    def __init__(self, probe: Callable[[str], Awaitable[Probed | datetime | None]]) -> None:
        self.queues: dict[str, deque[asyncio.Future[None]]] = {}
        self.timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self.probe = probe
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.last_ring: dict[str, float] = {}  # key -> loop time of its last ring
        # type key -> (loop time its last probe began, wall time its next task is due or None), for
        # the types whose last probe found nothing claimable now and may stand for a claim.
        self.quiet: dict[str, tuple[float, float | None]] = {}
        self.stats = {"rings": 0, "woken": 0, "rechecks": 0}

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        self.loop = loop
        self.queues.clear()
        self.timers.clear()
        self.quiet.clear()
        self.tasks = [
            loop.create_task(_transport().listen(self._deliver)),
            loop.create_task(self._recheck_forever()),
        ]

    def _deliver(self, raw: bytes) -> None:
        try:
            key, count, due = json.loads(raw)
        except (ValueError, TypeError):
            return
        self.stats["rings"] += 1
        if self.loop is not None:
            self.last_ring[key] = self.loop.time()
        if due is not None and due > time.time() + 0.001:
            self._wake_at(key, due)
        else:
            self.wake(key, int(count))

    def _wake_at(self, key: str, due: float) -> None:
        assert self.loop is not None
        current = self.timers.get(key)
        if current is not None and current[0] <= due:
            return  # an earlier wake-up is set; the one after it is found by the recheck then
        if current is not None:
            current[1].cancel()
        delay = max(due - time.time(), 0.0)
        self.timers[key] = (due, self.loop.call_later(delay, self._timer_fired, key))

    def _timer_fired(self, key: str) -> None:
        self.timers.pop(key, None)
        self.wake(key, 1)

    def wake(self, key: str, count: int = 1) -> int:
        queue = self.queues.get(key)
        woken = 0
        while queue and woken < count:
            future = queue.popleft()
            if not future.done():
                future.set_result(None)
                woken += 1
        self.stats["woken"] += woken
        return woken

    def wake_everyone(self) -> int:
        """Every waiter of every key (this process drains: see taskhub.api.views.longpoll)."""
        return sum(self.wake(key, ALL) for key in list(self.queues))

    def rang_since(self, key: str, since: float) -> bool:
        """Whether `key` rang at or after loop time `since` (a waiter enqueued after a claim that
        ran meanwhile must not sleep through that ring)."""
        return self.last_ring.get(key, -1.0) >= since

    def nothing_claimable(self, key: str) -> bool:
        """Whether this process knows that nothing of type key `key` is claimable now: its last probe
        of it began at most QUIET_MAX_AGE ago, found nothing claimable (none PENDING, or the next
        one due later than now), could stand for a claim, and no ring of the key came since it
        began (a ring still on its way is caught by the waiter: `rang_since`). Safe to call from
        any thread (one dict read, the loop's monotonic clock)."""
        loop = self.loop
        found = self.quiet.get(key)
        if loop is None or found is None:
            return False
        began, due = found
        if loop.time() - began > QUIET_MAX_AGE or self.last_ring.get(key, -1.0) >= began:
            return False
        return due is None or due > time.time()

    def waiting(self, key: str) -> int:
        return sum(1 for future in self.queues.get(key, ()) if not future.done())

    async def wait(self, keys: list[str], timeout: float) -> bool:
        """Until one of `keys` rings for this waiter (True) or `timeout` passes (False). The
        future is queued at once: call `enqueue` before the claim that found nothing, then
        `wait_on` it, so a ring between the two is not lost."""
        return await self.wait_on(self.enqueue(keys), timeout)

    def enqueue(self, keys: list[str]) -> asyncio.Future[None]:
        self._start()
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        for key in keys:
            self.queues.setdefault(key, deque()).append(future)
        return future

    async def wait_on(self, future: asyncio.Future[None], timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()  # skipped by `wake`, dropped from the queue by the next recheck

    async def _recheck_forever(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            for key, queue in list(self.queues.items()):
                live = deque(f for f in queue if not f.done())
                if not live:
                    self.queues.pop(key, None)
                    self.quiet.pop(key, None)  # no more probes of it: what the last found gets old
                    continue
                self.queues[key] = live
                if not key.startswith("type:"):
                    continue
                self.stats["rechecks"] += 1
                assert self.loop is not None
                began = self.loop.time()
                try:
                    probed = await self.probe(key[len("type:") :])
                except Exception as exc:  # the database away: the next recheck tries again
                    self.quiet.pop(key, None)
                    log.warning("doorbell: recheck of %s failed (%s)", key, exc)
                    continue
                found = probed if isinstance(probed, Probed) else Probed(probed)
                due = found.due
                if found.stands_for_claim and (due is None or due.timestamp() > time.time()):
                    self.quiet[key] = (began, None if due is None else due.timestamp())
                else:
                    self.quiet.pop(key, None)
                if due is not None:
                    if due.timestamp() <= time.time():
                        self.wake(key, 1)
                    else:
                        self._wake_at(key, due.timestamp())
