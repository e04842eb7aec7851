"""New tasks: PENDING, with the creation defaults and their "created" history rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from taskhub.apikeys.models import DEFAULT_POOL
from taskhub.base import doorbell
from taskhub.base.actors import Actor
from tasks.entry import enter
from tasks.history import history_row, write_history
from tasks.models import Task
from tasks.queues import apply_queue_defaults
from tasks.states import ReasonCode, TaskStatus

S = TaskStatus


def build_task(*, now: datetime, **fields: Any) -> Task:
    """A new PENDING task in memory, with the creation defaults (one place for single and batch)."""
    fields.setdefault("max_retries", settings.TASK_MAX_RETRY_COUNT)
    fields.setdefault("pool", getattr(fields.get("owner"), "pool", None) or DEFAULT_POOL)  # the owner key's
    task = Task(created_at=now, **fields)
    enter(task, S.PENDING, now)  # available_at from scheduled_at, as every entry into PENDING
    return task


def _created(task: Task, actor: Actor, now: datetime) -> Any:
    return history_row(task, None, S.PENDING, actor=actor, reason="created", code=ReasonCode.CREATED, now=now)


@transaction.atomic
def create_task(*, actor: Actor, now: datetime | None = None, **fields: Any) -> Task:
    now = now or timezone.now()
    apply_queue_defaults([fields])
    task = build_task(now=now, **fields)
    task.save(force_insert=True)
    write_history([_created(task, actor, now)])
    doorbell.ring_on_commit(doorbell.claimable_rings([(task.task_type, task.available_at)]))
    return task


@transaction.atomic
def create_tasks(rows: Sequence[dict[str, Any]], *, actor: Actor, now: datetime | None = None) -> list[Task]:
    """Many tasks at once: one INSERT of tasks, one of their "created" history rows."""
    now = now or timezone.now()
    rows = [dict(row) for row in rows]
    apply_queue_defaults(rows)
    tasks = [build_task(now=now, **row) for row in rows]
    if connection.features.can_return_rows_from_bulk_insert:  # SQLite, MariaDB 10.5+: INSERT ... RETURNING
        Task.objects.bulk_create(tasks)
    else:  # MySQL cannot hand back the ids of a multi-row INSERT
        for task in tasks:
            task.save(force_insert=True)
    write_history([_created(task, actor, now) for task in tasks])
    doorbell.ring_on_commit(doorbell.claimable_rings((task.task_type, task.available_at) for task in tasks))
    return tasks
