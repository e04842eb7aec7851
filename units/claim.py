"""The claim: a unit leases up to `max` PENDING tasks of its type and pool, within its free capacity
and within its queue's settings (pause, concurrency and rate limits: the one place these rules live).

The unit row lock (units.sql) serialises one unit's claims, so its capacity count is exact; the
tasks are taken by `tasks.transitions.bulk.lease_to_unit` (one locked read with SKIP LOCKED: concurrent
claimers skip each other's rows instead of waiting), and the unit's status follows its load.

Queues (a queue is a task type, its settings `tasks.models.QueueSettings`): the statement that locks
the unit row also reads, and locks, the queue's settings row. No row: nothing else happens, the
claim is exactly what it was before queues existed (same statements, same count). A row: every
claim of that queue holds its lock until it commits, so the counts below are exact across any
number of nodes (a PATCH of the settings takes the same lock; creating the row first locks the
queue's units, see tasks.queues), and a limit is never exceeded by interleaved claims:

- paused: nothing is claimed; the reply says so (and when to ask again), the agent backs off;
- `max_running`: at most that many RUNNING of the type (one COUNT on task_running_key_idx);
- `per_key_concurrency`: at most that many RUNNING per concurrency key (one grouped COUNT); keys at
  the limit are left out of the claim query inside the index (tasks.sql.lock_claimable);
- `rate_limit` per `rate_period` (queue) and `key_rate_limit` per `key_rate_period` (each key): a
  sliding-window log, the start times of the last N starts, kept in the settings row (queue) and in
  `QueueKeyWindow` rows (keys), updated in this transaction. Why a log rather than a token bucket:
  it keeps the promise operators write down ("at most N starts in any P seconds", an external
  API's quota) exactly, where a bucket of N refilled at N/P admits up to 2N in one window; its
  state is at most N timestamps (N is capped), and the next allowed start is exact: the oldest
  start in the window + P.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from taskhub.base import metrics
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.errors import NotFound
from tasks.models import QueueKeyWindow, Task
from tasks.selectors import running_on
from tasks.transitions.bulk import lease_to_unit
from units import lifecycle, sql
from units.states import CLAIMING, Cause, UnitStatus, check_move

UNIT_COLUMNS = ("id", "status", "capacity", "unit_type", "pool", "instance_id")
# Per-key rooms are applied to the locked rows: read more than `wanted` (at most 100) so that one
# key's tasks at the head of the queue do not leave the claim short. Each row read is a row locked
# and loaded (the limited claim's main cost beyond the unlimited one's): the first read takes twice
# `wanted` only when some key could run out of room within it, else `wanted`; a read after one that
# met a full key (the queue's head is one key's) takes four times.
KEY_LOOKAHEAD = 4
FIRST_LOOKAHEAD = 2
HOLD_CHUNK = 1000  # a full key's PENDING tasks taken out of the claim's range per claim, at most
KEY_ROUNDS = 3  # locked reads per claim at most, when the first ones met held-back keys
PAUSED_RETRY_SECONDS = 5.0  # what a paused queue's claim reply tells the agent to wait


@dataclass
class QueueHold:
    """Why a claim of a queue with settings got fewer tasks than it could hold, for the reply."""

    task_type: str
    paused: bool = False
    held_by: list[str] = field(default_factory=list)  # "paused", "maxRunning", "perKeyConcurrency", "rateLimit", ...
    next_start_at: datetime | None = None  # the rate limit's next allowed start, when it held the claim
    # The soonest start allowed to a key held back by its rate limit (keyRateLimit), if one is.
    key_next_start_at: datetime | None = None
    retry_after: float | None = None  # seconds the agent should wait before claiming again

    def as_reply(self) -> dict[str, Any]:
        return {
            "taskType": self.task_type,
            "paused": self.paused,
            "heldBy": self.held_by,
            "nextStartAt": None if self.next_start_at is None else self.next_start_at.isoformat(),
            "keyNextStartAt": None if self.key_next_start_at is None else self.key_next_start_at.isoformat(),
            "retryAfterSeconds": None if self.retry_after is None else round(self.retry_after, 3),
        }


@dataclass(frozen=True)
class QueueRules:
    """The settings row as the claim read it (units.sql.QUEUE_COLUMNS)."""

    task_type: str
    paused: bool
    max_running: int | None
    per_key_concurrency: int | None
    rate_limit: int | None
    rate_period: int | None
    key_rate_limit: int | None
    key_rate_period: int | None
    rate_starts: list[float]
    held_keys: list[str]

    @classmethod
    def from_row(cls, values: tuple[Any, ...]) -> QueueRules | None:
        if values[0] is None:
            return None
        starts, held = (json.loads(v) if isinstance(v, str | bytes) else (v or []) for v in values[8:10])
        max_running, per_key, rate_limit, rate_period, key_rate_limit, key_rate_period = values[2:8]
        return cls(
            str(values[0]),
            bool(values[1]),
            max_running,
            per_key,
            rate_limit,
            rate_period,
            key_rate_limit,
            key_rate_period,
            rate_starts=[float(s) for s in starts],
            held_keys=list(held),
        )

    @property
    def keyed(self) -> bool:
        return self.per_key_concurrency is not None or self.key_rate_limit is not None


@dataclass
class ClaimResult:
    tasks: list[Task]
    unit_status: str
    hold: QueueHold | None = None


def claim_tasks(unit_id: str, max_tasks: int, *, now: datetime, instance_id: str = "") -> list[Task]:
    """Lease up to `max_tasks` tasks of the unit's type, within its free capacity."""
    return claim_tasks_with_status(unit_id, max_tasks, now=now, instance_id=instance_id)[0]


