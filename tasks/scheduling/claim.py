"""The claim: the one query that hands PENDING tasks to a unit.

    SELECT * FROM tasks
     WHERE status='PENDING' AND task_type=%s AND available_at <= %s
     ORDER BY priority DESC, id
     LIMIT n FOR UPDATE SKIP LOCKED

served by `task_claim_idx (status, task_type, priority DESC, id)`: no filesort, and concurrent
claimers skip each other's rows instead of waiting. On SQLite, IMMEDIATE transactions serialise
writers, so the same read-then-update is correct there too.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from django.db import transaction
from django.db.models import F

from taskhub import metrics
from taskhub.errors import NotFound
from tasks.actors import Actor
from tasks.models import Task
from tasks.scheduling.dbretry import retry_on_lock_error
from tasks.states import TaskStatus, can_transition
from tasks.transitions import enter_state, new_history, record_history_bulk
from units.models import ExecutionUnit, UnitStatus
from units.services import lock_unit_row

S = TaskStatus
assert can_transition(S.PENDING, S.RUNNING)


def claimable(task_type: str, now: datetime):  # type: ignore[no-untyped-def]
    return Task.objects.filter(status=S.PENDING, task_type=task_type, available_at__lte=now).order_by("-priority", "id")


def claim_tasks(unit_id: str, max_tasks: int, *, now: datetime) -> list[Task]:
    """Lease up to `max_tasks` tasks of the unit's type, within its free capacity."""
    return claim_tasks_with_status(unit_id, max_tasks, now=now)[0]


@retry_on_lock_error()
@transaction.atomic
def claim_tasks_with_status(unit_id: str, max_tasks: int, *, now: datetime) -> tuple[list[Task], str]:
    """`claim_tasks`, also returning the unit's status as this claim left it (what the claim
    endpoint replies), so no query re-reads either after the commit."""
    # The unit row lock serialises this unit's claims, so its capacity count is exact.
    unit = lock_unit_row(unit_id)
    if unit is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    if unit.status in (UnitStatus.OFFLINE, UnitStatus.MAINTENANCE):
        return [], unit.status
    running = Task.objects.filter(unit_id=unit.pk, status=S.RUNNING).count()
    wanted = min(max_tasks, unit.capacity - running)
    # Whole rows, locked: they are what the unit gets back, updated below as the UPDATE does.
    tasks: list[Task] = []
    if wanted > 0:
        tasks = list(claimable(unit.unit_type, now).select_for_update(skip_locked=True)[:wanted])
    # The entry effects of RUNNING come from the one place that defines them (enter_state), applied
    # to the locked rows in memory; the UPDATE writes the same values, one statement per distinct
    # timeout (the only per-row value besides the attempt increment).
    groups: dict[int | None, list[Task]] = defaultdict(list)
    changed: set[str] = set()
    for task in tasks:
        task.unit_id = unit.pk
        task.status = S.RUNNING
        task.updated_at = now
        changed = enter_state(task, S.RUNNING, now)
        groups[task.timeout_seconds].append(task)
    for group in groups.values():
        values = {name: getattr(group[0], name) for name in changed - {"attempt"}}
        Task.objects.filter(id__in=[t.pk for t in group]).update(
            **values, attempt=F("attempt") + 1, status=S.RUNNING, unit_id=unit.pk, updated_at=now
        )
    actor = Actor.unit(unit.pk)
    record_history_bulk(
        [
            new_history(task.pk, task.attempt, unit.pk, S.PENDING, S.RUNNING, actor=actor, reason="claimed", now=now)
            for task in tasks
        ]
    )
    metrics.record_claim(unit.unit_type, len(tasks))
    status = UnitStatus.BUSY if running + len(tasks) >= unit.capacity else UnitStatus.ONLINE
    if status != unit.status:
        ExecutionUnit.objects.filter(pk=unit.pk).update(status=status)
    return tasks, status
