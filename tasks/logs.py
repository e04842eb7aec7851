"""Execution log lines: the per-task cap, and the rows a unit's or a client's lines are stored as."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Count

from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict
from tasks.models import TaskExecutionLog


def stored_log_counts(task_ids: list[int]) -> dict[int, int]:
    """Log lines stored per task, one grouped query (for the cap)."""
    if not task_ids:
        return {}
    rows = TaskExecutionLog.objects.filter(task_id__in=task_ids).order_by().values("task_id").annotate(n=Count("id"))
    return {row["task_id"]: row["n"] for row in rows}


def check_log_room(task_id: int, stored: int, adding: int) -> None:
    """The per-task log cap: refuse the whole set of lines that would pass it."""
    if settings.TASK_MAX_LOG_ENTRIES - stored < adding:
        raise Conflict(
            f"Task {task_id} has reached its log cap of {settings.TASK_MAX_LOG_ENTRIES} entries",
            details={"stored": stored, "cap": settings.TASK_MAX_LOG_ENTRIES},
        )


def log_rows(
    task_id: int, attempt: int, entries: list[dict[str, Any]], *, actor: Actor, now: datetime
) -> list[TaskExecutionLog]:
    return [
        TaskExecutionLog(
            task_id=task_id,
            attempt=attempt,
            level=e["level"],
            message=e["message"],
            timestamp=e.get("timestamp") or now,
            unit_id=actor.unit_id,
            source=actor.label,
            created_at=now,
        )
        for e in entries
    ]
