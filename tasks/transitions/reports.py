"""What a unit reports on its live attempt: progress, a result, a failure; one at a time or many in
one request (`POST /tasks/reports`). Fenced by the one rule in `tasks.fencing`. The timeout of an
attempt fails it by the same path as a unit's failure report.

A batch is one transaction. The tasks named that the unit holds (or held last) are locked in one
statement, in id order (two batches never wait on each other in a cycle); the others are read
without a lock and refused by the fencing (a unit's refused reports on another unit's tasks lock no
row of that unit: they cannot hold up its sweep, failover or claims). Each item is fenced on its
own, by the rules of the single endpoints: a stale item is refused with its error and does not
fail the others. An item is all-or-nothing: its logs (under the per-task cap) and its outcome are
applied together or not at all. The writes are set-based: one INSERT of log lines, one UPDATE of
the tasks (`core.write`), one INSERT of history rows, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.errors import Conflict, DomainError, NotFound
from tasks import logs
from tasks.backoff import retry_delay
from tasks.entry import lease_deadline
from tasks.fencing import StaleAttempt, check_live, fence_outcome, live_lease
from tasks.models import Task, TaskExecutionLog
from tasks.states import ControlCommand, ReasonCode, TaskStatus
from tasks.transitions.core import Move, lock, lock_many, plan, save, write

S = TaskStatus
OUTCOME_STATUS = {"complete": S.COMPLETED, "fail": S.FAILED}


# --- one report ---------------------------------------------------------------------------------


def lock_live_attempt(task_id: int, unit_id: str, attempt: int) -> Task:
    """Lock the task and check the fencing token: the unit must hold the live attempt."""
    return check_live(lock(task_id), unit_id, attempt)


def progress_values(progress: int, now: datetime) -> dict[str, Any]:
    """What a progress report writes (the single endpoint's UPDATE, a batch's row in memory)."""
    return {"progress": progress, "updated_at": now}


def report_progress(task_id: int, *, unit_id: str, attempt: int, progress: int, now: datetime | None = None) -> Task:
    """Progress of the live attempt: one compare-and-set UPDATE, fenced by (unit, attempt)."""
    now = now or timezone.now()
    live = Task.objects.filter(pk=task_id, **live_lease(unit_id, attempt))
    if not live.update(**progress_values(progress, now)):
        task = Task.objects.filter(pk=task_id).first()
        if task is None:
            raise NotFound(f"Task {task_id} not found")
        raise StaleAttempt(task, unit_id, attempt)
    return Task.objects.get(pk=task_id)


def renew_lease(task_id: int, now: datetime) -> bool:
    """A report on a RUNNING task that no unit holds (a client's log lines) shows someone is on it:
    its lease starts again. Compare-and-set, so a task taken back or claimed meanwhile is left alone."""
    live = Task.objects.filter(pk=task_id, status=S.RUNNING, unit__isnull=True, lease_expires_at__isnull=False)
    return bool(live.update(lease_expires_at=lease_deadline(now)))


def apply_complete(task: Task, *, unit_id: str, result: Any, now: datetime) -> Move:
    """A live attempt's result, in memory (the caller writes it)."""
    task.progress = 100
    task.result = result
    return plan(
        task,
        S.COMPLETED,
        actor=Actor.unit(unit_id),
        reason="completed",
        code=ReasonCode.COMPLETED,
        now=now,
        fields={"progress", "result"},
    )


def apply_fail(
    task: Task,
    *,
    error: str,
    retryable: bool,
    now: datetime,
    actor: Actor,
    code: str | None = None,
    fields: Iterable[str] = (),
) -> Move:
    """A failed attempt, in memory. Retryable with retries left: FAILED with `next_retry_at` set
    (the retry mover brings it back to PENDING); otherwise FAILED for good (the dead set)."""
    will_retry = retryable and task.retry_count < task.max_retries
    retry_number = task.retry_count + 1 if will_retry else task.retry_count
    reason = error[:500]
    if will_retry:
        reason = f"{reason} (retry {retry_number}/{task.max_retries} scheduled)"
    elif retryable:
        reason = f"{reason} (no retries left: {task.max_retries} used)"
    else:
        reason = f"{reason} (not retryable)"
    code = code or (ReasonCode.RETRY_SCHEDULED if will_retry else ReasonCode.FAILED)
    changed = {"error", "retry_count", *fields} if will_retry else {"error", *fields}
    move = plan(task, S.FAILED, actor=actor, reason=reason, code=code, now=now, fields=changed)
    task.error = error[:10_000]
    if will_retry:
        task.retry_count = retry_number
        task.next_retry_at = now + retry_delay(retry_number)  # after the entry into FAILED cleared it
    return move


@transaction.atomic
def complete_attempt(
    task_id: int, *, unit_id: str, attempt: int, result: Any, now: datetime | None = None
) -> tuple[Task, bool]:
    """A unit's result. Returns (task, accepted_now); a repeat of the accepted report is a no-op."""
    now = now or timezone.now()
    task = lock(task_id)
    if not fence_outcome(task, unit_id, attempt, S.COMPLETED):
        return task, False
    return save(apply_complete(task, unit_id=unit_id, result=result, now=now)), True


@transaction.atomic
def fail_attempt(
    task_id: int, *, unit_id: str, attempt: int, error: str, retryable: bool, now: datetime | None = None
) -> tuple[Task, bool]:
    """A failed attempt (see `apply_fail`). Returns (task, accepted_now)."""
    now = now or timezone.now()
    task = lock(task_id)
    if not fence_outcome(task, unit_id, attempt, S.FAILED):
        return task, False
    return save(apply_fail(task, error=error, retryable=retryable, now=now, actor=Actor.unit(unit_id))), True


def fail_timed_out(tasks: Sequence[Task], *, now: datetime) -> None:
    """Locked RUNNING tasks past their timeout fail (retryable) as a unit's failure report fails
    them, their unit told to abort: one write for them all."""
    actor = Actor.system("timeouts")
    moves = []
    for task in tasks:
        task.pending_command = ControlCommand.ABORT
        moves.append(
            apply_fail(
                task,
                error=f"timed out after {task.timeout_seconds}s",
                retryable=True,
                now=now,
                actor=actor,
                code=ReasonCode.TIMED_OUT,
                fields={"pending_command"},
            )
        )
    write(moves)


# --- a batch of reports -------------------------------------------------------------------------


@dataclass
class _Plan:
    logs: list[TaskExecutionLog] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)


