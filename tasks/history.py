"""The one writer of history rows: how a row is built, and one INSERT for any number of them.

Every state change writes one row (from -> to) in the transaction that made it, with its actor,
a reason in words and a reason code (`ReasonCode`) that the dashboard and the tools read instead
of the words. Single-row and set-based moves alike write through `write_history`: a multi-row
INSERT in plain SQL (what `bulk_create` sends, without its per-value preparation).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from taskhub.base.actors import Actor
from taskhub.base.sql import insert_rows
from tasks.models import Task, TaskStatusHistory


def new_history(
    task_id: int,
    attempt: int,
    unit_id: str | None,
    source: str | None,
    target: str,
    *,
    actor: Actor,
    reason: str,
    code: str,
    now: datetime,
) -> TaskStatusHistory:
    """The one place a history row is built (per-row and set-based moves alike)."""
    return TaskStatusHistory(
        task_id=task_id,
        from_status=source,
        to_status=target,
        reason=reason[:2000],
        reason_code=code,
        actor_type=actor.type,
        actor=actor.label[:150],
        unit_id=unit_id,
        attempt=attempt,
        created_at=now,
    )


def history_row(
    task: Task, source: str | None, target: str, *, actor: Actor, reason: str, code: str, now: datetime
) -> TaskStatusHistory:
    """A row for a move of `task` (in memory, after the move): the actor's unit, else the task's."""
    unit_id = actor.unit_id or task.unit_id
    return new_history(task.pk, task.attempt, unit_id, source, target, actor=actor, reason=reason, code=code, now=now)


def write_history(rows: Sequence[TaskStatusHistory]) -> None:
    insert_rows(TaskStatusHistory, rows)