def claim_tasks_with_status(
    unit_id: str, max_tasks: int, *, now: datetime, instance_id: str = ""
) -> tuple[list[Task], str]:
    """`claim_tasks`, also returning the unit's status as this claim left it (what the claim
    endpoint replies), so no query re-reads either after the commit."""
    result = claim(unit_id, max_tasks, now=now, instance_id=instance_id)
    return result.tasks, result.unit_status


@retry_on_lock_error()
@transaction.atomic
def claim(unit_id: str, max_tasks: int, *, now: datetime, instance_id: str = "") -> ClaimResult:
    """The claim, with what its queue's settings held back (`ClaimResult.hold`, None if nothing).

    `instance_id` (the calling process, see units.lifecycle) is checked against the stored one in
    the same locked read: a process replaced by another one registering as this unit, even a moment
    before this claim took the lock, gets UnitReplaced (409) and no task."""
    locked = sql.lock_unit_for_claim(unit_id, UNIT_COLUMNS)
    if locked is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    unit_pk, unit_status, capacity, unit_type, pool, stored_instance = locked[: len(UNIT_COLUMNS)]
    lifecycle.refuse_a_replaced_instance(unit_pk, stored_instance, instance_id)
    rules = QueueRules.from_row(locked[len(UNIT_COLUMNS) :])
    if unit_status not in CLAIMING:
        return ClaimResult([], unit_status)
    running = running_on(unit_pk)
    room = min(max_tasks, capacity - running)
    hold = None
    if rules is None:
        tasks = lease_to_unit(unit_pk, unit_type, room, now, pool)
    else:
        tasks, hold = _claim_limited(unit_pk, unit_type, pool, room, rules, now)
    metrics.record_claim(unit_type, len(tasks))
    status = UnitStatus.BUSY if running + len(tasks) >= capacity else UnitStatus.ONLINE
    if status != unit_status:
        sql.set_status(unit_pk, check_move(unit_status, status, Cause.CLAIM))
    return ClaimResult(tasks, status, hold)


def _window(starts: list[float], period: int, now_ts: float) -> list[float]:
    """The starts still inside the sliding window ending now."""
    return [s for s in starts if s > now_ts - period]


