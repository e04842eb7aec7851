"""The operator dashboard: what the hub is doing now, and over the last hour.

Every number comes from eight grouped queries per refresh, however large the tables: tasks by
status with the dead / waiting-retry split (one query), units by status with capacity, RUNNING tasks
by the status of their unit (running on alive units and the orphans, one query), PENDING types no
claiming unit serves (the same selectors as the stats API and /metrics), the queues with settings,
and the last hour's history (completions, failures, failovers per minute; the recent failures) read
through a primary-key range so it never scans the whole history table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.urls import reverse
from django.utils import timezone

from tasks.models import TaskStatusHistory
from tasks.selectors import status_counts_and_split
from tasks.states import ReasonCode, TaskStatus
from units.queues import queue_settings_summary
from units.selectors import orphaned_count, running_by_unit_status, unit_load, unserved_types
from units.states import CLAIMING, UnitStatus

S = TaskStatus
WINDOW_MINUTES = 60
RECENT_FAILURES = 10


def history_floor_id(since: datetime) -> int:
    """The id of the newest history row older than `since` (0 if none).

    History has no index on created_at; ids grow with time, so walking the primary key down from
    the newest row finds the boundary after reading only the window's rows. Rows are written with
    the time their operation started, so a row can sit a few ids out of order: the time filter
    stays on the window query too, and such a row may at most be missed, never counted twice."""
    row = TaskStatusHistory.objects.filter(created_at__lt=since).order_by("-id").values_list("id", flat=True)[:1]
    return next(iter(row), 0)


def throughput(now: datetime, minutes: int = WINDOW_MINUTES) -> dict[str, Any]:
    """Completions, failures and failovers per minute over the last `minutes` (two queries)."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    floor = history_floor_id(start)
    # A failover is a take-back from a unit that lost the task: not the first half of a pause, nor
    # a requeue someone asked for (nobody lost it). The reason code says which.
    events = Q(to_status__in=[S.COMPLETED, S.FAILED]) | Q(reason_code=ReasonCode.FAILOVER)
    rows = (
        TaskStatusHistory.objects.filter(events, id__gt=floor, created_at__gte=start, created_at__lt=end)
        .annotate(minute=TruncMinute("created_at"))
        .order_by()
        .values("minute", "to_status")
        .annotate(n=Count("id"))
    )
    series = {S.COMPLETED: [0] * minutes, S.FAILED: [0] * minutes, S.PENDING: [0] * minutes}
    for row in rows:
        index = int((row["minute"] - start).total_seconds() // 60)
        if 0 <= index < minutes:
            series[row["to_status"]][index] += row["n"]
    return {
        "start": start,
        "minutes": [(start + timedelta(minutes=i)).strftime("%H:%M") for i in range(minutes)],
        "completed": series[S.COMPLETED],
        "failed": series[S.FAILED],
        "failedOver": series[S.PENDING],
        "floorId": floor,
    }


def unit_counts(running_by_status: dict[str | None, int] | None = None) -> dict[str, Any]:
    load = unit_load(running_by_status=running_by_status)
    by_status = {s: c.units for s, c in load.by_status.items()}
    return {
        "byStatus": by_status,
        "online": sum(by_status[s] for s in CLAIMING),
        "offline": by_status[UnitStatus.OFFLINE],
        "maintenance": by_status[UnitStatus.MAINTENANCE],
        "capacity": load.capacity,
        "running": load.running,
        "utilisation": load.utilisation,
    }


def recent_failures(floor_id: int, limit: int = RECENT_FAILURES) -> list[dict[str, Any]]:
    """The newest failures of the window (from history, so a task that failed twice shows twice)."""
    rows = (
        TaskStatusHistory.objects.filter(id__gt=floor_id, to_status=S.FAILED)
        .select_related("task")
        .only("id", "task_id", "reason", "actor", "attempt", "created_at", "task__name", "task__task_type")
        .order_by("-id")[:limit]
    )
    return [
        {
            "taskId": row.task_id,
            "name": row.task.name,
            "taskType": row.task.task_type,
            "attempt": row.attempt,
            "reason": row.reason[:200],
            "actor": row.actor,
            "at": row.created_at,
            "url": reverse("admin:tasks_task_change", args=[row.task_id]),
        }
        for row in rows
    ]


def dashboard_data(now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    tasks, split = status_counts_and_split()
    running = running_by_unit_status()
    flow = throughput(now)
    floor = flow.pop("floorId")
    return {
        "generatedAt": now,
        "tasks": {
            "byStatus": tasks,
            "total": sum(tasks.values()),
            **split,  # waitingRetry, dead: as GET /tasks/stats says them
            "orphaned": orphaned_count(running),
        },
        "unservedTypes": unserved_types(),
        "units": unit_counts(running),
        "throughput": flow,
        "lastHour": {
            "completed": sum(flow["completed"]),
            "failed": sum(flow["failed"]),
            "failedOver": sum(flow["failedOver"]),
        },
        "recentFailures": recent_failures(floor),
        "queues": queue_cards(),
    }


def queue_cards() -> list[dict[str, Any]]:
    """The queues with settings: paused ones first, with their limits (one query)."""
    cards = [
        {"taskType": task_type, "paused": paused, "limits": {k: v for k, v in limits.items() if v is not None}}
        for task_type, (paused, limits) in queue_settings_summary().items()
    ]
    return sorted(cards, key=lambda card: (not card["paused"], card["taskType"]))
