"""Retention: finished tasks (with their history and logs) are deleted after a retention period.

`retention_periods()` is the ONE place periods come from: the global settings TASK_RETENTION_DAYS,
and TASK_DEAD_RETENTION_DAYS for the dead set (FAILED with no retry due), unless the task's queue
sets its own (`QueueSettings.retention_seconds`, `dead_retention_seconds`; each falls back to its
global one on its own). A COMPLETED or CANCELLED task is pruned once its `finished_at` is older
than its queue's period; a dead FAILED task after the dead period; nothing else is.

`prune_tasks(now)` is the beat job: it walks the table by primary key in chunks (keyset: `id >
last ORDER BY id LIMIT n`, a range of the clustered index, no scan of the rest), re-checks and locks
the chunk's prunable rows with SKIP LOCKED (a claim or an operator holding one wins; it is looked at
again next run) and deletes them with their history and logs, one short transaction per chunk.
The walk ends at the first chunk whose tasks were all created after the shortest period of any
queue (ids grow with creation time: nothing later can be due) or at the end of the table. A run
stops after MAX_CHUNKS chunks or MAX_SECONDS and the next run goes on from where it stopped (a
cursor in the cache, a hint only: lost, the walk starts again from the first id; a run that starts
past id 0 wraps round to it), so rows kept longer than the shortest period (a queue that keeps a
year beside one that keeps an hour) cannot keep the walk from ever reaching the later ones. It
rests between chunks (PAUSE_RATIO) so claims running beside it keep their latency.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q

from taskhub.base import metrics
from taskhub.base.dbretry import retry_on_lock_error
from tasks.models import QueueSettings, Task, TaskExecutionLog, TaskStatusHistory
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


@dataclass(frozen=True)
class RetentionTable:
    """The global periods and those of every queue that sets its own."""

    default: Retention
    queues: dict[str, Retention]

    def for_type(self, task_type: str) -> Retention:
        return self.queues.get(task_type, self.default)

    def shortest(self) -> timedelta:
        """No period of any queue is shorter: tasks created after now minus this are never due."""
        return min(p for r in (self.default, *self.queues.values()) for p in (r.finished, r.dead))


def retention_periods(task_types: Iterable[str] | None = None) -> RetentionTable:
    """The periods (of `task_types`' queues, or of all): one query of the settings rows that set one."""
    default = Retention(
        finished=timedelta(days=settings.TASK_RETENTION_DAYS),
        dead=timedelta(days=settings.TASK_DEAD_RETENTION_DAYS),
    )
    rows = QueueSettings.objects.filter(Q(retention_seconds__isnull=False) | Q(dead_retention_seconds__isnull=False))
    if task_types is not None:
        rows = rows.filter(pk__in=list(task_types))
    queues = {
        task_type: Retention(
            finished=default.finished if finished is None else timedelta(seconds=finished),
            dead=default.dead if dead is None else timedelta(seconds=dead),
        )
        for task_type, finished, dead in rows.values_list("task_type", "retention_seconds", "dead_retention_seconds")
    }
    return RetentionTable(default, queues)


def retention_for(task_type: str) -> Retention:
    """How long finished tasks of `task_type` are kept."""
    return retention_periods([task_type]).for_type(task_type)


def _due(row: tuple[int, str, str, datetime | None, datetime | None], now: datetime, periods: Retention) -> bool:
    _, _, status, next_retry_at, finished_at = row
    if finished_at is None:
        return False
    if status in (S.COMPLETED, S.CANCELLED):
        return finished_at <= now - periods.finished
    return status == S.FAILED and next_retry_at is None and finished_at <= now - periods.dead


CURSOR_KEY = "taskhub:retention:cursor"


def _read_cursor() -> int:
    try:
        return int(cache.get(CURSOR_KEY) or 0)
    except Exception:  # the cache is down: the cursor is a hint, the walk starts from the first id
        return 0


def _save_cursor(last: int) -> None:
    with contextlib.suppress(Exception):  # as above: the next run starts from the first id
        cache.set(CURSOR_KEY, last, timeout=24 * 3600)


def prune_tasks(now: datetime) -> dict[str, int]:
    """Delete what retention says is due, in chunks; returns what was deleted."""
    table = retention_periods()
    horizon = now - table.shortest()
    totals = {"tasks": 0, "history": 0, "logs": 0}
    by_queue: Counter[tuple[str, str]] = Counter()
    start = _read_cursor()
    last, until = start, None  # after wrapping round: up to the id this run started from
    started = time.monotonic()
    for _ in range(MAX_CHUNKS):
        chunk = Task.objects.filter(id__gt=last)
        if until is not None:
            chunk = chunk.filter(id__lte=until)
        rows = list(
            chunk.order_by("id").values_list("id", "task_type", "status", "next_retry_at", "finished_at", "created_at")[
                :CHUNK
            ]
        )
        if rows:
            last = rows[-1][0]
            types = {row[0]: row[1] for row in rows if _due(row[:5], now, table.for_type(row[1]))}  # type: ignore[arg-type]
            if types:
                chunk_started = time.monotonic()
                counts, deleted = _delete_chunk(list(types), now)
                for name, n in counts.items():
                    totals[name] += n
                for task_id, status in deleted:
                    by_queue[(types[task_id], "dead" if status == S.FAILED else "finished")] += 1
                time.sleep((time.monotonic() - chunk_started) * PAUSE_RATIO)
        if not rows or len(rows) < CHUNK or rows[0][5] > horizon:  # the end of what can be due
            if until is None and start > 0:
                last, until = 0, start  # wrap round: the ids below the one this run started from
                continue
            last = 0
            break
        if time.monotonic() - started > MAX_SECONDS:
            break
    _save_cursor(last)
    metrics.record_pruned(totals, by_queue)
    return totals


_PRUNABLE = Q(status__in=[S.COMPLETED, S.CANCELLED]) | Q(status=S.FAILED, next_retry_at__isnull=True)


@retry_on_lock_error()
@transaction.atomic
def _delete_chunk(ids: list[int], now: datetime) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """Delete those of `ids` still prunable and not locked; returns the counts and (id, status)
    of the tasks deleted."""
    # Locked and re-checked: a dead task retried by hand since the read above is not deleted.
    rows = list(
        Task.objects.select_for_update(skip_locked=True).filter(_PRUNABLE, id__in=ids).values_list("id", "status")
    )
    if not rows:
        return {}, []
    locked = [task_id for task_id, _ in rows]
    # One DELETE each. History and logs are a task's only dependants with a foreign key (a schedule's
    # fires keep the ids of their tasks without one), so the tasks go without Django's collector
    # loading every row first.
    history = TaskStatusHistory.objects.filter(task_id__in=locked).delete()[0]
    logs = TaskExecutionLog.objects.filter(task_id__in=locked).delete()[0]
    tasks = Task.objects.filter(id__in=locked)._raw_delete(Task.objects.db)
    return {"tasks": tasks, "history": history, "logs": logs}, rows
