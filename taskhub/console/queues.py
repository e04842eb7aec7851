"""What the console's queue pages show (a queue is a task type): the overview the API gives
(units.queues.queue_overview: counts, oldest due age, units serving, settings), the queue's units,
and its last hour per minute: depth and throughput from the rollups (taskhub/jobs/rollups.py), queue
wait and run time p50/p95 from the history.

The percentiles are read from the hour's history of the queue's tasks, through the primary-key range
the dashboard reads (history_floor_id): each claim's queue wait (claim time - when the task last
became PENDING, or its scheduled time if later) and each attempt's run time (its COMPLETED or FAILED
row - its claim), as the metrics' histograms define them. The row before a claim is the task's entry
into PENDING, and the row before an attempt's outcome is its claim (history is a gap-free chain:
I7), so one correlated read on the (task, id) index gives each row's start. At most MAX_ROWS rows,
the newest: a page load stays bounded however busy the hub.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils.html import format_html

from taskhub.base.viewer import OPERATOR
from taskhub.console.charts import MINUTES, Series, chart, empty_chart, seconds
from taskhub.console.dashboard import history_floor_id
from taskhub.jobs.rollups import RollupScope, minute_start, series
from tasks.models import TaskStatusHistory
from tasks.states import TaskStatus
from units.models import ExecutionUnit
from units.queues import queue_detail, queue_overview

S = TaskStatus
MAX_ROWS = 20_000
UNITS_SHOWN = 50


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least `q` of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def timings_by_minute(task_type: str, now: datetime, minutes: int = MINUTES) -> dict[str, Any]:
    """Per minute of the last `minutes` (oldest first): queue wait and run time p50 and p95 in
    seconds (None: nothing that minute), and whether the newest MAX_ROWS rows were all it read."""
    end = minute_start(now)
    start = end - timedelta(minutes=minutes)
    before = TaskStatusHistory.objects.filter(task_id=OuterRef("task_id"), id__lt=OuterRef("id")).order_by("-id")
    rows = list(
        TaskStatusHistory.objects.filter(
            id__gt=history_floor_id(start), created_at__gte=start, created_at__lt=end, task__task_type=task_type
        )
        .filter(Q(to_status=S.RUNNING) | Q(from_status=S.RUNNING, to_status__in=[S.COMPLETED, S.FAILED]))
        .annotate(since=Subquery(before.values("created_at")[:1]))
        .order_by("-id")
        .values_list("to_status", "attempt", "created_at", "since", "task__scheduled_at")[: MAX_ROWS + 1]
    )
    capped = len(rows) > MAX_ROWS
    waits: list[list[float]] = [[] for _ in range(minutes)]
    runs: list[list[float]] = [[] for _ in range(minutes)]
    for to_status, attempt, at, since, scheduled_at in rows[:MAX_ROWS]:
        if since is None:
            continue
        index = int((at - start).total_seconds() // 60)
        if not 0 <= index < minutes:
            continue
        if to_status == S.RUNNING:
            due = max(since, scheduled_at) if attempt == 1 and scheduled_at is not None else since
            waits[index].append(max((at - due).total_seconds(), 0.0))
        else:
            runs[index].append(max((at - since).total_seconds(), 0.0))
    return {
        "start": start,
        "wait_p50": [percentile(w, 0.5) for w in waits],
        "wait_p95": [percentile(w, 0.95) for w in waits],
        "run_p50": [percentile(r, 0.5) for r in runs],
        "run_p95": [percentile(r, 0.95) for r in runs],
        "claims": sum(len(w) for w in waits),
        "ends": sum(len(r) for r in runs),
        "capped": capped,
    }


def queue_charts(task_type: str, now: datetime, minutes: int = MINUTES) -> dict[str, Any]:
    """The queue page's four charts (inline SVG) and the figures of the hour under them."""
    rows = series(RollupScope.TYPE, task_type, now, minutes)
    start = minute_start(now) - timedelta(minutes=minutes)
    timings = timings_by_minute(task_type, now, minutes)
    out: dict[str, Any] = {"timings": timings}
    if any(rows):
        out["depth"] = chart(
            start=start,
            lines=[
                Series("PENDING", "pending", [r.pending if r else None for r in rows]),
                Series("RUNNING", "running", [r.running if r else None for r in rows]),
            ],
            label="Depth by status (tasks at the end of each minute)",
            chart_id="th-queue-depth",
        )
        out["throughput"] = chart(
            start=start,
            bars=[
                Series("completed", "completed", [r.completed if r else 0 for r in rows]),
                Series("failed", "failed", [r.failed if r else 0 for r in rows]),
                Series("failed over", "failed_over", [r.failed_over if r else 0 for r in rows]),
            ],
            label="Throughput (per minute)",
            chart_id="th-queue-throughput",
        )
    else:
        out["depth"] = empty_chart("th-queue-depth", "Depth")
        out["throughput"] = empty_chart("th-queue-throughput", "Throughput")
    for name, label in (("wait", "Queue wait (due to claimed)"), ("run", "Run time (claim to outcome)")):
        if not any(v is not None for v in timings[f"{name}_p95"]):
            out[name] = format_html(
                '<p class="th-muted" id="th-queue-{}-empty">{}: none in the last hour\'s complete minutes.</p>',
                name,
                label,
            )
            continue
        out[name] = chart(
            start=start,
            lines=[
                Series("p50", "p50", timings[f"{name}_p50"]),
                Series("p95", "p95", timings[f"{name}_p95"]),
            ],
            label=label,
            chart_id=f"th-queue-{name}",
            fmt=seconds,
        )
    return out


def queue_units(task_type: str, running: Any) -> QuerySet[ExecutionUnit]:
    """The units of the queue's type (every status), those that claim first, with their load."""
    return (
        ExecutionUnit.objects.filter(unit_type=task_type)
        .annotate(running=running)
        .order_by("status", "id")[:UNITS_SHOWN]
    )


def queue_list(now: datetime) -> list[dict[str, Any]]:
    """Every queue: what the API's GET /queues says of it, as an operator sees it."""
    return queue_overview(OPERATOR, now=now)


def queue_page(task_type: str, now: datetime) -> dict[str, Any]:
    return queue_detail(OPERATOR, task_type, now=now)