def _claim_limited(
    unit_pk: str, unit_type: str, pool: str, room: int, rules: QueueRules, now: datetime
) -> tuple[list[Task], QueueHold | None]:
    """The claim of a queue with a settings row, under that row's lock (see the module's doc)."""
    hold = QueueHold(unit_type)
    if rules.paused:
        hold.paused, hold.held_by, hold.retry_after = True, ["paused"], PAUSED_RETRY_SECONDS
        return [], hold
    if room <= 0:
        return [], None
    wanted = room
    now_ts = now.timestamp()
    # One grouped count serves both concurrency limits when the queue has a per-key one.
    by_key = sql.running_by_key(unit_type) if rules.per_key_concurrency is not None else {}
    if rules.max_running is not None:
        total = sum(by_key.values()) if rules.per_key_concurrency is not None else sql.running_of_type(unit_type)
        free = rules.max_running - total
        if free < wanted:
            hold.held_by.append("maxRunning")
            wanted = max(free, 0)
    window: list[float] | None = None
    if rules.rate_limit is not None and rules.rate_period is not None:
        # Each log reads as a clock that never goes back: a claim whose `now` was read before it
        # waited for the lock counts (and records) its start no earlier than the last one.
        now_ts = max([now_ts, *rules.rate_starts])
        window = _window(rules.rate_starts, rules.rate_period, now_ts)
        left = rules.rate_limit - len(window)
        if left < wanted:
            hold.held_by.append("rateLimit")
            wanted = max(left, 0)
    key_room, key_windows = _key_rooms(unit_type, rules, by_key, now, now_ts)
    tasks: list[Task] = []
    held_keys = _release_keys(unit_type, rules, key_room, now) if rules.keyed else set()
    # Could a key run out of room within the first read (a key with less room than the claim wants)?
    tight = rules.keyed and min([_fresh_key_room(rules), *key_room.values()]) < wanted
    for round_no in range(KEY_ROUNDS if rules.keyed else 1):
        need = wanted - len(tasks)
        if need <= 0:
            break
        held: set[str] = set()  # keys met at their limit in this read

        def pick(rows: list[Task], need: int = need, held: set[str] = held) -> list[Task]:
            chosen: list[Task] = []
            for task in rows:
                if len(chosen) == need:
                    break
                key = task.concurrency_key
                if key:
                    left = key_room.get(key, _fresh_key_room(rules))
                    if left <= 0:
                        held.add(key)
                        continue
                    key_room[key] = left - 1
                chosen.append(task)
            return chosen

        lookahead = (FIRST_LOOKAHEAD if tight else 1) if round_no == 0 else KEY_LOOKAHEAD
        fetch = min(100, need * lookahead) if rules.keyed else need
        got = lease_to_unit(unit_pk, unit_type, fetch, now, pool, pick=pick if rules.keyed else None)
        tasks += got
        for key in held:  # out of the claim's range, all of the key's PENDING tasks (a chunk per claim)
            sql.hold_key(unit_type, key, HOLD_CHUNK)
            held_keys.add(key)
        if not held or len(got) == need:
            break  # nothing held back: the queue has no more to give (or the claim is full)
    if rules.keyed and set(rules.held_keys) != held_keys:
        sql.save_held_keys(unit_type, sorted(held_keys))
    if rules.keyed and held_keys and "keyLimits" not in hold.held_by and len(tasks) < wanted:
        hold.held_by.append("keyLimits")
    _record_starts(unit_type, rules, window, key_windows, tasks, now, now_ts)
    if window is not None and rules.rate_limit is not None and rules.rate_period is not None:
        window = window + [now_ts] * len(tasks)
        if len(window) >= rules.rate_limit:
            next_ts = window[len(window) - rules.rate_limit] + rules.rate_period
            hold.next_start_at = now + timedelta(seconds=next_ts - now.timestamp())
            if "rateLimit" in hold.held_by or not tasks:
                hold.retry_after = max(0.0, next_ts - now.timestamp())
    if held_keys and rules.key_rate_limit is not None and "keyLimits" in hold.held_by:
        key_ts = _key_next_start(rules, held_keys, by_key, key_windows, tasks, now_ts)
        if key_ts is not None:
            hold.key_next_start_at = now + timedelta(seconds=key_ts - now.timestamp())
            if not tasks and hold.retry_after is None:
                hold.retry_after = max(0.0, key_ts - now.timestamp())
    return tasks, (hold if hold.held_by or hold.next_start_at else None)


