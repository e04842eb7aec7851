"""Retention: finished tasks (with their history and logs) are deleted after a retention period.

`retention_for(task_type)` is the ONE place a period comes from (today the global settings
TASK_RETENTION_DAYS, and TASK_DEAD_RETENTION_DAYS for the dead set: FAILED with no retry due; per
queue settings point it elsewhere). A COMPLETED or CANCELLED task is pruned once its `finished_at`
is older than its type's period; a dead FAILED task after the dead period; nothing else is.

`prune_tasks(now)` is the beat job: it walks the table by primary key in chunks (keyset: `id >
last ORDER BY id LIMIT n`, a range of the clustered index, no scan of the rest), re-checks and locks
the chunk's prunable rows with SKIP LOCKED (a claim or an operator holding one wins; it is looked at
again next run) and deletes them with their history and logs, one short transaction per chunk.
It stops at the first chunk whose tasks were all created after the shortest period (ids grow with
creation time: nothing later can be due), or after MAX_CHUNKS chunks or MAX_SECONDS (the next run
goes on), and rests between chunks (PAUSE_RATIO) so claims running beside it keep their latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from taskhub.base import metrics
from taskhub.base.dbretry import retry_on_lock_error
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.states import TaskStatus

S = TaskStatus
# Measured on MariaDB beside claims (BENCHMARKS.md, "Retention and schedules"): 250-row chunks with a
# rest of 3x each chunk's time prune ~740 tasks/s with no visible effect on claim latency; 500 with
# a rest of 1x prune ~2,900/s but double the claims' p99.
CHUNK = 250
MAX_CHUNKS = 800  # per run: at most this many rows read
MAX_SECONDS = 20.0  # per run; beat starts the next one (every 30 s)
# After each chunk deleted the job rests this many times as long as the chunk took, so the
# database spends at most a quarter of one connection's time on the pruner.
PAUSE_RATIO = 3.0


@dataclass(frozen=True)
class Retention:
    finished: timedelta  # COMPLETED and CANCELLED
    dead: timedelta  # FAILED with no retry due


def retention_for(task_type: str) -> Retention:
    """How long finished tasks of `task_type` are kept (the one source of the periods)."""
    return Retention(
        finished=timedelta(days=settings.TASK_RETENTION_DAYS),
        dead=timedelta(days=settings.TASK_DEAD_RETENTION_DAYS),
    )


def shortest_retention() -> timedelta:
    """No period of any type is shorter: tasks created after now minus this are never due."""
    periods = retention_for("")
    return min(periods.finished, periods.dead)


def _due(row: tuple[int, str, str, datetime | None, datetime | None], now: datetime, periods: Retention) -> bool:
    _, _, status, next_retry_at, finished_at = row
    if finished_at is None:
        return False
    if status in (S.COMPLETED, S.CANCELLED):
        return finished_at <= now - periods.finished
    return status == S.FAILED and next_retry_at is None and finished_at <= now - periods.dead


def prune_tasks(now: datetime) -> dict[str, int]:
    """Delete what retention says is due, in chunks; returns what was deleted."""
    periods = cache(retention_for)  # one answer per type per run
    horizon = now - shortest_retention()
    totals = {"tasks": 0, "history": 0, "logs": 0}
    last = 0
    started = time.monotonic()
    for _ in range(MAX_CHUNKS):
        rows = list(
            Task.objects.filter(id__gt=last)
            .order_by("id")
            .values_list("id", "task_type", "status", "next_retry_at", "finished_at", "created_at")[:CHUNK]
        )
        if not rows:
            break
        last = rows[-1][0]
        due = [row[0] for row in rows if _due(row[:5], now, periods(row[1]))]  # type: ignore[arg-type]
        if due:
            chunk_started = time.monotonic()
            for name, n in _delete_chunk(due, now).items():
                totals[name] += n
            time.sleep((time.monotonic() - chunk_started) * PAUSE_RATIO)
        if len(rows) < CHUNK or rows[0][5] > horizon or time.monotonic() - started > MAX_SECONDS:
            break
    metrics.record_pruned(totals)
    return totals


_PRUNABLE = Q(status__in=[S.COMPLETED, S.CANCELLED]) | Q(status=S.FAILED, next_retry_at__isnull=True)


@retry_on_lock_error()
@transaction.atomic
def _delete_chunk(ids: list[int], now: datetime) -> dict[str, int]:
    # Locked and re-checked: a dead task retried by hand since the read above is not deleted.
    locked = list(
        Task.objects.select_for_update(skip_locked=True).filter(_PRUNABLE, id__in=ids).values_list("id", flat=True)
    )
    if not locked:
        return {}
    # One DELETE each. History and logs are a task's only dependants with a foreign key (a schedule's
    # fires keep the ids of their tasks without one), so the tasks go without Django's collector
    # loading every row first.
    history = TaskStatusHistory.objects.filter(task_id__in=locked).delete()[0]
    logs = TaskExecutionLog.objects.filter(task_id__in=locked).delete()[0]
    tasks = Task.objects.filter(id__in=locked)._raw_delete(Task.objects.db)
    return {"tasks": tasks, "history": history, "logs": logs}
