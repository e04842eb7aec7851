"""Taking RUNNING tasks back from units that lost them, set-wise.

RUNNING -> PENDING (failover: does not use up retries), or RUNNING -> FAILED as poison once a task
has been failed over more than TASK_MAX_FAILOVER_COUNT times. A bounded number of queries per chunk
of tasks, never one per task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from taskhub.base import metrics
from taskhub.base.actors import Actor, ActorType
from tasks.models import ControlCommand, Task, TaskStatusHistory
from tasks.states import TaskStatus, can_transition
from tasks.transitions import new_history, record_history_bulk

S = TaskStatus
CHUNK = 1000
assert can_transition(S.RUNNING, S.PENDING, system=True)
assert can_transition(S.RUNNING, S.FAILED, system=True)


def fail_over_tasks(
    where: Q, *, reason: str, actor: Actor, now: datetime, reasons: Mapping[int, str] | None = None
) -> dict[str, int]:
    """Fail over every RUNNING task matching `where`. Must run inside a transaction (the caller
    holds the unit rows locked, so no claim adds tasks underneath). `reasons` may say why per task
    (in its history row); `reason` stands for the others and goes into a poison task's error.
    Returns counts."""
    assert transaction.get_connection().in_atomic_block
    why: Callable[[int], str] = (lambda task_id: reasons.get(task_id, reason)) if reasons else (lambda _: reason)
    counts = {"failedOver": 0, "poisoned": 0}
    cap = settings.TASK_MAX_FAILOVER_COUNT
    rows = list(
        Task.objects.filter(where, status=S.RUNNING)
        .select_for_update(skip_locked=True)
        .order_by("id")
        .values_list("id", "attempt", "unit_id", "failover_count")
    )
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        back = [r for r in chunk if r[3] + 1 <= cap]
        poison = [r for r in chunk if r[3] + 1 > cap]
        if back:
            Task.objects.filter(id__in=[r[0] for r in back], status=S.RUNNING).update(
                status=S.PENDING,
                failover_count=F("failover_count") + 1,
                available_at=now,
                timeout_at=None,
                lease_expires_at=None,
                pending_command=ControlCommand.ABORT,
                updated_at=now,
            )
        if poison:
            Task.objects.filter(id__in=[r[0] for r in poison], status=S.RUNNING).update(
                status=S.FAILED,
                failover_count=F("failover_count") + 1,
                timeout_at=None,
                lease_expires_at=None,
                next_retry_at=None,
                pending_command=ControlCommand.ABORT,
                finished_at=now,
                updated_at=now,
                error=f"poison: lost by its unit more than {cap} times ({reason})",
            )
        record_history_bulk(
            _history(back, S.PENDING, why, actor, now)
            + _history(
                poison, S.FAILED, lambda t: f"poison: failed over more than {cap} times; last: {why(t)}", actor, now
            )
        )
        counts["failedOver"] += len(back)
        counts["poisoned"] += len(poison)
    metrics.record_failover(counts)
    return counts


def fail_over_orphans(now: datetime, limit: int, *, actor: Actor) -> dict[str, int]:
    """Fail over up to `limit` RUNNING tasks that no unit holds and nobody reports on: those whose
    lease ran out (started with PUT status: `Task.lease_expires_at`), and those whose unit row was
    deleted without a deregistration (SET_NULL left them neither a unit nor a lease). Two polls,
    each on its index; the rows stay locked (SKIP LOCKED: a second sweeper takes others)."""
    running = Task.objects.select_for_update(skip_locked=True).filter(status=S.RUNNING)
    # Past the lease, not at it: like a unit, a task is lost when silent for more than the timeout.
    expired = running.filter(lease_expires_at__lt=now).order_by("lease_expires_at")
    ids = list(expired.values_list("id", flat=True)[:limit])
    if len(ids) < limit:
        unitless = running.filter(unit__isnull=True, lease_expires_at__isnull=True).order_by("id")
        ids += unitless.values_list("id", flat=True)[: limit - len(ids)]
    if not ids:
        return {}
    # Who put each task in RUNNING (its newest RUNNING history row) says why nobody reports on it.
    started = {
        task_id: (actor_type, starter, unit_id)
        for task_id, actor_type, starter, unit_id in TaskStatusHistory.objects.filter(
            task_id__in=ids, to_status=S.RUNNING
        )
        .order_by("task_id", "id")
        .values_list("task_id", "actor_type", "actor", "unit_id")
    }
    timeout = settings.UNIT_HEARTBEAT_TIMEOUT
    reasons = {}
    for task_id in ids:
        actor_type, starter, unit_id = started.get(task_id, ("", "someone", None))
        reasons[task_id] = (
            f"its unit {unit_id} was removed without deregistering; no unit holds it"
            if actor_type == ActorType.UNIT
            else f"started by {starter} without a unit; nobody reported on it for {timeout:g}s"
        )
    counts = fail_over_tasks(
        Q(id__in=ids),
        reason="RUNNING with no unit reporting on it",
        reasons=reasons,
        actor=actor,
        now=now,
    )
    return {"orphans": counts["failedOver"] + counts["poisoned"], **counts}


def _history(
    rows: Iterable[tuple[int, int, str | None, int]],
    target: str,
    why: Callable[[int], str],
    actor: Actor,
    now: datetime,
) -> list[TaskStatusHistory]:
    return [
        new_history(task_id, attempt, unit_id, S.RUNNING, target, actor=actor, reason=why(task_id), now=now)
        for task_id, attempt, unit_id, _ in rows
    ]
