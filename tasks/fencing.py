"""The fencing rule, once: a unit's report counts only for its live lease.

A lease is live if the task is RUNNING, leased to this unit, at this attempt (every claim starts a
new attempt, so an attempt taken away never becomes live again). The rule is the mapping
`live_lease`; every form of it derives from that: a filter of a compare-and-set UPDATE, the check
of a locked row (`is_live`), and the condition of the plain-SQL statements (`lease_sql`).
"""

from __future__ import annotations

from typing import Any

from django.db.models import F

from taskhub.base import metrics
from taskhub.base.errors import Conflict
from taskhub.base.sql import model_field, qn
from tasks.models import Task
from tasks.states import ControlCommand, TaskStatus

S = TaskStatus


def live_lease(unit_id: str | F, attempt: int | None = None) -> dict[str, Any]:
    """The fencing rule as filter arguments. Without `attempt`: the unit's leases, whatever their
    attempt (a heartbeat's read of what it holds). `unit_id` may name the unit by an expression
    (OuterRef("pk") in a subquery of units)."""
    lease: dict[str, Any] = {"status": S.RUNNING, "unit_id": unit_id}
    return lease if attempt is None else lease | {"attempt": attempt}


def is_live(task: Task, unit_id: str, attempt: int) -> bool:
    return all(getattr(task, name) == value for name, value in live_lease(unit_id, attempt).items())


def lease_sql(unit_id: str, attempt: int | None = None) -> tuple[str, list[Any]]:
    """The rule as a condition on the tasks table and its parameters: `unit_id = %s AND ...`."""
    rule = live_lease(unit_id, attempt)
    condition = " AND ".join(f"{qn(model_field(Task, name).column)} = %s" for name in rule)
    return condition, [str(value) if name == "status" else value for name, value in rule.items()]


class StaleAttempt(Conflict):
    code = "stale_attempt"

    def __init__(self, task: Task, unit_id: str, attempt: int) -> None:
        details: dict[str, Any] = {"taskId": task.pk, "attempt": attempt, "command": ControlCommand.ABORT}
        message = f"Attempt {attempt} of task {task.pk} is not live for unit {unit_id}; abort it"
        if task.unit_id == unit_id:  # say more only to the unit that held the task
            details |= {"liveAttempt": task.attempt, "status": task.status}
            message += f" (task is {task.status}, live attempt {task.attempt})"
        super().__init__(message, details=details)
        metrics.record_stale_report()


def check_live(task: Task, unit_id: str, attempt: int) -> Task:
    if not is_live(task, unit_id, attempt):
        raise StaleAttempt(task, unit_id, attempt)
    return task


def _is_same_outcome(task: Task, unit_id: str, attempt: int, status: str) -> bool:
    """A repeat of a report already accepted (a retry after a lost reply): answer it again."""
    if task.unit_id != unit_id or task.attempt != attempt:
        return False
    if status == S.FAILED:
        # Accepted failure may have been moved on by the retry mover already.
        return (
            task.status in (S.FAILED, S.PENDING, S.RUNNING)
            and task.history.filter(to_status=S.FAILED, attempt=attempt, unit_id=unit_id).exists()
        )
    return task.status == status


def fence_outcome(task: Task, unit_id: str, attempt: int, status: str) -> bool:
    """Fencing of a result (`status` COMPLETED or FAILED) on a locked row: True if the attempt is
    live (apply it), False if this is a repeat of the accepted report (answer again, change
    nothing); otherwise StaleAttempt. A live attempt cannot already have a result (each claim
    starts a new attempt), so the repeat check runs only when the attempt is not live."""
    if is_live(task, unit_id, attempt):
        return True
    if _is_same_outcome(task, unit_id, attempt, status):
        return False
    raise StaleAttempt(task, unit_id, attempt)