def _key_next_start(
    rules: QueueRules,
    keys: set[str],
    by_key: dict[str, int],
    key_windows: dict[str, list[float]],
    tasks: list[Task],
    now_ts: float,
) -> float | None:
    """The soonest time one of the held-back `keys` that only its rate limit holds back may start
    again (a key also at its concurrency limit waits for a completion, a time nobody knows)."""
    assert rules.key_rate_limit is not None and rules.key_rate_period is not None
    started: dict[str, int] = {}
    for task in tasks:
        started[task.concurrency_key] = started.get(task.concurrency_key, 0) + 1
    soonest: float | None = None
    for key in keys:
        running = by_key.get(key, 0) + started.get(key, 0)
        if rules.per_key_concurrency is not None and running >= rules.per_key_concurrency:
            continue
        window = key_windows.get(key, [])
        window = window + [max([now_ts, *window])] * started.get(key, 0)
        if len(window) < rules.key_rate_limit:
            continue
        at = window[len(window) - rules.key_rate_limit] + rules.key_rate_period
        soonest = at if soonest is None else min(soonest, at)
    return soonest


def _release_keys(unit_type: str, rules: QueueRules, key_room: dict[str, float], now: datetime) -> set[str]:
    """Put back, for each key with held-back tasks that has room again, as many of its most urgent
    held-back tasks as it has room for; a key with none left is no longer held. Returns the keys
    still holding tasks back."""
    still: set[str] = set()
    for key in rules.held_keys:
        room = key_room.get(key, _fresh_key_room(rules))
        if room <= 0:
            still.add(key)
            continue
        n = int(min(room, 100))
        if sql.release_held(unit_type, key, n, now) == n or sql.has_held(unit_type, key):
            still.add(key)  # more behind them, or some not due yet
    return still


def _fresh_key_room(rules: QueueRules) -> float:
    """The room of a key with nothing running and no recent starts."""
    limits = [n for n in (rules.per_key_concurrency, rules.key_rate_limit) if n is not None]
    return min(limits) if limits else math.inf


def _key_rooms(
    unit_type: str, rules: QueueRules, by_key: dict[str, int], now: datetime, now_ts: float
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """How many more tasks each key that has any running or recent starts may start now, and the
    recent per-key windows (to be appended to)."""
    rooms: dict[str, float] = {}
    if rules.per_key_concurrency is not None:
        for key, n in by_key.items():
            if key:
                rooms[key] = rules.per_key_concurrency - n
    windows: dict[str, list[float]] = {}
    if rules.key_rate_limit is not None and rules.key_rate_period is not None:
        since = now - timedelta(seconds=rules.key_rate_period)
        for key, starts in QueueKeyWindow.objects.filter(task_type=unit_type, last_start_at__gt=since).values_list(
            "concurrency_key", "starts"
        ):
            starts = [float(s) for s in starts]
            windows[key] = _window(starts, rules.key_rate_period, max([now_ts, *starts]))
            left = rules.key_rate_limit - len(windows[key])
            rooms[key] = min(rooms.get(key, math.inf), left)
    if rules.per_key_concurrency is not None:
        # A key with recent starts but nothing running: its concurrency room is the whole limit.
        rooms = {key: min(n, rules.per_key_concurrency) for key, n in rooms.items()}
    return rooms, windows


def _record_starts(
    unit_type: str,
    rules: QueueRules,
    window: list[float] | None,
    key_windows: dict[str, list[float]],
    tasks: list[Task],
    now: datetime,
    now_ts: float,
) -> None:
    """Append this claim's starts to the queue's and the keys' sliding-window logs (at most the
    limit's number of entries are kept: older ones can no longer hold a start back)."""
    if not tasks:
        return
    if window is not None and rules.rate_limit is not None:
        sql.save_queue_starts(unit_type, (window + [now_ts] * len(tasks))[-rules.rate_limit :])
    if rules.key_rate_limit is None:
        return
    started: dict[str, int] = {}
    for task in tasks:
        if task.concurrency_key:
            started[task.concurrency_key] = started.get(task.concurrency_key, 0) + 1
    if not started:
        return
    known = set(
        QueueKeyWindow.objects.filter(task_type=unit_type, concurrency_key__in=list(started)).values_list(
            "concurrency_key", flat=True
        )
    )
    limit = rules.key_rate_limit
    new = []
    for key, n in started.items():
        window = key_windows.get(key, [])
        starts = (window + [max([now_ts, *window])] * n)[-limit:]
        if key in known:
            QueueKeyWindow.objects.filter(task_type=unit_type, concurrency_key=key).update(
                starts=starts, last_start_at=now
            )
        else:
            new.append(QueueKeyWindow(task_type=unit_type, concurrency_key=key, starts=starts, last_start_at=now))
    if new:
        QueueKeyWindow.objects.bulk_create(new)
