"""Reads of tasks: which rows a caller may see (the one place the visibility rule lives), the counts
by status that the stats API, the dashboard and `/metrics` all show, and the filtering and search
of the API's list and the console's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Min, Q, QuerySet

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


def next_claimable_at(task_type: str) -> datetime | None:
    """When the earliest PENDING task of `task_type` is (or was) claimable; None if none is
    PENDING: the long-poll waiters' safety net (taskhub.base.doorbell), one query per type."""
    return Task.objects.filter(status=S.PENDING, task_type=task_type).aggregate(at=Min("available_at"))["at"]


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


def status_counts_by_type(queryset: QuerySet[Task] | None = None) -> dict[str, dict[str, int]]:
    """Tasks by type, then status (only the pairs present): one grouped query."""
    qs = Task.objects.all() if queryset is None else queryset
    out: dict[str, dict[str, int]] = {}
    for row in qs.order_by().values("task_type", "status").annotate(n=Count("id")):
        out.setdefault(row["task_type"], {})[row["status"]] = row["n"]
    return out


def oldest_due_by_type(now: datetime) -> dict[str, datetime]:
    """The oldest `available_at` of the due PENDING tasks of each type: how long the head of each
    queue has waited. One grouped query that reads one entry of task_due_by_type_idx (status,
    task_type, available_at) per status and type (MariaDB: "Using index for group-by"), however many
    tasks wait; the PENDING groups are kept here. With `status = 'PENDING'` in the WHERE, MariaDB
    reads every PENDING entry instead (a ref on the index): docs/operations.md shows both plans."""
    rows = (
        Task.objects.filter(available_at__lte=now)
        .order_by()
        .values("status", "task_type")
        .annotate(oldest=Min("available_at"))
    )
    return {row["task_type"]: row["oldest"] for row in rows if row["status"] == S.PENDING}


# FAILED splits in two: waiting for an automatic retry (next_retry_at set), and dead (no retry
# left or not retryable: only an operator's retry brings it back). The stats API, the console's
# filters and tiles and /metrics all ask these.
WAITING_RETRY = Q(status=S.FAILED, next_retry_at__isnull=False)
DEAD = Q(status=S.FAILED, next_retry_at__isnull=True)
FAILED_KINDS: dict[str, tuple[str, Q]] = {
    "dead": ("dead (no retries left)", DEAD),
    "waiting_retry": ("waiting for retry", WAITING_RETRY),
}


def waiting_retry_count(queryset: QuerySet[Task] | None = None) -> int:
    """FAILED tasks with an automatic retry due (one count on the retry index)."""
    qs = Task.objects.all() if queryset is None else queryset
    return qs.filter(WAITING_RETRY).count()


def failed_split(by_status: dict[str, int], queryset: QuerySet[Task] | None = None) -> dict[str, int]:
    """`waitingRetry` and `dead` of the FAILED count in `by_status` (one more count)."""
    waiting = waiting_retry_count(queryset)
    return {"waitingRetry": waiting, "dead": by_status[S.FAILED] - waiting}


def status_counts_and_split(queryset: QuerySet[Task] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """`status_counts` and `failed_split` in one grouped query (the retry index, (status,
    next_retry_at), holds both columns: read index-only)."""
    counts = dict.fromkeys(S.values, 0)
    waiting = 0
    qs = Task.objects.all() if queryset is None else queryset
    for row in qs.order_by().values("status").annotate(n=Count("id"), waiting=Count("id", filter=WAITING_RETRY)):
        counts[row["status"]] = row["n"]
        waiting += row["waiting"]
    return counts, {"waitingRetry": waiting, "dead": counts[S.FAILED] - waiting}


def task_stats(queryset: QuerySet[Task]) -> dict[str, Any]:
    """`GET /tasks/stats`: counts by status plus by type and the retry/dead split."""
    by_status = status_counts(queryset)
    waiting_retry = waiting_retry_count(queryset)
    by_type = status_counts_by_type(queryset)
    return {
        "total": sum(by_status.values()),
        "byStatus": by_status,
        "byType": by_type,
        "waitingRetry": waiting_retry,
        "dead": by_status[S.FAILED] - waiting_retry,
    }


# --- list filtering and search: the API's list and the console's ---------------------------------

MAX_TASK_ID = 2**63 - 1  # BIGINT: a longer run of digits names no task


@dataclass(frozen=True)
class TaskFilters:
    status: str | None = None
    task_type: str | None = None
    unit_id: str | None = None
    priority: int | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    search: str | None = None
    concurrency_key: str | None = None


def filter_tasks(qs: QuerySet[Task], filters: TaskFilters, *, search_window: int) -> tuple[QuerySet[Task], bool]:
    """A list's filters, then its search (`search_tasks`). Also says whether a name search was cut to
    the newest `search_window` rows."""
    exact = {
        "status": filters.status,
        "task_type": filters.task_type,
        "unit_id": filters.unit_id,
        "priority": filters.priority,
        "created_at__gte": filters.created_after,
        "created_at__lt": filters.created_before,
        "concurrency_key": filters.concurrency_key,
    }
    qs = qs.filter(**{lookup: value for lookup, value in exact.items() if value is not None})
    if filters.search is None:
        return qs, False
    return search_tasks(qs, filters.search, window=search_window)


def search_tasks(qs: QuerySet[Task], term: str, *, window: int) -> tuple[QuerySet[Task], bool]:
    """A term of digits is a task id, answered by the primary key (`name LIKE '%x%' OR id = x` read
    every row of the caller's: 1.7 s at 1M rows). Any other term: names containing it
    (case-insensitive) among the newest `window` rows of `qs`, since no index answers a substring.
    Returns the rows and whether older ones were left out."""
    if term.isascii() and term.isdigit():
        return (qs.filter(pk=int(term)) if int(term) <= MAX_TASK_ID else qs.none()), False
    qs, windowed = _newest(qs, window)
    return qs.filter(name__icontains=term), windowed


def _newest(qs: QuerySet[Task], window: int) -> tuple[QuerySet[Task], bool]:
    """The newest `window` rows of `qs`, and whether older rows were left out: one read of
    `window + 1` ids to find the edge, then at most `window` rows."""
    ids = list(qs.order_by("-id").values_list("id", flat=True)[window - 1 : window + 1])
    if len(ids) < 2:  # `window` rows or fewer: nothing left out
        return qs, False
    return qs.filter(id__gte=ids[0]), True
