"""Periodic jobs: plain functions of `now`, idempotent and safe when two run at once (rows are
taken with SKIP LOCKED and changed with compare-and-set conditions). Celery beat runs them through
one-line wrappers in `tasks.celery_jobs`; `manage.py runjob NAME` runs one by hand."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from taskhub import metrics
from tasks.actors import Actor
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.scheduling.dbretry import retry_on_lock_error
from tasks.scheduling.failover import fail_over_tasks
from tasks.states import ActorType, TaskStatus, can_transition
from tasks.transitions import LIVE_UNIT_STATUSES, fail_locked_for_timeout, new_history, record_history_bulk
from units.models import ExecutionUnit, UnitStatus

S = TaskStatus
UNIT_CHUNK = 500
BATCH = 1000
SWEEP_COUNTS = ("unitsOffline", "failedOver", "poisoned", "orphans")
assert can_transition(S.FAILED, S.PENDING, system=True)


def sweep_heartbeats(now: datetime) -> dict[str, int]:
    """Units silent for UNIT_HEARTBEAT_TIMEOUT -> OFFLINE; their RUNNING tasks fail over. So do
    RUNNING tasks that no unit holds, once nobody has reported on them for as long (`orphans`)."""
    totals = dict.fromkeys(SWEEP_COUNTS, 0)
    while True:
        counts = _sweep_chunk(now)
        for key, value in counts.items():
            totals[key] += value
        if counts["unitsOffline"] < UNIT_CHUNK and counts["orphans"] < BATCH:
            return totals


@retry_on_lock_error()
@transaction.atomic
def _sweep_chunk(now: datetime) -> dict[str, int]:
    """Up to UNIT_CHUNK silent units and up to BATCH tasks no unit holds, in one transaction: a
    failure anywhere leaves the chunk as it was."""
    units, orphans = _sweep_units(now), _sweep_orphans(now)
    return {key: units.get(key, 0) + orphans.get(key, 0) for key in SWEEP_COUNTS}


def _sweep_units(now: datetime) -> dict[str, int]:
    deadline = now - timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT)
    # Locking the unit rows orders us with heartbeats and claims: a unit that heartbeats while we
    # hold it waits, then finds itself OFFLINE and is told to abort the attempts it lost.
    dead = list(
        ExecutionUnit.objects.select_for_update(skip_locked=True)
        .filter(status__in=LIVE_UNIT_STATUSES, last_heartbeat_at__lt=deadline)
        .order_by("last_heartbeat_at")
        .values_list("id", flat=True)[:UNIT_CHUNK]
    )
    if not dead:
        return {}
    ExecutionUnit.objects.filter(id__in=dead).update(status=UnitStatus.OFFLINE)
    counts = fail_over_tasks(
        Q(unit_id__in=dead),
        reason=f"unit silent for more than {settings.UNIT_HEARTBEAT_TIMEOUT:g}s (heartbeat timeout): marked OFFLINE",
        actor=Actor.system("sweep_heartbeats"),
        now=now,
    )
    return {"unitsOffline": len(dead), **counts}


def _sweep_orphans(now: datetime) -> dict[str, int]:
    """Fail over up to BATCH RUNNING tasks that no unit holds and nobody reports on: those whose
    lease ran out (started with PUT status: `Task.lease_expires_at`), and those whose unit row was
    deleted without a deregistration (SET_NULL left them neither a unit nor a lease). Two polls,
    each on its index; the rows stay locked (SKIP LOCKED: a second sweeper takes others)."""
    running = Task.objects.select_for_update(skip_locked=True).filter(status=S.RUNNING)
    # Past the lease, not at it: like a unit, a task is lost when silent for more than the timeout.
    expired = running.filter(lease_expires_at__lt=now).order_by("lease_expires_at")
    ids = list(expired.values_list("id", flat=True)[:BATCH])
    if len(ids) < BATCH:
        unitless = running.filter(unit__isnull=True, lease_expires_at__isnull=True).order_by("id")
        ids += unitless.values_list("id", flat=True)[: BATCH - len(ids)]
    if not ids:
        return {}
    # Who put each task in RUNNING (its newest RUNNING history row) says why nobody reports on it.
    started = {
        task_id: (actor_type, actor, unit_id)
        for task_id, actor_type, actor, unit_id in TaskStatusHistory.objects.filter(
            task_id__in=ids, to_status=S.RUNNING
        )
        .order_by("task_id", "id")
        .values_list("task_id", "actor_type", "actor", "unit_id")
    }
    timeout = settings.UNIT_HEARTBEAT_TIMEOUT
    reasons = {}
    for task_id in ids:
        actor_type, actor, unit_id = started.get(task_id, ("", "someone", None))
        reasons[task_id] = (
            f"its unit {unit_id} was removed without deregistering; no unit holds it"
            if actor_type == ActorType.UNIT
            else f"started by {actor} without a unit; nobody reported on it for {timeout:g}s"
        )
    counts = fail_over_tasks(
        Q(id__in=ids),
        reason="RUNNING with no unit reporting on it",
        reasons=reasons,
        actor=Actor.system("sweep_heartbeats"),
        now=now,
    )
    return {"orphans": counts["failedOver"] + counts["poisoned"], **counts}


MAX_BATCHES = 100  # per run; a backlog larger than this waits for the next run


def _drain(batch: Callable[[datetime], int], now: datetime) -> int:
    """Run `batch` (one transaction each) until a short batch says the backlog is empty."""
    total = 0
    for _ in range(MAX_BATCHES):
        done = batch(now)
        total += done
        if done < BATCH:
            break
    return total


def move_due_retries(now: datetime) -> dict[str, int]:
    """FAILED tasks whose backoff has elapsed -> PENDING."""
    return {"retried": _drain(_retry_batch, now)}


@retry_on_lock_error()
@transaction.atomic
def _retry_batch(now: datetime) -> int:
    rows = list(
        Task.objects.select_for_update(skip_locked=True)
        .filter(status=S.FAILED, next_retry_at__lte=now)
        .order_by("next_retry_at")
        .values_list("id", "attempt", "unit_id", "retry_count", "max_retries")[:BATCH]
    )
    if not rows:
        return 0
    ids = [r[0] for r in rows]
    Task.objects.filter(id__in=ids, status=S.FAILED).update(
        status=S.PENDING,
        next_retry_at=None,
        available_at=now,
        finished_at=None,
        updated_at=now,
    )
    actor = Actor.system("move_due_retries")
    record_history_bulk(
        [
            new_history(
                task_id,
                attempt,
                unit_id,
                S.FAILED,
                S.PENDING,
                actor=actor,
                now=now,
                reason=f"automatic retry {retries}/{max_retries} after backoff",
            )
            for task_id, attempt, unit_id, retries, max_retries in rows
        ]
    )
    metrics.record_retries(len(rows))
    return len(rows)


def fail_timeouts(now: datetime) -> dict[str, int]:
    """RUNNING tasks past timeoutSeconds fail (retryable)."""
    return {"timedOut": _drain(_timeout_batch, now)}


@retry_on_lock_error()
@transaction.atomic
def _timeout_batch(now: datetime) -> int:
    tasks = list(
        Task.objects.select_for_update(skip_locked=True)
        .filter(status=S.RUNNING, timeout_at__lte=now)
        .order_by("timeout_at")[:BATCH]
    )
    for task in tasks:
        task.pending_command = "abort"
        task.save(update_fields=["pending_command"])
        fail_locked_for_timeout(task, now=now)
    return len(tasks)


def purge_old_logs(now: datetime) -> dict[str, int]:
    """Delete execution logs older than TASK_LOG_RETENTION_DAYS, in batches."""
    cutoff = now - timedelta(days=settings.TASK_LOG_RETENTION_DAYS)
    deleted = 0
    while True:
        ids = list(TaskExecutionLog.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:BATCH])
        if not ids:
            return {"deleted": deleted}
        deleted += TaskExecutionLog.objects.filter(id__in=ids).delete()[0]


JOBS: dict[str, Callable[[datetime], dict[str, Any]]] = {
    "sweep_heartbeats": sweep_heartbeats,
    "move_due_retries": move_due_retries,
    "fail_timeouts": fail_timeouts,
    "purge_old_logs": purge_old_logs,
}
