"""Task writes that are not status changes: edit, delete, logs. Status lives in transitions."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from taskhub.errors import Conflict, NotFound
from tasks.actors import Actor
from tasks.models import Task, TaskExecutionLog
from tasks.states import TaskStatus
from tasks.transitions import create_task, lock_live_attempt

S = TaskStatus

# Which fields may change in which state. Config and schedule only before the work starts again.
_ALL_EDITABLE = frozenset({"name", "priority", "config", "max_retries", "timeout_seconds", "scheduled_at"})
EDITABLE_FIELDS: dict[str, frozenset[str]] = {
    S.PENDING: _ALL_EDITABLE,
    S.PAUSED: _ALL_EDITABLE,
    S.FAILED: _ALL_EDITABLE,
    S.RUNNING: frozenset({"name", "priority", "max_retries"}),
    S.COMPLETED: frozenset({"name"}),
    S.CANCELLED: frozenset({"name"}),
}
CAMEL = {
    "task_type": "taskType",
    "max_retries": "maxRetries",
    "timeout_seconds": "timeoutSeconds",
    "scheduled_at": "scheduledAt",
}


def request_fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def task_submit(
    *, owner: Any, actor: Actor, data: dict[str, Any], idempotency_key: str | None, fingerprint: str
) -> tuple[Task, bool]:
    """Create a task, or return the one created earlier with the same Idempotency-Key by the same
    client. Returns (task, created)."""
    if idempotency_key:
        existing = _idempotent_match(owner, idempotency_key, fingerprint)
        if existing is not None:
            return existing, False
    try:
        task = create_task(
            actor=actor,
            owner=owner,
            idempotency_key=idempotency_key or None,
            request_fingerprint=fingerprint if idempotency_key else "",
            **data,
        )
    except IntegrityError:
        # Two requests with the same key raced; the other one won.
        existing = _idempotent_match(owner, idempotency_key or "", fingerprint) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    return task, True


def _idempotent_match(owner: Any, key: str, fingerprint: str) -> Task | None:
    task = Task.objects.filter(owner=owner, idempotency_key=key).first()
    if task is not None and task.request_fingerprint != fingerprint:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            details={"taskId": task.pk, "field": "Idempotency-Key"},
        )
    return task


@transaction.atomic
def task_update(
    task_id: int, changes: dict[str, Any], *, queryset: QuerySet[Task], now: datetime | None = None
) -> Task:
    now = now or timezone.now()
    try:
        task = queryset.select_for_update().get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"Task {task_id} not found") from None
    allowed = EDITABLE_FIELDS[task.status]
    refused = sorted(CAMEL.get(f, f) for f in changes if f not in allowed)
    if refused:
        raise Conflict(
            f"{', '.join(refused)} cannot change while the task is {task.status}",
            details={"fields": refused, "editable": sorted(CAMEL.get(f, f) for f in allowed), "status": task.status},
        )
    if "task_type" in changes:
        raise Conflict("taskType cannot change", details={"fields": ["taskType"]})
    for field, value in changes.items():
        setattr(task, field, value)
    fields = set(changes) | {"updated_at"}
    task.updated_at = now
    if "scheduled_at" in changes and task.status == S.PENDING:
        task.available_at = max(now, task.scheduled_at) if task.scheduled_at else now
        fields.add("available_at")
    task.save(update_fields=sorted(fields))
    return task


@transaction.atomic
def task_delete(task_id: int, *, queryset: QuerySet[Task]) -> None:
    try:
        task = queryset.select_for_update().get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"Task {task_id} not found") from None
    if task.status == S.RUNNING:
        raise Conflict(
            f"Task {task_id} is RUNNING and cannot be deleted; cancel it first",
            details={"status": task.status},
        )
    task.delete()


def task_append_logs(
    task_id: int,
    entries: list[dict[str, Any]],
    *,
    actor: Actor,
    queryset: QuerySet[Task],
    attempt: int | None = None,
    now: datetime | None = None,
) -> int:
    """Append log lines. A unit must name its live attempt (fencing); a client's lines are
    recorded against the task's current attempt. Returns how many were stored."""
    now = now or timezone.now()
    with transaction.atomic():
        if actor.unit_id is not None:
            task = lock_live_attempt(task_id, actor.unit_id, attempt or 0)
        else:
            task = queryset.filter(pk=task_id).first()  # type: ignore[assignment]
            if task is None:
                raise NotFound(f"Task {task_id} not found")
        stored = TaskExecutionLog.objects.filter(task_id=task_id).count() if settings.TASK_MAX_LOG_ENTRIES else 0
        room = settings.TASK_MAX_LOG_ENTRIES - stored
        if room < len(entries):
            raise Conflict(
                f"Task {task_id} has reached its log cap of {settings.TASK_MAX_LOG_ENTRIES} entries",
                details={"stored": stored, "cap": settings.TASK_MAX_LOG_ENTRIES},
            )
        TaskExecutionLog.objects.bulk_create(
            [
                TaskExecutionLog(
                    task_id=task.pk,
                    attempt=task.attempt if attempt is None else attempt,
                    level=e["level"],
                    message=e["message"],
                    timestamp=e.get("timestamp") or now,
                    unit_id=actor.unit_id,
                    source=actor.label,
                    created_at=now,
                )
                for e in entries
            ]
        )
    return len(entries)


def task_stats(queryset: QuerySet[Task]) -> dict[str, Any]:
    """Counts by status (one grouped query on the status index) plus the retry/dead split."""
    by_status = {s: 0 for s in S.values}
    for row in queryset.order_by().values("status").annotate(n=Count("id")):
        by_status[row["status"]] = row["n"]
    waiting_retry = queryset.filter(status=S.FAILED, next_retry_at__isnull=False).count()
    by_type: dict[str, dict[str, int]] = {}
    for row in queryset.order_by().values("task_type", "status").annotate(n=Count("id")):
        by_type.setdefault(row["task_type"], {})[row["status"]] = row["n"]
    return {
        "total": sum(by_status.values()),
        "byStatus": by_status,
        "byType": by_type,
        "waitingRetry": waiting_retry,
        "dead": by_status[S.FAILED] - waiting_retry,
    }
