"""Reads of tasks: which rows a caller may see (the one place the visibility rule lives) and the
counts by status that the stats API, the dashboard and `/metrics` all show."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet

from taskhub.base.viewer import Viewer
from tasks import sql
from tasks.fencing import live_lease
from tasks.models import Task
from tasks.states import TaskStatus

S = TaskStatus


def visible_tasks(viewer: Viewer) -> QuerySet[Task]:
    """Operators see every task; an API key sees the tasks it created; a unit sees only the tasks
    currently leased to it (RUNNING with its id)."""
    qs = Task.objects.all()
    if viewer.is_operator:
        return qs
    if viewer.unit_id is not None:
        return qs.filter(**live_lease(viewer.unit_id))
    return qs.filter(owner_id=viewer.api_key_id)


def running_on(unit_id: str) -> int:
    """Tasks RUNNING on the unit (the claim's count of its load, under the unit row lock)."""
    return sql.running_count(unit_id)


def running_count_by(field: str, **filters: Any) -> dict[Any, int]:
    """RUNNING tasks matching `filters`, counted by `field` (one grouped query)."""
    rows = Task.objects.filter(status=S.RUNNING, **filters).order_by().values(field).annotate(n=Count("id"))
    return {row[field]: row["n"] for row in rows}


def status_counts(queryset: QuerySet[Task] | None = None) -> dict[str, int]:
    """Tasks by status, every status present (0 if none): one grouped query on the status index."""
    counts = dict.fromkeys(S.values, 0)
    qs = Task.objects.all() if queryset is None else queryset
    for row in qs.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def task_stats(queryset: QuerySet[Task]) -> dict[str, Any]:
    """`GET /tasks/stats`: counts by status plus by type and the retry/dead split."""
    by_status = status_counts(queryset)
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
