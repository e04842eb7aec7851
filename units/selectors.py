"""Reads of execution units: which units a caller may see, their counts by status (the stats API,
the dashboard and `/metrics`), and whether a unit is live."""

from __future__ import annotations

from typing import Any, NamedTuple

from django.db.models import Count, QuerySet, Sum

from taskhub.base.viewer import Viewer
from tasks.models import Task
from tasks.states import TaskStatus
from units.models import ExecutionUnit, UnitStatus

# Units that may still be running what they hold (MAINTENANCE drains: it keeps its tasks).
LIVE_UNIT_STATUSES = (UnitStatus.ONLINE, UnitStatus.BUSY, UnitStatus.MAINTENANCE)


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


def unit_stats(queryset: QuerySet[ExecutionUnit]) -> dict[str, Any]:
    counts = unit_status_counts(queryset)
    online = (UnitStatus.ONLINE, UnitStatus.BUSY)
    capacity = sum(counts[s].capacity for s in online)
    running = Task.objects.filter(status=TaskStatus.RUNNING, unit__in=queryset.filter(status__in=online)).count()
    return {
        "total": sum(c.units for c in counts.values()),
        "byStatus": {s: c.units for s, c in counts.items()},
        "onlineCapacity": capacity,
        "runningTasks": running,
        "utilisation": round(running / capacity, 4) if capacity else 0.0,
    }


def is_live(unit_id: str) -> bool:
    """Whether the unit may still be running what it holds (one query)."""
    return ExecutionUnit.objects.filter(pk=unit_id, status__in=LIVE_UNIT_STATUSES).exists()
