"""The tasks' periodic jobs: automatic retries, timeouts, log retention. Plain functions of `now`,
idempotent and safe when two run at once (rows are taken with SKIP LOCKED and changed with
compare-and-set conditions). The job registry (taskhub.jobs) names them for Celery beat and
`manage.py runjob NAME`; the heartbeat sweeper is the units' (units.sweeper)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from taskhub.base.dbretry import retry_on_lock_error
from tasks import logs
from tasks.models import Task, TaskExecutionLog
from tasks.states import TaskStatus
from tasks.transitions import bulk, reports

S = TaskStatus
BATCH = 1000


MAX_BATCHES = 100  # per run; a backlog larger than this waits for the next run


def _drain(batch: Callable[[datetime], int], now: datetime) -> int:
    """Run `batch` (one transaction each) until a short batch says the backlog is empty."""
    total = 0
    for _ in range(MAX_BATCHES):
        done = batch(now)
        total += done
        if done < BATCH:
            break
    return total


def move_due_retries(now: datetime) -> dict[str, int]:
    """FAILED tasks whose backoff has elapsed -> PENDING."""
    return {"retried": _drain(_retry_batch, now)}


@retry_on_lock_error()
@transaction.atomic
def _retry_batch(now: datetime) -> int:
    return bulk.retry_due(now, BATCH)


def fail_timeouts(now: datetime) -> dict[str, int]:
    """RUNNING tasks past timeoutSeconds fail (retryable), as a unit's failure report fails them."""
    return {"timedOut": _drain(_timeout_batch, now)}


@retry_on_lock_error()
@transaction.atomic
def _timeout_batch(now: datetime) -> int:
    tasks = list(
        Task.objects.select_for_update(skip_locked=True)
        .filter(status=S.RUNNING, timeout_at__lte=now)
        .order_by("timeout_at")[:BATCH]
    )
    reports.fail_timed_out(tasks, now=now)
    return len(tasks)


def purge_old_logs(now: datetime) -> dict[str, int]:
    """Delete execution logs older than TASK_LOG_RETENTION_DAYS, in batches."""
    cutoff = now - timedelta(days=settings.TASK_LOG_RETENTION_DAYS)
    deleted = 0
    while True:
        rows = list(TaskExecutionLog.objects.filter(created_at__lt=cutoff).values_list("id", "task__owner_id")[:BATCH])
        if not rows:
            return {"deleted": deleted}
        with transaction.atomic():
            n = TaskExecutionLog.objects.filter(id__in=[r[0] for r in rows]).delete()[0]
            logs.refund_deleted([(owner, 1) for _, owner in rows] if n == len(rows) else [])
        deleted += n
