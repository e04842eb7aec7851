"""Model-based test of the scheduler: a Hypothesis state machine drives the real transition and
scheduling functions (create, claim, heartbeat, unit reports with live and stale attempts, the
sweeper, retry mover and timeout job on a moving fake clock, cancel, pause, resume, retry,
redrive, unit restarts, tasks a client starts without a unit: their lease, renewed by the
client's log lines, and their requeue; and queue settings: pause, concurrency limits per queue and
per concurrency key, rate limits, changed at any time, with I8 checked at every claim) against a
small in-memory model of what each step must do, and checks
the database against the model and the invariants I1-I7 after every step.

Sizes: TASKHUB_MODEL_EXAMPLES (default 40) examples of up to TASKHUB_MODEL_STEPS (default 40)
steps. A longer run: `TASKHUB_MODEL_EXAMPLES=1000 TASKHUB_MODEL_STEPS=80 make test
PYTEST_ARGS=tests/test_model_based.py`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
import time_machine
from django.conf import settings as django_settings
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict
from taskhub.base.viewer import OPERATOR
from tasks import fencing, services
from tasks.jobs import fail_timeouts, move_due_retries
from tasks.models import QueueChange, QueueSettings, Task, TaskExecutionLog, TaskStatusHistory
from tasks.services import task_append_logs
from tasks.states import TERMINAL, TaskStatus, can_transition
from tasks.transitions import core, creation, reports, verbs
from tests import factories
from units.claim import claim_tasks
from units.models import ExecutionUnit, UnitStatus
from units.queues import update_queue_settings
from units.services import list_grace, unit_heartbeat, unit_register
from units.sweeper import sweep_heartbeats

S = TaskStatus
pytestmark = pytest.mark.django_db

HEARTBEAT_TIMEOUT = 30
FAILOVER_CAP = 2
BACKOFF_BASE, BACKOFF_MAX = 5.0, 20.0
T0 = datetime(2030, 1, 1, tzinfo=UTC)
CLIENT = Actor.api_key("model-client")
UNITS = {"ua1": ("A", 2), "ua2": ("A", 1), "ub1": ("B", 2)}  # id -> (unit type, capacity)
EXAMPLES = int(os.environ.get("TASKHUB_MODEL_EXAMPLES", "40"))
STEPS = int(os.environ.get("TASKHUB_MODEL_STEPS", "40"))


@dataclass
class MTask:
    """What the database must hold for one task."""

    id: int
    task_type: str
    priority: int
    max_retries: int
    timeout: int | None
    available_at: datetime
    status: str = S.PENDING
    attempt: int = 0
    unit: str | None = None  # Task.unit_id: the holder while RUNNING, the last holder after
    retry_count: int = 0
    failover_count: int = 0
    next_retry_at: datetime | None = None
    timeout_at: datetime | None = None
    started_at: datetime | None = None
    lease: datetime | None = None  # Task.lease_expires_at: only while RUNNING with no unit
    command: str = ""
    key: str = ""  # Task.concurrency_key
    failed_attempts: set[tuple[str | None, int]] = field(default_factory=set)  # FAILED history (unit, attempt)
    accepted_results: int = 0  # COMPLETED reports and requests that were accepted
    unique_key: str | None = None  # created with uniqueKey (active scope): held until terminal

    def live_for(self, unit_id: str, attempt: int) -> bool:
        return self.status == S.RUNNING and self.unit == unit_id and self.attempt == attempt


@dataclass
class MUnit:
    id: str
    task_type: str
    capacity: int
    status: str = UnitStatus.ONLINE
    last_heartbeat: datetime = T0
    # The attempts the unit's process believes it runs (a zombie keeps stale ones).
    believes: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class MQueue:
    """A queue's settings (tasks.models.QueueSettings) and the starts its rate limit counts."""

    paused: bool = False
    max_running: int | None = None
    per_key: int | None = None
    rate: tuple[int, int] | None = None  # (limit, period seconds)
    starts: list[datetime] = field(default_factory=list)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        TaskExecutionLog.objects.all().delete()
        TaskStatusHistory.objects.all().delete()
        Task.objects.all().delete()
        ExecutionUnit.objects.all().delete()
        self.now = T0
        self.tasks: dict[int, MTask] = {}
        self.units: dict[str, MUnit] = {}
        self.queues: dict[str, MQueue] = {}
        self.created = 0
        QueueSettings.objects.all().delete()
        QueueChange.objects.all().delete()

    @initialize()
    def make_units(self) -> None:
        for unit_id, (task_type, capacity) in UNITS.items():
            factories.unit(unit_id, unit_type=task_type, capacity=capacity, now=self.now)
            self.units[unit_id] = MUnit(unit_id, task_type, capacity, last_heartbeat=self.now)

    # --- helpers ------------------------------------------------------------------------

    def _snapshot(self) -> Any:
        tasks = list(Task.objects.order_by("id").values())
        history = TaskStatusHistory.objects.count()
        logs = TaskExecutionLog.objects.count()
        units = list(ExecutionUnit.objects.order_by("id").values("id", "status", "last_heartbeat_at"))
        return tasks, history, logs, units

    def _fail_over(self, tasks: list[MTask]) -> None:
        """RUNNING -> PENDING (failover), or FAILED as poison past the cap."""
        for t in tasks:
            t.failover_count += 1
            t.timeout_at = None
            t.lease = None
            t.command = "abort"
            if t.failover_count <= FAILOVER_CAP:
                t.status = S.PENDING
                t.available_at = self.now
            else:
                t.status = S.FAILED
                t.next_retry_at = None
                t.failed_attempts.add((t.unit, t.attempt))

    def _running_of(self, unit_id: str) -> list[MTask]:
        return [t for t in self.tasks.values() if t.status == S.RUNNING and t.unit == unit_id]

    def _fail(self, t: MTask, *, retryable: bool) -> None:
        """A failed attempt (a unit's report or the timeout job): retry later or the dead set."""
        will_retry = retryable and t.retry_count < t.max_retries
        t.status = S.FAILED
        t.timeout_at = None
        t.lease = None
        t.next_retry_at = None
        t.failed_attempts.add((t.unit, t.attempt))
        if will_retry:
            t.retry_count += 1
            row = Task.objects.get(pk=t.id)
            assert row.next_retry_at is not None
            ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (t.retry_count - 1))
            wait = (row.next_retry_at - self.now).total_seconds()
            assert ceiling / 2 - 1e-3 <= wait <= ceiling + 1e-3, (wait, ceiling)
            t.next_retry_at = row.next_retry_at

    def _to_pending(self, t: MTask) -> None:
        t.status = S.PENDING
        t.available_at = self.now
        t.next_retry_at = None
        t.timeout_at = None
        t.lease = None

    def _orphans(self) -> list[MTask]:
        """RUNNING tasks that no unit holds whose lease has run out."""
        return [
            t
            for t in self.tasks.values()
            if t.status == S.RUNNING and t.unit is None and t.lease is not None and t.lease < self.now
        ]

    # --- rules: clients -------------------------------------------------------------------

    @rule(
        task_type=st.sampled_from(["A", "A", "B"]),
        priority=st.integers(-2, 2),
        max_retries=st.integers(0, 2),
        timeout=st.sampled_from([None, None, 20, 90]),
        key=st.sampled_from(["", "", "k1", "k2"]),
    )
    def create(self, task_type: str, priority: int, max_retries: int, timeout: int | None, key: str) -> None:
        self.created += 1
        task = creation.create_task(
            actor=CLIENT,
            now=self.now,
            name=f"model {self.created}",
            task_type=task_type,
            priority=priority,
            config={},
            max_retries=max_retries,
            timeout_seconds=timeout,
            concurrency_key=key,
        )
        self.tasks[task.pk] = MTask(task.pk, task_type, priority, max_retries, timeout, available_at=self.now, key=key)

    @rule(
        task_type=st.sampled_from(["A", "B"]),
        paused=st.booleans(),
        max_running=st.sampled_from([None, 1, 2]),
        per_key=st.sampled_from([None, 1]),
        rate=st.sampled_from([None, None, (2, 10), (1, 30)]),
    )
    def set_queue(
        self, task_type: str, paused: bool, max_running: int | None, per_key: int | None, rate: tuple[int, int] | None
    ) -> None:
        """An operator sets a queue's pause and limits (PATCH /queues/{type})."""
        update_queue_settings(
            task_type,
            {
                "paused": paused,
                "max_running": max_running,
                "per_key_concurrency": per_key,
                "rate_limit": rate[0] if rate else None,
                "rate_period": rate[1] if rate else None,
            },
            viewer=OPERATOR,
            actor=Actor.operator("model-op"),
            owner_id=None,
            now=self.now,
        )
        q = self.queues.setdefault(task_type, MQueue())
        q.paused, q.max_running, q.per_key, q.rate = paused, max_running, per_key, rate

    @rule(key=st.sampled_from(["u1", "u2"]), task_type=st.sampled_from(["A", "B"]))
    def create_unique(self, key: str, task_type: str) -> None:
        """A create with a uniqueKey: the holder (a task with the key, not terminal) is returned,
        else a new task takes the key."""
        holder = [t for t in self.tasks.values() if t.unique_key == key and t.status not in TERMINAL]
        assert len(holder) <= 1, f"two live tasks hold {key}"
        self.created += 1
        data = {"name": f"unique {self.created}", "task_type": task_type, "priority": 0, "config": {}}
        data |= {"max_retries": 1, "unique_key": key}
        with time_machine.travel(self.now, tick=False):
            task, outcome = services.task_submit(
                owner=None, actor=CLIENT, data=data, idempotency_key=None, fingerprint=""
            )
        if holder:
            assert (task.pk, outcome) == (holder[0].id, services.UNIQUE_EXISTING)
            return
        assert outcome == services.CREATED
        self.tasks[task.pk] = MTask(task.pk, task_type, 0, 1, None, available_at=self.now, unique_key=key)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data(), op=st.sampled_from(["cancel", "pause", "resume", "retry", "complete", "fail", "start"]))
    def client_transition(self, data: st.DataObject, op: str) -> None:
        t = self.tasks[data.draw(st.sampled_from(sorted(self.tasks)), label="task")]
        allowed = {
            "cancel": t.status in (S.PENDING, S.RUNNING, S.PAUSED, S.FAILED),
            "pause": t.status in (S.PENDING, S.RUNNING),
            # A RUNNING task that no unit holds can be requeued; one a (live) unit holds cannot.
            "resume": t.status in (S.PAUSED, S.FAILED) or (t.status == S.RUNNING and t.unit is None),
            "retry": t.status == S.FAILED,
            "complete": t.status == S.RUNNING,
            "fail": t.status in (S.RUNNING, S.PAUSED),
            "start": t.status == S.PENDING,
        }[op]
        before = self._snapshot()
        call = {
            "cancel": lambda: verbs.change_status(t.id, S.CANCELLED, actor=CLIENT, now=self.now),
            "pause": lambda: verbs.change_status(t.id, S.PAUSED, actor=CLIENT, now=self.now),
            "resume": lambda: verbs.change_status(t.id, S.PENDING, actor=CLIENT, now=self.now),
            "retry": lambda: verbs.retry_task(t.id, actor=CLIENT, now=self.now),
            "complete": lambda: verbs.complete_task(t.id, actor=CLIENT, now=self.now, result={"by": "client"}),
            "fail": lambda: verbs.change_status(t.id, S.FAILED, actor=CLIENT, reason="no", now=self.now),
            "start": lambda: verbs.change_status(t.id, S.RUNNING, actor=CLIENT, now=self.now),
        }[op]
        if not allowed:
            with pytest.raises(Conflict):
                call()
            assert self._snapshot() == before, "a refused request changed something"
            return
        call()
        held = t.status == S.RUNNING and t.unit is not None
        if t.status == S.RUNNING:
            t.lease = None  # every way out of RUNNING ends the lease
        if op == "cancel":
            if held:
                t.command = "cancel"
            t.status, t.timeout_at, t.next_retry_at = S.CANCELLED, None, None
        elif op == "pause":
            if t.status == S.RUNNING:
                if held:
                    t.command = "pause"
                self._to_pending(t)
            t.status = S.PAUSED
        elif op in ("resume", "retry"):
            if t.status == S.FAILED:
                t.retry_count = t.failover_count = 0
            self._to_pending(t)
        elif op == "complete":
            if held:
                t.command = "abort"
            t.status, t.timeout_at, t.next_retry_at = S.COMPLETED, None, None
            t.accepted_results += 1
        elif op == "fail":
            if held:
                t.command = "abort"
            t.status, t.timeout_at, t.next_retry_at = S.FAILED, None, None
            t.failed_attempts.add((t.unit, t.attempt))
        elif op == "start":
            self._started_by_client(t)

    def _started_by_client(self, t: MTask) -> None:
        t.status, t.unit, t.attempt, t.command, t.started_at = S.RUNNING, None, t.attempt + 1, "", self.now
        t.timeout_at = self.now + timedelta(seconds=t.timeout) if t.timeout else None
        t.lease = self.now + timedelta(seconds=HEARTBEAT_TIMEOUT)

    # The seed's walkthrough (a client runs the task itself) and its way back, as rules of their own
    # so that sequences reach them often: start, log, requeue, or let the lease run out.

    @precondition(lambda self: any(t.status == S.PENDING for t in self.tasks.values()))
    @rule(data=st.data())
    def client_start(self, data: st.DataObject) -> None:
        pending = sorted(t.id for t in self.tasks.values() if t.status == S.PENDING)
        t = self.tasks[data.draw(st.sampled_from(pending), label="pending task")]
        verbs.change_status(t.id, S.RUNNING, actor=CLIENT, now=self.now)
        self._started_by_client(t)

    @precondition(lambda self: any(t.status == S.RUNNING for t in self.tasks.values()))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        """PUT status PENDING on a RUNNING task: allowed when no unit holds it, refused when one does."""
        running = sorted(t.id for t in self.tasks.values() if t.status == S.RUNNING)
        t = self.tasks[data.draw(st.sampled_from(running), label="running task")]
        before = self._snapshot()
        if t.unit is not None:  # every unit of the model that holds a task is live
            with pytest.raises(core.IllegalTransition):
                verbs.change_status(t.id, S.PENDING, actor=CLIENT, now=self.now)
            assert self._snapshot() == before, "a refused requeue changed something"
            return
        verbs.change_status(t.id, S.PENDING, actor=CLIENT, now=self.now)
        self._to_pending(t)  # not a failover: the budget stays

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def client_log(self, data: st.DataObject) -> None:
        """A client's log lines: its report on a task it runs itself, which renews the lease."""
        t = self.tasks[data.draw(st.sampled_from(sorted(self.tasks)), label="task")]
        task_append_logs(
            t.id, [{"level": "INFO", "message": "client line"}], actor=CLIENT, queryset=Task.objects.all(), now=self.now
        )
        if t.lease is not None:
            t.lease = self.now + timedelta(seconds=HEARTBEAT_TIMEOUT)

    @rule()
    def redrive(self) -> None:
        """Bulk retry of the dead set, as `POST /tasks/redrive` does it."""
        failed = [t for t in self.tasks.values() if t.status == S.FAILED]
        for t in failed:
            verbs.retry_task(t.id, actor=CLIENT, reason="redrive", now=self.now)
            t.retry_count = t.failover_count = 0
            self._to_pending(t)

    # --- rules: units ---------------------------------------------------------------------

    @rule(unit_id=st.sampled_from(sorted(UNITS)), wanted=st.integers(1, 3))
    def claim(self, unit_id: str, wanted: int) -> None:
        u = self.units[unit_id]
        claimed = claim_tasks(unit_id, wanted, now=self.now)
        expected: list[MTask] = []
        if u.status not in (UnitStatus.OFFLINE, UnitStatus.MAINTENANCE):
            running = len(self._running_of(unit_id))
            room = min(wanted, u.capacity - running)
            ready = [
                t
                for t in self.tasks.values()
                if t.status == S.PENDING and t.task_type == u.task_type and t.available_at <= self.now
            ]
            expected = self._queue_pick(u.task_type, sorted(ready, key=lambda t: (-t.priority, t.id)), room)
            u.status = UnitStatus.BUSY if running + len(expected) >= u.capacity else UnitStatus.ONLINE
        assert [(c.pk, c.attempt) for c in claimed] == [(t.id, t.attempt + 1) for t in expected]
        for t in expected:
            t.status, t.unit, t.attempt, t.command, t.next_retry_at = S.RUNNING, unit_id, t.attempt + 1, "", None
            t.timeout_at = self.now + timedelta(seconds=t.timeout) if t.timeout else None
            t.started_at = self.now
            # Like taskhub-unit, a unit that gets a newer attempt of a task drops the older one.
            u.believes = {(i, a) for i, a in u.believes if i != t.id}
            u.believes.add((t.id, t.attempt))

    def _queue_pick(self, task_type: str, ready: list[MTask], room: int) -> list[MTask]:
        """What the claim must take from `ready` (in claim order) within `room` and the queue's
        settings (none: the first `room`), checking I8 on the way: a claim never starts a task past
        a limit."""
        q = self.queues.get(task_type)
        if q is None:
            return ready[: max(room, 0)]
        if q.paused or room <= 0:
            return []
        running = [t for t in self.tasks.values() if t.status == S.RUNNING and t.task_type == task_type]
        want = room
        if q.max_running is not None:
            want = min(want, q.max_running - len(running))
        if q.rate is not None:
            limit, period = q.rate
            q.starts = [s for s in q.starts if s > self.now - timedelta(seconds=period)]
            want = min(want, limit - len(q.starts))
        by_key = Counter(t.key for t in running if t.key)
        chosen: list[MTask] = []
        for t in ready:
            if len(chosen) >= want:
                break
            if t.key and q.per_key is not None and by_key[t.key] >= q.per_key:
                continue
            by_key[t.key] += 1
            chosen.append(t)
        # I8: what this claim starts keeps every limit (a limit lowered below the running count
        # admits nothing until the count is under it).
        if chosen and q.max_running is not None:
            assert len(running) + len(chosen) <= q.max_running, "I8: queue concurrency exceeded"
        if chosen and q.per_key is not None:
            assert all(n <= q.per_key for k, n in by_key.items() if k), "I8: key concurrency exceeded"
        if q.rate is not None:
            q.starts += [self.now] * len(chosen)
            assert len(q.starts) <= q.rate[0], "I8: rate limit exceeded"
        return chosen

    @rule(
        data=st.data(),
        unit_id=st.sampled_from(sorted(UNITS)),
        mode=st.sampled_from(["list", "list", "list", "drop-one", "no-list"]),
        obeys=st.booleans(),
    )
    def heartbeat(self, data: st.DataObject, unit_id: str, mode: str, obeys: bool) -> None:
        u = self.units[unit_id]
        believed = data.draw(st.permutations(sorted(u.believes)), label="listed order")
        if mode == "drop-one" and believed:
            believed = believed[1:]
        listed = None if mode == "no-list" else [{"id": i, "attempt": a} for i, a in believed]
        reply = unit_heartbeat(unit_id, current_load=len(believed), metadata=None, tasks=listed, now=self.now)

        live = self._running_of(unit_id)
        if listed is None:
            live_set = {(t.id, t.attempt) for t in live}
            expected_commands = sorted(
                (t.id, t.attempt, t.command)
                for t in self.tasks.values()
                if t.unit == unit_id and t.status != S.RUNNING and t.command
            )
            lost: list[MTask] = []
        else:
            listed_attempts: dict[int, set[int]] = {}
            for item in listed:
                listed_attempts.setdefault(item["id"], set()).add(item["attempt"])
            # A lease younger than the list grace may not have reached the unit yet: not lost.
            grace_start = self.now - timedelta(seconds=list_grace())
            young = [t for t in live if t.id not in listed_attempts and t.started_at and t.started_at > grace_start]
            lost = [t for t in live if t.attempt not in listed_attempts.get(t.id, set()) and t not in young]
            self._fail_over(lost)
            live_set = {(t.id, t.attempt) for t in live if t not in lost}
            stale = sorted({(i["id"], i["attempt"]) for i in listed} - live_set)
            expected_commands = []
            for task_id, attempt in stale:
                t = self.tasks[task_id]
                held_last = t.unit == unit_id and t.attempt == attempt
                expected_commands.append((task_id, attempt, t.command if held_last and t.command else "abort"))
            stale_ids = {task_id for task_id, _ in stale}
            for t in self.tasks.values():
                if t.unit == unit_id and t.status != S.RUNNING and t.command and t.id not in stale_ids:
                    t.command = ""
        got_commands = sorted((c["taskId"], c["attempt"], c["command"]) for c in reply["commands"])
        assert got_commands == sorted(expected_commands), (got_commands, expected_commands)
        assert sorted(reply["failedOver"]) == sorted(t.id for t in lost)
        u.last_heartbeat = self.now
        if u.status in (UnitStatus.OFFLINE, UnitStatus.ONLINE, UnitStatus.BUSY):
            u.status = UnitStatus.BUSY if len(live_set) >= u.capacity else UnitStatus.ONLINE
        if obeys:  # a well-behaved unit drops what it was told to stop; a zombie keeps going
            u.believes -= {(c[0], c[1]) for c in got_commands}
            u.believes -= {(t.id, t.attempt) for t in lost}

    @rule(unit_id=st.sampled_from(sorted(UNITS)))
    def restart_unit(self, unit_id: str) -> None:
        """The unit's process restarts and registers again: it holds none of its attempts."""
        u = self.units[unit_id]
        unit_register(
            owner=None,
            data={"id": unit_id, "unit_type": u.task_type, "unit_name": unit_id, "capacity": u.capacity},
            now=self.now,
        )
        self._fail_over(self._running_of(unit_id))
        u.status, u.last_heartbeat, u.believes = UnitStatus.ONLINE, self.now, set()

    @precondition(lambda self: self.tasks)
    @rule(
        data=st.data(),
        unit_id=st.sampled_from(sorted(UNITS)),
        kind=st.sampled_from(["complete", "complete", "fail", "fail-final", "progress", "log"]),
        pick=st.sampled_from(["believed", "believed", "believed", "any"]),
    )
    def report(self, data: st.DataObject, unit_id: str, kind: str, pick: str) -> None:
        """A unit reports for an attempt it believes it runs (live or stale), or for any attempt."""
        u = self.units[unit_id]
        if pick == "believed" and u.believes:
            task_id, attempt = data.draw(st.sampled_from(sorted(u.believes)), label="believed attempt")
        else:
            task_id = data.draw(st.sampled_from(sorted(self.tasks)), label="task")
            attempt = data.draw(st.integers(0, self.tasks[task_id].attempt + 1), label="attempt")
        t = self.tasks[task_id]
        live = t.live_for(unit_id, attempt)
        before = self._snapshot()

        def call() -> Any:
            if kind == "complete":
                return reports.complete_attempt(
                    task_id, unit_id=unit_id, attempt=attempt, result={"unit": unit_id}, now=self.now
                )
            if kind in ("fail", "fail-final"):
                return reports.fail_attempt(
                    task_id, unit_id=unit_id, attempt=attempt, error="boom", retryable=kind == "fail", now=self.now
                )
            if kind == "progress":
                return reports.report_progress(task_id, unit_id=unit_id, attempt=attempt, progress=50, now=self.now)
            return task_append_logs(
                task_id,
                [{"level": "INFO", "message": "line"}],
                actor=Actor.unit(unit_id),
                queryset=Task.objects.all(),
                attempt=attempt,
                now=self.now,
            )

        repeat = t.unit == unit_id and t.attempt == attempt
        if kind == "complete":
            repeat = repeat and t.status == S.COMPLETED
        elif kind in ("fail", "fail-final"):
            repeat = repeat and t.status in (S.FAILED, S.PENDING, S.RUNNING) and (unit_id, attempt) in t.failed_attempts
        else:
            repeat = False
        if repeat:
            _, accepted = call()
            assert accepted is False
            assert self._snapshot() == before, "a repeated report changed something"
        elif not live:
            with pytest.raises(fencing.StaleAttempt):
                call()
            assert self._snapshot() == before, "a stale report changed something"  # fencing
        else:
            result = call()
            if kind == "complete":
                assert result[1] is True
                t.status, t.timeout_at, t.next_retry_at = S.COMPLETED, None, None
                t.accepted_results += 1
            elif kind in ("fail", "fail-final"):
                assert result[1] is True
                self._fail(t, retryable=kind == "fail")
        if kind in ("complete", "fail", "fail-final"):
            u.believes.discard((task_id, attempt))

    # --- rules: the clock and the periodic jobs -------------------------------------------

    @rule(seconds=st.sampled_from([1, 5, 10, 20, 29, 31, 45]))
    def advance_clock(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule()
    def sweep(self) -> None:
        deadline = self.now - timedelta(seconds=HEARTBEAT_TIMEOUT)
        kept_before = {
            (t.id, t.attempt)
            for u in self.units.values()
            if u.last_heartbeat >= deadline
            for t in self._running_of(u.id)
        }
        result = sweep_heartbeats(self.now)
        dead = [
            u
            for u in self.units.values()
            if u.status in (UnitStatus.ONLINE, UnitStatus.BUSY, UnitStatus.MAINTENANCE) and u.last_heartbeat < deadline
        ]
        orphans = self._orphans()
        lost = [t for u in dead for t in self._running_of(u.id)] + orphans
        poisoned = sum(1 for t in lost if t.failover_count + 1 > FAILOVER_CAP)
        self._fail_over(lost)
        for u in dead:
            u.status = UnitStatus.OFFLINE
        assert result == {
            "unitsOffline": len(dead),
            "failedOver": len(lost) - poisoned,
            "poisoned": poisoned,
            "orphans": len(orphans),
        }
        # I1: after a sweep, no task is RUNNING with no unit past its lease.
        stranded = Task.objects.filter(status=S.RUNNING, unit__isnull=True).exclude(lease_expires_at__gte=self.now)
        assert list(stranded.values_list("id", flat=True)) == [], "I1: a task no unit holds outlived its lease"
        # I5: after a sweep, nothing is held by a unit silent for longer than the timeout.
        silent = {u.id for u in self.units.values() if u.last_heartbeat < deadline}
        held = Task.objects.filter(status=S.RUNNING, unit_id__in=silent).values_list("id", flat=True)
        assert list(held) == [], "I5: a silent unit's task is still leased after the sweep"
        # I6: a unit that heartbeats within the timeout keeps every task it holds.
        still = set(Task.objects.filter(status=S.RUNNING).values_list("id", "attempt"))
        assert kept_before <= still, f"I6: taken from a live unit: {sorted(kept_before - still)}"

    @rule()
    def move_retries(self) -> None:
        due = [
            t for t in self.tasks.values() if t.status == S.FAILED and t.next_retry_at and t.next_retry_at <= self.now
        ]
        assert move_due_retries(self.now) == {"retried": len(due)}
        for t in due:
            self._to_pending(t)

    @rule()
    def timeouts(self) -> None:
        due = [t for t in self.tasks.values() if t.status == S.RUNNING and t.timeout_at and t.timeout_at <= self.now]
        assert fail_timeouts(self.now) == {"timedOut": len(due)}
        for t in due:
            t.command = "abort"
            self._fail(t, retryable=True)

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def database_matches_the_model(self) -> None:
        rows = {r["id"]: r for r in Task.objects.values()}
        # I1: nothing lost: every task created is still there.
        assert set(rows) == set(self.tasks), "I1: a task disappeared"
        for task_id, t in self.tasks.items():
            r = rows[task_id]
            got = (r["status"], r["attempt"], r["retry_count"], r["failover_count"], r["pending_command"])
            want = (t.status, t.attempt, t.retry_count, t.failover_count, t.command)
            assert got == want, f"task {task_id}: db {got} != model {want}"
            assert r["unit_id"] == t.unit, (task_id, r["unit_id"], t.unit)
            assert r["next_retry_at"] == t.next_retry_at, task_id
            assert r["timeout_at"] == t.timeout_at, task_id
            assert r["lease_expires_at"] == t.lease, (task_id, r["lease_expires_at"], t.lease)
            if t.status == S.PENDING:
                assert r["available_at"] == t.available_at, task_id
            if t.status == S.COMPLETED:
                assert r["progress"] == 100
            # A uniqueKey is held (its slot set) exactly while its task is not terminal.
            assert (r["unique_slot"] is not None) == (t.unique_key is not None and t.status not in TERMINAL), task_id
        units = dict(ExecutionUnit.objects.values_list("id", "status"))
        assert units == {u.id: u.status for u in self.units.values()}

    @invariant()
    def invariants_hold(self) -> None:
        history: dict[int, list[tuple[str | None, str, int]]] = {}
        for task_id, source, target, attempt in TaskStatusHistory.objects.order_by("id").values_list(
            "task_id", "from_status", "to_status", "attempt"
        ):
            history.setdefault(task_id, []).append((source, target, attempt))
        statuses = dict(Task.objects.values_list("id", "status"))
        for task_id, t in self.tasks.items():
            rows = history.get(task_id, [])
            # I7: the history is a gap-free chain from creation to the current status.
            assert rows and rows[0][:2] == (None, S.PENDING), f"I7: task {task_id} history starts {rows[:1]}"
            for prev, row in pairwise(rows):
                assert row[0] == prev[1], f"I7: task {task_id} history gap {prev} -> {row}"
                assert can_transition(row[0] or "", row[1], system=True), f"I7: illegal move {row}"
            assert rows[-1][1] == statuses[task_id], f"I7: task {task_id} history ends elsewhere"
            # I2: each attempt is handed out once, attempts only grow.
            starts = [a for _, target, a in rows if target == S.RUNNING]
            assert starts == sorted(set(starts)), f"I2: task {task_id} attempts {starts}"
            assert starts == list(range(1, len(starts) + 1)), f"I2: task {task_id} attempts {starts}"
            # I3: at most one accepted result.
            assert sum(1 for _, target, _ in rows if target == S.COMPLETED) <= 1, f"I3: task {task_id}"
            assert t.accepted_results <= 1, f"I3: task {task_id} accepted {t.accepted_results} results"
            # I4: the automatic budgets are bounded.
            assert t.retry_count <= t.max_retries, f"I4: task {task_id} retries"
            assert t.failover_count <= FAILOVER_CAP + 1, f"I4: task {task_id} failovers"
        # I2 across units: no two units hold the same task, and no unit over its capacity.
        holders = Counter(Task.objects.filter(status=S.RUNNING, unit__isnull=False).values_list("unit_id", flat=True))
        for unit_id, n in holders.items():
            assert n <= self.units[unit_id].capacity, f"unit {unit_id} holds {n} tasks"

    def teardown(self) -> None:
        """I1 after the work drains: every task is terminal or visibly waiting, none is RUNNING (held
        by a unit that stopped, or by nobody), and the waiting ones can be claimed or retried."""
        if not self.units:
            return
        self.now += timedelta(seconds=HEARTBEAT_TIMEOUT + 1)
        sweep_heartbeats(self.now)
        self.now += timedelta(seconds=BACKOFF_MAX + 1)
        move_due_retries(self.now)
        for task in Task.objects.all():
            assert task.status in TERMINAL or task.status in (S.PENDING, S.PAUSED, S.FAILED), (
                f"I1: task {task.pk} is {task.status} on {task.unit_id} after the drain"
            )
            if task.status == S.PENDING:
                assert task.available_at <= self.now
            if task.status == S.FAILED:
                assert task.next_retry_at is None  # automatic retries all moved; the rest is the dead set


@pytest.fixture
def model_settings(settings: Any) -> None:
    settings.UNIT_HEARTBEAT_TIMEOUT = HEARTBEAT_TIMEOUT
    settings.UNIT_HEARTBEAT_INTERVAL = HEARTBEAT_TIMEOUT / 3
    settings.TASK_MAX_FAILOVER_COUNT = FAILOVER_CAP
    settings.TASK_RETRY_BACKOFF_BASE = BACKOFF_BASE
    settings.TASK_RETRY_BACKOFF_MAX = BACKOFF_MAX
    settings.TASK_MAX_LOG_ENTRIES = 10_000


def test_scheduler_keeps_the_invariants_under_any_sequence_of_operations(model_settings: None) -> None:
    run_state_machine_as_test(
        SchedulerMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            print_blob=True,
            database=DirectoryBasedExampleDatabase(django_settings.BASE_DIR / "var" / "hypothesis"),
        ),
    )
