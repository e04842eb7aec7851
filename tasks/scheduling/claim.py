"""The claim: the one query that hands PENDING tasks to a unit.

    SELECT id, attempt, timeout_seconds FROM tasks
     WHERE status='PENDING' AND task_type=%s AND available_at <= %s
     ORDER BY priority DESC, id
     LIMIT n FOR UPDATE SKIP LOCKED

served by `task_claim_idx (status, task_type, priority DESC, id)`: no filesort, and concurrent
claimers skip each other's rows instead of waiting. On SQLite, IMMEDIATE transactions serialise
writers, so the same read-then-update is correct there too.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F

from taskhub.errors import NotFound
from tasks.actors import Actor
from tasks.models import Task, TaskStatusHistory
from tasks.scheduling.dbretry import retry_on_lock_error
from tasks.states import TaskStatus, can_transition
from tasks.transitions import record_history_bulk
from units.models import ExecutionUnit, UnitStatus

S = TaskStatus
assert can_transition(S.PENDING, S.RUNNING)


def claimable(task_type: str, now: datetime):  # type: ignore[no-untyped-def]
    return Task.objects.filter(status=S.PENDING, task_type=task_type, available_at__lte=now).order_by("-priority", "id")


@retry_on_lock_error()
@transaction.atomic
def claim_tasks(unit_id: str, max_tasks: int, *, now: datetime) -> list[Task]:
    """Lease up to `max_tasks` tasks of the unit's type, within its free capacity."""
    # The unit row lock serialises this unit's claims, so its capacity count is exact.
    unit = ExecutionUnit.objects.select_for_update().filter(pk=unit_id).first()
    if unit is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    if unit.status in (UnitStatus.OFFLINE, UnitStatus.MAINTENANCE):
        return []
    running = Task.objects.filter(unit_id=unit.pk, status=S.RUNNING).count()
    wanted = min(max_tasks, unit.capacity - running)
    rows: list[tuple[int, int, int | None]] = []
    if wanted > 0:
        rows = list(
            claimable(unit.unit_type, now)
            .select_for_update(skip_locked=True)
            .values_list("id", "attempt", "timeout_seconds")[:wanted]
        )
    by_timeout: dict[int | None, list[int]] = defaultdict(list)
    for task_id, _, timeout in rows:
        by_timeout[timeout].append(task_id)
    for timeout, ids in by_timeout.items():
        Task.objects.filter(id__in=ids).update(
            status=S.RUNNING,
            unit_id=unit.pk,
            attempt=F("attempt") + 1,
            started_at=now,
            progress=0,
            pending_command="",
            timeout_at=now + timedelta(seconds=timeout) if timeout else None,
            next_retry_at=None,
            updated_at=now,
        )
    actor = Actor.unit(unit.pk)
    record_history_bulk(
        [
            TaskStatusHistory(
                task_id=task_id,
                from_status=S.PENDING,
                to_status=S.RUNNING,
                reason="claimed",
                actor_type=actor.type,
                actor=actor.label,
                unit_id=unit.pk,
                attempt=attempt + 1,
                created_at=now,
            )
            for task_id, attempt, _ in rows
        ]
    )
    status = UnitStatus.BUSY if running + len(rows) >= unit.capacity else UnitStatus.ONLINE
    if status != unit.status:
        ExecutionUnit.objects.filter(pk=unit.pk).update(status=status)
    if not rows:
        return []
    return list(Task.objects.filter(id__in=[r[0] for r in rows]).order_by("-priority", "id"))