class Repeated(Conflict):
    """A second report for one task in one batch (each task gets one outcome per request)."""

    code = "repeated"


def report_attempts(
    unit_id: str, reports: list[dict[str, Any]], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Apply a unit's reports; one reply item per report, in request order. A report naming a
    task an earlier report of the same batch named is refused in its reply (code `repeated`)."""
    return _report(unit_id, reports, now or timezone.now())


@retry_on_lock_error()
@transaction.atomic
def _report(unit_id: str, reports: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    actor = Actor.unit(unit_id)
    locked = _lock_own(unit_id, [r["taskId"] for r in reports])
    replies: list[dict[str, Any]] = []
    live: list[tuple[dict[str, Any], Task, dict[str, Any]]] = []
    seen: set[int] = set()
    for report in reports:
        reply: dict[str, Any] = {
            "taskId": report["taskId"],
            "attempt": report["attempt"],
            "status": None,
            "accepted": False,
            "error": None,
        }
        replies.append(reply)
        if report["taskId"] in seen:
            reply["error"] = _error(Repeated("An earlier report of this batch names this task; send one per task"))
            continue
        seen.add(report["taskId"])
        try:
            task = _fence(locked.get(report["taskId"]), report, unit_id)
        except DomainError as exc:
            reply["error"] = _error(exc)
            continue
        if task is None:  # a repeat of the accepted result: answered again, nothing changes
            reply["status"] = locked[report["taskId"]].status
            continue
        live.append((report, task, reply))
    stored = logs.stored_log_counts([task.pk for report, task, _ in live if report.get("logs")])
    # The per-key log quota: one guarded UPDATE per owner key for the whole batch; lines of items
    # refused afterwards (the per-task cap, a refused move) are given back.
    wanted: dict[int | None, int] = {}
    for report, task, _ in live:
        if report.get("logs"):
            wanted[task.owner_id] = wanted.get(task.owner_id, 0) + len(report["logs"])
    over = logs.charge_owners(wanted)
    refunds: list[tuple[int | None, int]] = []
    batch = _Plan()
    for report, task, reply in live:
        entries = len(report.get("logs") or [])
        try:
            if entries and task.owner_id in over:
                raise logs.quota_exceeded(task.pk, entries)
            _plan_item(batch, report, task, stored.get(task.pk, 0), actor=actor, now=now)
        except DomainError as exc:
            reply["error"] = _error(exc)
            if entries and task.owner_id not in over:
                refunds.append((task.owner_id, entries))
            continue
        reply |= {"status": task.status, "accepted": True}
    if refunds:
        logs.refund_deleted(refunds)
    if batch.logs:
        TaskExecutionLog.objects.bulk_create(batch.logs)
    write(batch.moves)
    return replies


def _lock_own(unit_id: str, task_ids: list[int]) -> dict[int, Task]:
    """The named tasks: locked if they are the unit's (a plain read picks them first: a locking read
    filtered on the unit would lock every row it scans on MariaDB), read unlocked otherwise. A task
    that changed hands between the two reads is fenced on what the lock read."""
    own = list(Task.objects.filter(pk__in=task_ids, unit_id=unit_id).values_list("pk", flat=True))
    locked = lock_many(own) if own else {}
    others = [task_id for task_id in task_ids if task_id not in locked]
    return locked | {task.pk: task for task in Task.objects.filter(pk__in=others)} if others else locked


def _fence(task: Task | None, report: dict[str, Any], unit_id: str) -> Task | None:
    """The locked task if the report's attempt is live; None for a repeat of an accepted result."""
    if task is None:
        raise NotFound(f"Task {report['taskId']} not found")
    outcome = report["outcome"]
    if outcome in OUTCOME_STATUS:
        return task if fence_outcome(task, unit_id, report["attempt"], OUTCOME_STATUS[outcome]) else None
    return check_live(task, unit_id, report["attempt"])


def _plan_item(batch: _Plan, report: dict[str, Any], task: Task, stored: int, *, actor: Actor, now: datetime) -> None:
    """Check, then apply in memory: the item's logs first (fenced by the same attempt), then its
    outcome. Raises before changing anything if the logs would pass the cap."""
    entries = report.get("logs") or []
    if entries:
        logs.check_log_room(task.pk, stored, len(entries))
    outcome = report["outcome"]
    if outcome == "complete":
        move = apply_complete(task, unit_id=actor.unit_id or "", result=report["result"], now=now)
    elif outcome == "fail":
        move = apply_fail(task, error=report["error"], retryable=report["retryable"], now=now, actor=actor)
    else:
        values = progress_values(report["progress"], now)
        for name, value in values.items():
            setattr(task, name, value)
        move = Move(task, set(values))
    batch.logs += logs.log_rows(task.pk, report["attempt"], entries, actor=actor, now=now)
    batch.moves.append(move)


def _error(exc: DomainError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "details": exc.details or {}}
