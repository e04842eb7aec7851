"""Reads of execution units: which units a caller may see, their counts by status and their load
(the stats API, the dashboard and `/metrics`), and whether a unit is alive."""

from __future__ import annotations

from typing import Any, NamedTuple

from django.db.models import Count, Q, QuerySet, Sum

from taskhub.base.viewer import Viewer
from tasks.models import Task
from tasks.selectors import running_count_by
from tasks.states import TaskStatus
from units.models import ExecutionUnit
from units.states import ALIVE, CLAIMING, UnitStatus


class UnitCount(NamedTuple):
    units: int
    capacity: int


def visible_units(viewer: Viewer) -> QuerySet[ExecutionUnit]:
    """Operators see all units; an API key the units it registered; a unit only itself."""
    qs = ExecutionUnit.objects.all()
    if viewer.is_operator:
        return qs
    if viewer.unit_id is not None:
        return qs.filter(pk=viewer.unit_id)
    return qs.filter(owner_id=viewer.api_key_id)


def unit_status_counts(queryset: QuerySet[ExecutionUnit] | None = None) -> dict[str, UnitCount]:
    """Units and their summed capacity by status, every status present: one grouped query."""
    counts = {s: UnitCount(0, 0) for s in UnitStatus.values}
    qs = ExecutionUnit.objects.all() if queryset is None else queryset
    for row in qs.order_by().values("status").annotate(n=Count("id"), cap=Sum("capacity")):
        counts[row["status"]] = UnitCount(row["n"], row["cap"] or 0)
    return counts


class UnitLoad(NamedTuple):
    by_status: dict[str, UnitCount]
    capacity: int  # of the units offering it (CLAIMING)
    running: int  # tasks RUNNING on alive units (a draining unit still runs its tasks)
    utilisation: float  # tasks RUNNING on the units offering capacity, over that capacity


def running_by_unit_status() -> dict[str | None, int]:
    """Every RUNNING task counted by the status of the unit holding it (None: no unit holds it, or
    it was deregistered): one grouped query. Gives both `unit_load`'s running tasks and the orphans."""
    return running_count_by("unit__status")


def unit_load(
    queryset: QuerySet[ExecutionUnit] | None = None, running_by_status: dict[str | None, int] | None = None
) -> UnitLoad:
    """Units by status, online capacity and the tasks running on them: two grouped queries (one if
    the caller read `running_by_unit_status` for all units)."""
    qs = ExecutionUnit.objects.all() if queryset is None else queryset
    counts = unit_status_counts(qs)
    capacity = sum(counts[s].capacity for s in CLAIMING)
    if queryset is None and running_by_status is not None:
        running = {s: n for s, n in running_by_status.items() if s in ALIVE}
    else:
        running = running_count_by("unit__status", unit__in=qs.filter(status__in=ALIVE))
    claiming = sum(running.get(s, 0) for s in CLAIMING)
    return UnitLoad(counts, capacity, sum(running.values()), round(claiming / capacity, 4) if capacity else 0.0)


def unit_stats(queryset: QuerySet[ExecutionUnit]) -> dict[str, Any]:
    """`GET /execution-units/stats`."""
    load = unit_load(queryset)
    return {
        "total": sum(c.units for c in load.by_status.values()),
        "byStatus": {s: c.units for s, c in load.by_status.items()},
        "onlineCapacity": load.capacity,
        "runningTasks": load.running,
        "utilisation": load.utilisation,
    }


def is_alive(unit_id: str) -> bool:
    """Whether the unit may still be running what it holds (one query): the `live_unit` question
    the task transitions ask through the layer above (a requeue is refused while it holds the task)."""
    return ExecutionUnit.objects.filter(pk=unit_id, status__in=ALIVE).exists()


# A RUNNING task no live unit holds (no unit, or its unit is OFFLINE or gone): nobody runs it for the
# hub; the sweeper's orphan pass takes it back when its lease runs out, an operator may requeue it.
ORPHANED = Q(status=TaskStatus.RUNNING) & (Q(unit__isnull=True) | ~Q(unit__status__in=ALIVE))


def orphaned_running(queryset: QuerySet[Task] | None = None) -> QuerySet[Task]:
    qs = Task.objects.all() if queryset is None else queryset
    return qs.filter(ORPHANED)


def orphaned_count(running_by_status: dict[str | None, int]) -> int:
    """ORPHANED counted from `running_by_unit_status`: RUNNING on no unit, or on a unit not ALIVE."""
    return sum(n for status, n in running_by_status.items() if status not in ALIVE)


def unserved_types(limit: int = 20) -> list[dict[str, Any]]:
    """Task types with PENDING tasks and no unit of that type to claim them (none ONLINE or BUSY):
    one grouped query (PENDING by type on the claim index, less the claiming units' types)."""
    served = ExecutionUnit.objects.filter(status__in=CLAIMING).values("unit_type")
    pending = (
        Task.objects.filter(status=TaskStatus.PENDING)
        .exclude(task_type__in=served)
        .order_by()
        .values_list("task_type")
        .annotate(n=Count("id"))
    )
    return [{"taskType": t, "pending": n} for t, n in sorted(pending)][:limit]


def is_orphaned(task: Task) -> bool:
    """The list's flag (the unit is joined in): RUNNING and no live unit holds it."""
    if task.status != TaskStatus.RUNNING:
        return False
    return task.unit_id is None or task.unit is None or task.unit.status not in ALIVE
