"""Liveness of idle units: a held long-poll claim is heard, so an idle unit heartbeats rarely.

A unit that holds no task has nothing to fail over; what its silence decides is only its own status
(OFFLINE after UNIT_HEARTBEAT_TIMEOUT) and whether another process may take its id over
(units.lifecycle.is_live). While such a unit keeps a long-poll claim waiting, that claim is the
proof it lives: each web process stamps the units whose claims it holds (`HeldClaims`), one UPDATE
per tick for the units due, every UNIT_HEARTBEAT_INTERVAL each, into a column of its own,
`last_waited_at` (not `last_heartbeat_at`: the heartbeat keeps meaning a heartbeat). The unit's
liveness reads the later of the two (units.models.last_heard); the heartbeat reply then offers such
a unit UNIT_IDLE_HEARTBEAT_INTERVAL (60 s by default: `idle_heartbeat_interval`), which a unit uses
only while it holds nothing and its long poll really waits.

The stamp skips a unit that holds a task (a RUNNING lease: tasks.fencing.live_lease) or is not
ONLINE: a unit with work stays alive by its heartbeats alone, at UNIT_HEARTBEAT_INTERVAL, so I5,
I6 and the failover bound UNIT_HEARTBEAT_TIMEOUT + SWEEP_INTERVAL are what they were. An OFFLINE
unit must still heartbeat (or register) to come back.

The stamps also tell the hub-outage rule (units.hearing.newest_heard) that the hub hears, so a busy
unit that dies among idle ones (heartbeating once a minute) still fails over within the bound. That
holds only while the stamping process can take a heartbeat, so a process stamps only while it
serves (`stamping`): from the signal that begins its drain (taskhub.base.serving, set by
taskhub.uvicorn_worker) it stamps nothing, though it still holds claims for the drain. Before that
rule, a drained web kept stamping idle units while refusing every heartbeat, and the sweeper failed
live units' tasks over (chaos outage-web, I6). A proxy cut on the units' side that keeps its
upstream connections is not a drain this process sees: it stamps for the rest of those waits.

A waiting claim whose connection drops ends (Django cancels the view) and is no longer stamped:
a dropped long poll is no failure by itself, and an idle unit that died is OFFLINE within
UNIT_HEARTBEAT_TIMEOUT + SWEEP_INTERVAL of its last contact, later by at most the rest of its wait
(CLAIM_WAIT_MAX) when the hub never saw its connection close.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.db.models.expressions import RawSQL

from taskhub.base import serving
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.sql import db_now_sql
from tasks.fencing import live_lease
from tasks.models import Task
from units.models import ExecutionUnit
from units.states import UnitStatus

log = logging.getLogger("taskhub.units.idle")

STAMP_CHUNK = 500  # unit ids per UPDATE


def idle_heartbeat_interval(status: str, running: int, *, stopping: bool = False) -> float | None:
    """The heartbeat interval offered to a unit as a heartbeat left it (None: none, it heartbeats
    every UNIT_HEARTBEAT_INTERVAL): only to an ONLINE unit that holds no task."""
    idle = float(settings.UNIT_IDLE_HEARTBEAT_INTERVAL)
    if stopping or running or status != UnitStatus.ONLINE or idle <= float(settings.UNIT_HEARTBEAT_INTERVAL):
        return None
    return idle


def stamping() -> bool:
    """Whether held claims are stamped in this process: idle liveness is on
    (UNIT_IDLE_HEARTBEAT_INTERVAL) and the process serves (a draining one stops: taskhub.base.serving)."""
    return bool(settings.UNIT_IDLE_HEARTBEAT_INTERVAL) and serving.serving()


@retry_on_lock_error()
def stamp_waiting(unit_ids: list[str]) -> int:
    """Heard waiting now (the database's clock, as a heartbeat stamps `last_heartbeat_at`): the
    ONLINE units among `unit_ids` that hold no task get `last_waited_at`. One UPDATE; returns how
    many it stamped."""
    leases = Task.objects.filter(**live_lease(OuterRef("pk")))
    return (
        ExecutionUnit.objects.filter(pk__in=unit_ids, status=UnitStatus.ONLINE)
        .exclude(Exists(leases))
        .update(last_waited_at=RawSQL(db_now_sql(), []))
    )


def tick_seconds() -> float:
    return min(1.0, float(settings.UNIT_HEARTBEAT_INTERVAL) / 2)


class HeldClaims:
    """The units whose long-poll claims this process holds, stamped alive by `stamp` (an async
    `stamp_waiting`) every UNIT_HEARTBEAT_INTERVAL each: a unit is due when this process has not
    stamped it for that long (at once when it starts waiting here), and every `tick_seconds()` the
    due ones go in one UPDATE (per STAMP_CHUNK ids)."""

    def __init__(self, stamp: Callable[[list[str]], Awaitable[int]]) -> None:
        self.stamp = stamp
        self.held: dict[str, int] = {}  # unit id -> its claims waiting here
        self.stamped: dict[str, float] = {}  # unit id -> loop time this process last stamped it
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.stats = {"stamps": 0, "statements": 0}

    def hold(self, unit_id: str) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop, self.held, self.stamped = loop, {}, {}
            self.task = loop.create_task(self._forever())
        self.held[unit_id] = self.held.get(unit_id, 0) + 1

    def release(self, unit_id: str) -> None:
        left = self.held.get(unit_id, 0) - 1
        if left > 0:
            self.held[unit_id] = left
        else:
            self.held.pop(unit_id, None)

    def due(self, now: float) -> list[str]:
        every = float(settings.UNIT_HEARTBEAT_INTERVAL)
        for unit_id, at in list(self.stamped.items()):
            if unit_id not in self.held and now - at >= every:
                del self.stamped[unit_id]  # gone from here; a wait here again is due at once
        # A tick early rather than late: stamped at a tick, a unit is never more than `every` unheard.
        return sorted(u for u in self.held if now - self.stamped.get(u, -math.inf) >= every - tick_seconds())

    async def flush(self) -> int:
        assert self.loop is not None
        if not stamping():
            return 0
        now = self.loop.time()
        due = self.due(now)
        for start in range(0, len(due), STAMP_CHUNK):
            chunk = due[start : start + STAMP_CHUNK]
            await self.stamp(chunk)
            self.stats["statements"] += 1
            for unit_id in chunk:
                self.stamped[unit_id] = now
        self.stats["stamps"] += len(due)
        return len(due)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(tick_seconds())
            try:
                await self.flush()
            except Exception as exc:  # the database away: the next tick tries again
                log.warning("held long-poll claims: liveness stamp failed (%s)", exc)
