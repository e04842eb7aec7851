"""Execution log lines: the per-task cap, and the rows a unit's or a client's lines are stored as."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import Count

from taskhub.apikeys.services import charge_log_entries, refund_log_entries
from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict
from tasks.models import TaskExecutionLog


class LogQuotaExceeded(Conflict):
    code = "log_quota_exceeded"


def charge_owner(owner_id: int | None, task_id: int, adding: int) -> None:
    """The per-key quota: the lines stored on all of a key's tasks stay within
    TASK_LOG_QUOTA_PER_KEY. Inside the transaction that stores them (a refusal rolls back
    nothing else: it raises before the caller changes anything). Operators' tasks (no key) have
    only the per-task cap."""
    if owner_id is not None and not charge_log_entries(owner_id, adding, settings.TASK_LOG_QUOTA_PER_KEY):
        raise quota_exceeded(task_id, adding)


def charge_owners(wanted: dict[int | None, int]) -> set[int]:
    """`charge_owner` for a batch: one UPDATE per key (not per task); returns the keys refused
    (nothing counted for them: their items' lines are refused whole)."""
    quota = settings.TASK_LOG_QUOTA_PER_KEY
    return {key for key, n in wanted.items() if key is not None and not charge_log_entries(key, n, quota)}


def quota_exceeded(task_id: int, adding: int) -> LogQuotaExceeded:
    quota = settings.TASK_LOG_QUOTA_PER_KEY
    return LogQuotaExceeded(
        f"The API key that owns task {task_id} has reached its log quota of {quota} entries "
        f"(TASK_LOG_QUOTA_PER_KEY); old lines are purged after TASK_LOG_RETENTION_DAYS",
        details={"quota": quota, "adding": adding},
    )


def refund_deleted(rows: list[tuple[int | None, int]]) -> None:
    """(owner id, lines deleted) pairs: uncount them."""
    counts: dict[int, int] = {}
    for owner_id, n in rows:
        if owner_id is not None:
            counts[owner_id] = counts.get(owner_id, 0) + n
    refund_log_entries(counts)


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
