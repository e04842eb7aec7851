"""The hub's small time-series: one row per minute per unit (its load) and per task type (its depth
and flow), written by the `rollup_minute` beat job and pruned after ROLLUP_RETENTION_HOURS. The
console draws its charts from it (inline SVG, no CDN) without reading the big tables over time.

The table belongs to the console app (its migration is there: console/0003_rollups); the model is
declared here, beside the job that writes it, so the job layer needs nothing from the interfaces.

Each run writes the last complete minute (idempotent: a second run of the same minute, even a
concurrent one, rewrites it: an upsert)
in a few grouped queries: tasks by (type, status); RUNNING tasks by unit; the units' capacity; the
minute's completions, failures and failovers by type from the history (through its primary key
range, as the dashboard reads it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count

from taskhub.base.dbretry import retry_on_lock_error
from tasks.models import TaskStatusHistory
from tasks.selectors import running_count_by, status_counts_by_type
from tasks.states import ReasonCode, TaskStatus
from units.models import ExecutionUnit
from units.states import ALIVE

S = TaskStatus
PRUNE_BATCH = 5000
UNIQUE = ["scope", "key", "minute"]


class RollupScope(models.TextChoices):
    UNIT = "unit"
    TYPE = "type"


class MinuteRollup(models.Model):
    minute = models.DateTimeField(help_text="Start of the minute (UTC) the row describes.")
    scope = models.CharField(max_length=8, choices=RollupScope.choices)
    key = models.CharField(max_length=64, help_text="The unit id, or the task type.")
    running = models.PositiveIntegerField(default=0)
    capacity = models.PositiveIntegerField(default=0)  # units only
    pending = models.PositiveIntegerField(default=0)  # types only: depth at the end of the minute
    completed = models.PositiveIntegerField(default=0)  # types only: during the minute
    failed = models.PositiveIntegerField(default=0)
    failed_over = models.PositiveIntegerField(default=0)

    class Meta:
        app_label = "console"
        constraints = [models.UniqueConstraint(fields=UNIQUE, name="rollup_scope_key_minute_uniq")]
        indexes = [models.Index(fields=["minute"], name="rollup_minute_idx")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} {self.minute:%Y-%m-%d %H:%M}"


def minute_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def _flow_by_type(start: datetime, end: datetime) -> dict[str, dict[str, int]]:
    """Completions, failures and failovers by task type in [start, end), from the history."""
    before = TaskStatusHistory.objects.filter(created_at__lt=start).order_by("-id").values_list("id", flat=True)
    floor = next(iter(before[:1]), 0)
    rows = (
        TaskStatusHistory.objects.filter(id__gt=floor, created_at__gte=start, created_at__lt=end)
        .filter(models.Q(to_status__in=[S.COMPLETED, S.FAILED]) | models.Q(reason_code=ReasonCode.FAILOVER))
        .order_by()
        .values("task__task_type", "to_status")
        .annotate(n=Count("id"))
    )
    out: dict[str, dict[str, int]] = {}
    field = {S.COMPLETED: "completed", S.FAILED: "failed", S.PENDING: "failed_over"}
    for row in rows:
        out.setdefault(row["task__task_type"], {})[field[row["to_status"]]] = row["n"]
    return out


def write_rollups(now: datetime) -> dict[str, Any]:
    """The `rollup_minute` job: the last complete minute's rows, then the prune."""
    end = minute_start(now)
    start = end - timedelta(minutes=1)
    by_type = status_counts_by_type()
    flow = _flow_by_type(start, end)
    running_by_unit = running_count_by("unit_id", unit_id__isnull=False)
    units = dict(ExecutionUnit.objects.filter(status__in=ALIVE).values_list("id", "capacity"))
    rows = [
        MinuteRollup(
            minute=start,
            scope=RollupScope.UNIT,
            key=unit_id,
            running=running_by_unit.get(unit_id, 0),
            capacity=units.get(unit_id, 0),
        )
        for unit_id in sorted(set(units) | set(running_by_unit))
    ]
    for task_type in sorted(set(by_type) | set(flow)):
        counts, moved = by_type.get(task_type, {}), flow.get(task_type, {})
        rows.append(
            MinuteRollup(
                minute=start,
                scope=RollupScope.TYPE,
                key=task_type[:64],
                running=counts.get(S.RUNNING, 0),
                pending=counts.get(S.PENDING, 0),
                completed=moved.get("completed", 0),
                failed=moved.get("failed", 0),
                failed_over=moved.get("failed_over", 0),
            )
        )
    _upsert(rows)
    return {"minute": start.isoformat(), "rows": len(rows), "pruned": prune_rollups(now)}


@retry_on_lock_error()
def _upsert(rows: list[MinuteRollup]) -> None:
    """One INSERT ... ON DUPLICATE KEY UPDATE (ON CONFLICT on SQLite): a second run of the minute,
    even at the same time as the first, rewrites its rows rather than failing or doubling them."""
    with transaction.atomic():
        MinuteRollup.objects.bulk_create(
            rows,
            batch_size=1000,
            update_conflicts=True,
            # MySQL's ON DUPLICATE KEY takes no target (any unique key); SQLite's ON CONFLICT needs one.
            unique_fields=UNIQUE if connection.features.supports_update_conflicts_with_target else None,
            update_fields=["running", "capacity", "pending", "completed", "failed", "failed_over"],
        )


def prune_rollups(now: datetime) -> int:
    cutoff = now - timedelta(hours=settings.ROLLUP_RETENTION_HOURS)
    deleted = 0
    while True:
        ids = list(MinuteRollup.objects.filter(minute__lt=cutoff).values_list("id", flat=True)[:PRUNE_BATCH])
        if not ids:
            return deleted
        deleted += MinuteRollup.objects.filter(id__in=ids).delete()[0]


def last_rollup_minute() -> datetime | None:
    """The newest minute written (the index on minute answers it)."""
    return MinuteRollup.objects.order_by("-minute").values_list("minute", flat=True).first()


def series(scope: str, key: str, now: datetime, minutes: int = 60) -> list[MinuteRollup | None]:
    """The last `minutes` minutes of one unit's or type's rows, oldest first (None: no row)."""
    end = minute_start(now)
    start = end - timedelta(minutes=minutes)
    found = {
        row.minute: row for row in MinuteRollup.objects.filter(scope=scope, key=key, minute__gte=start, minute__lt=end)
    }
    return [found.get(start + timedelta(minutes=i)) for i in range(minutes)]
