"""Every write of Task.status happens here.

Each function locks the task row (`select_for_update` inside `transaction.atomic()`), checks the
move against the one table in `tasks.states`, saves with `update_fields` and writes the history row
in the same transaction. The API, the admin, the unit endpoints and the Celery jobs call these; set-
based moves for the jobs live in `tasks.scheduling` and use `record_history_bulk` from here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from taskhub.base import metrics
from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict, NotFound
from taskhub.base.sql import insert_rows
from tasks import sql
from tasks.backoff import retry_delay
from tasks.models import ControlCommand, Task, TaskStatusHistory
from tasks.states import SYSTEM_ONLY, TaskStatus, allowed_targets, can_transition

S = TaskStatus
# Whether a unit (by id) may still be running what it holds: the units' question, asked by the
# layer above (which sees both) and passed down, since tasks never import units.
LiveUnit = Callable[[str], bool]


def assume_live(unit_id: str) -> bool:
    """The cautious answer for a caller that did not ask the units: the holder may be live."""
    return True


class IllegalTransition(Conflict):
    code = "illegal_transition"

    def __init__(self, task: Task, target: str, *, system: bool = False, held: bool = True) -> None:
        """`held`: a live unit holds the task (`held_by_live_unit`); allowedTargets depend on it."""
        allowed = allowed_targets(task.status, system=system, held=held)
        message = (
            f"Task {task.pk} cannot go from {task.status} to {target}; "
            f"allowed: {', '.join(allowed) if allowed else 'none (terminal state)'}"
        )
        details: dict[str, Any] = {"currentStatus": task.status, "requestedStatus": target, "allowedTargets": allowed}
        if held and (task.status, target) in SYSTEM_ONLY:
            message += (
                f". Unit {task.unit_id} holds it and is live: the hub takes a task back from its unit only when "
                f"the unit stops heartbeating (for {settings.UNIT_HEARTBEAT_TIMEOUT:g}s). To stop it now, PUT "
                "status CANCELLED; to run it again later, PUT status PAUSED, then PENDING"
            )
            details["unitId"] = task.unit_id
        super().__init__(message, details=details)


def held_by_live_unit(task: Task, live_unit: LiveUnit = assume_live) -> bool:
    """Whether a live unit holds this RUNNING task (it heartbeats, so it may be running it): then
    only the hub may take it back. `live_unit` is asked only about a RUNNING task with a unit."""
    return task.status == S.RUNNING and task.unit_id is not None and live_unit(task.unit_id)


def _lock(task_id: int, queryset: QuerySet[Task] | None = None) -> Task:
    qs = (queryset if queryset is not None else Task.objects.all()).select_for_update()
    try:
        return qs.get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"Task {task_id} not found") from None


def new_history(
    task_id: int,
    attempt: int,
    unit_id: str | None,
    source: str | None,
    target: str,
    *,
    actor: Actor,
    reason: str,
    now: datetime,
) -> TaskStatusHistory:
    """The one place a history row is built (per-row and set-based moves alike)."""
    return TaskStatusHistory(
        task_id=task_id,
        from_status=source,
        to_status=target,
        reason=reason[:2000],
        actor_type=actor.type,
        actor=actor.label[:150],
        unit_id=unit_id,
        attempt=attempt,
        created_at=now,
    )


def history_row(
    task: Task, source: str | None, target: str, *, actor: Actor, reason: str, now: datetime
) -> TaskStatusHistory:
    unit_id = actor.unit_id or task.unit_id
    return new_history(task.pk, task.attempt, unit_id, source, target, actor=actor, reason=reason, now=now)


def record_history_bulk(rows: Sequence[TaskStatusHistory]) -> None:
    TaskStatusHistory.objects.bulk_create(rows, batch_size=1000)


def _apply(
    task: Task,
    target: str,
    *,
    actor: Actor,
    reason: str,
    now: datetime,
    fields: Iterable[str] = (),
    live_unit: LiveUnit = assume_live,
) -> tuple[set[str], TaskStatusHistory]:
    """Check the table and apply `target`'s entry effects in memory. Returns the fields to save
    and the history row to write; the caller holds the lock and saves (`_save`, or `save_reported`
    for many rows at once)."""
    source = task.status
    if not can_transition(source, target, system=actor.is_system):
        # Only a move the table refuses while a unit holds the task asks who holds it (a query):
        # units' reports and the other moves read nothing more.
        held = held_by_live_unit(task, live_unit)
        if not can_transition(source, target, system=actor.is_system, held=held):
            raise IllegalTransition(task, target, system=actor.is_system, held=held)
    changed = set(fields) | enter_state(task, target, now)
    task.status = target
    task.updated_at = now
    return changed | {"status", "updated_at"}, history_row(task, source, target, actor=actor, reason=reason, now=now)


def _save(task: Task, move: tuple[set[str], TaskStatusHistory]) -> Task:
    changed, history = move
    task.save(update_fields=sorted(changed))
    history.save()
    return task


def _move(
    task: Task,
    target: str,
    *,
    actor: Actor,
    reason: str,
    now: datetime,
    fields: Iterable[str] = (),
    live_unit: LiveUnit = assume_live,
) -> Task:
    """Check the table, apply `target`'s entry effects, save, write history. Caller holds the lock."""
    return _save(task, _apply(task, target, actor=actor, reason=reason, now=now, fields=fields, live_unit=live_unit))


MAX_GROUPED_UPDATES = 4


def save_reported(moves: Sequence[tuple[Task, set[str]]], history: Sequence[TaskStatusHistory]) -> None:
    """Write many locked rows changed in memory (by `_apply` and friends), and their history rows
    in one INSERT. Rows that got the same values (a batch of results alike) share one UPDATE ...
    WHERE id IN (...); past MAX_GROUPED_UPDATES groups, one UPDATE with a CASE per field serves them
    all (fields a row did not change are written back as read under its lock). Either way the
    statements are bounded per batch, not per row."""
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for task, changed in moves:
        values = {name: getattr(task, name) for name in sorted(changed)}
        key = json.dumps(values, sort_keys=True, default=repr)
        groups.setdefault(key, (values, []))[1].append(task.pk)
    if len(groups) <= MAX_GROUPED_UPDATES:
        for values, ids in groups.values():
            Task.objects.filter(pk__in=ids).update(**values)
    else:
        fields = sorted(set().union(*(changed for _, changed in moves)))
        Task.objects.bulk_update([task for task, _ in moves], fields)
    record_history_bulk(history)


def lease_deadline(now: datetime) -> datetime:
    """Until when a RUNNING task that no unit holds is left alone without a report on it: as long
    as a unit may stay silent before its tasks fail over."""
    return now + timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT)


def renew_lease(task_id: int, now: datetime) -> bool:
    """A report on a RUNNING task that no unit holds (a client's log lines) shows someone is on it:
    its lease starts again. Compare-and-set, so a task taken back or claimed meanwhile is left alone."""
    live = Task.objects.filter(pk=task_id, status=S.RUNNING, unit__isnull=True, lease_expires_at__isnull=False)
    return bool(live.update(lease_expires_at=lease_deadline(now)))


def enter_state(task: Task, target: str, now: datetime) -> set[str]:
    """Fields every entry into `target` sets, whoever causes it (also the set-based claim).
    Sets them on `task` in memory and returns their names; the caller saves."""
    # A unit's heartbeat keeps the tasks it holds; a RUNNING task that no unit holds has a lease of
    # its own instead. Every other entry (the claim too: it sets the unit first) clears it.
    task.lease_expires_at = lease_deadline(now) if target == S.RUNNING and task.unit_id is None else None
    return {"lease_expires_at"} | _entry_fields(task, target, now)


def _entry_fields(task: Task, target: str, now: datetime) -> set[str]:
    if target == S.PENDING:
        task.available_at = max(now, task.scheduled_at) if task.scheduled_at else now
        task.next_retry_at = None
        task.timeout_at = None
        task.finished_at = None
        return {"available_at", "next_retry_at", "timeout_at", "finished_at"}
    if target == S.RUNNING:
        task.attempt += 1
        task.started_at = now
        task.progress = 0
        task.pending_command = ""
        task.timeout_at = now + timedelta(seconds=task.timeout_seconds) if task.timeout_seconds else None
        task.next_retry_at = None
        return {"attempt", "started_at", "progress", "pending_command", "timeout_at", "next_retry_at"}
    if target in (S.COMPLETED, S.CANCELLED, S.FAILED):
        task.finished_at = now
        task.timeout_at = None
        task.next_retry_at = None
        return {"finished_at", "timeout_at", "next_retry_at"}
    if target == S.PAUSED:
        task.next_retry_at = None
        return {"next_retry_at"}
    return set()


def _release_from_unit(task: Task, command: str) -> set[str]:
    """A RUNNING task leaving its unit's hands: tell the unit (in heartbeat replies) to stop."""
    if task.status == S.RUNNING and task.unit_id:
        task.pending_command = command
        return {"pending_command"}
    return set()


# --- Creation -------------------------------------------------------------------------------


def build_task(*, now: datetime, **fields: Any) -> Task:
    """A new PENDING task in memory, with the creation defaults (one place for single and batch)."""
    fields.setdefault("max_retries", settings.TASK_MAX_RETRY_COUNT)
    task = Task(status=S.PENDING, created_at=now, updated_at=now, **fields)
    enter_state(task, S.PENDING, now)  # available_at from scheduled_at, as every entry into PENDING
    return task


@transaction.atomic
def create_task(*, actor: Actor, now: datetime | None = None, **fields: Any) -> Task:
    now = now or timezone.now()
    task = build_task(now=now, **fields)
    task.save(force_insert=True)
    history_row(task, None, S.PENDING, actor=actor, reason="created", now=now).save()
    return task


@transaction.atomic
def create_tasks(rows: Sequence[dict[str, Any]], *, actor: Actor, now: datetime | None = None) -> list[Task]:
    """Many tasks at once: one INSERT of tasks, one of their "created" history rows."""
    now = now or timezone.now()
    tasks = [build_task(now=now, **row) for row in rows]
    if connection.features.can_return_rows_from_bulk_insert:  # SQLite, MariaDB 10.5+: INSERT ... RETURNING
        Task.objects.bulk_create(tasks)
    else:  # MySQL cannot hand back the ids of a multi-row INSERT
        for task in tasks:
            task.save(force_insert=True)
    record_history_bulk([history_row(t, None, S.PENDING, actor=actor, reason="created", now=now) for t in tasks])
    return tasks


# --- The claim's lease ------------------------------------------------------------------------


def lease_to_unit(unit_pk: str, unit_type: str, wanted: int, now: datetime) -> list[Task]:
    """PENDING -> RUNNING for up to `wanted` claimable tasks of `unit_type`, leased to the unit (the
    claim; the caller holds the unit row lock). The locked rows are what the unit gets back: the
    entry effects of RUNNING (`enter_state`) are applied to them in memory, and one UPDATE per
    distinct timeout (the only per-row value besides the attempt increment) writes the same values;
    one INSERT writes their history rows."""
    tasks = sql.lock_claimable(unit_type, now, wanted) if wanted > 0 else []
    groups: dict[int | None, list[Task]] = defaultdict(list)
    changed: set[str] = set()
    for task in tasks:
        task.unit_id = unit_pk
        task.status = S.RUNNING
        task.updated_at = now
        changed = enter_state(task, S.RUNNING, now)
        groups[task.timeout_seconds].append(task)
    for group in groups.values():
        sql.update_claimed(group, sorted(changed - {"attempt"}), unit_pk, now)
    actor = Actor.unit(unit_pk)
    insert_rows(
        TaskStatusHistory,
        [
            new_history(task.pk, task.attempt, unit_pk, S.PENDING, S.RUNNING, actor=actor, reason="claimed", now=now)
            for task in tasks
        ],
    )
    return tasks


# --- Operator / client transitions --------------------------------------------------------


def change_status(
    task_id: int,
    target: str,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """`PUT /tasks/{id}/status`: dispatch to the transition that means `target`."""
    actions: dict[str, Any] = {
        S.RUNNING: start_task,
        S.PAUSED: pause_task,
        S.CANCELLED: cancel_task,
        S.COMPLETED: complete_task,
        S.FAILED: fail_task,
    }
    action = actions.get(target)
    if action is not None:
        return action(task_id, actor=actor, reason=reason, now=now, queryset=queryset, live_unit=live_unit)
    if target == S.PENDING:
        return reopen_task(task_id, actor=actor, reason=reason, now=now, queryset=queryset, live_unit=live_unit)
    raise Conflict(f"Unknown status {target}")


@transaction.atomic
def start_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """PENDING -> RUNNING by a client (the seed's `PUT status RUNNING`), held by no unit: it gets a
    lease of its own (`enter_state`), renewed by the client's log lines; when it runs out, the
    sweeper takes the task back."""
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    if task.status == S.PENDING:
        # Its last holder, if any, does not hold it now. (A start the table refuses must not forget
        # the holder: the 409 tells whether a live unit holds the task.)
        task.unit = None
    return _move(
        task, S.RUNNING, actor=actor, reason=reason or "started", now=now, fields={"unit"}, live_unit=live_unit
    )


@transaction.atomic
def pause_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """Pause. A RUNNING task is first taken back from its unit (RUNNING -> PENDING, which fences
    the attempt and queues a `pause` command for the unit), then paused: two rows, one chain."""
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    if task.status == S.RUNNING:
        fields = _release_from_unit(task, ControlCommand.PAUSE)
        _move(
            task,
            S.PENDING,
            actor=Actor.system("pause-request"),
            now=now,
            fields=fields,
            reason=f"pause requested by {actor.label}",
            live_unit=live_unit,
        )
    return _move(task, S.PAUSED, actor=actor, reason=reason or "paused", now=now, live_unit=live_unit)


@transaction.atomic
def cancel_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    fields = _release_from_unit(task, ControlCommand.CANCEL)
    return _move(
        task, S.CANCELLED, actor=actor, reason=reason or "cancelled", now=now, fields=fields, live_unit=live_unit
    )


@transaction.atomic
def complete_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    result: Any = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """RUNNING -> COMPLETED by a client or operator (units report through `complete_attempt`)."""
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    fields = _release_from_unit(task, ControlCommand.ABORT)
    task.progress = 100
    task.result = result
    return _move(
        task,
        S.COMPLETED,
        actor=actor,
        reason=reason or "completed",
        now=now,
        fields=fields | {"progress", "result"},
        live_unit=live_unit,
    )


@transaction.atomic
def fail_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """RUNNING/PAUSED -> FAILED by a client or operator: final, no automatic retry."""
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    fields = _release_from_unit(task, ControlCommand.ABORT)
    task.error = reason or task.error or "failed by request"
    return _move(
        task, S.FAILED, actor=actor, reason=reason or "failed", now=now, fields=fields | {"error"}, live_unit=live_unit
    )


@transaction.atomic
def reopen_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """-> PENDING: resume a PAUSED task, retry a FAILED one by hand, or requeue a RUNNING one that
    no live unit holds (the table refuses it while one does)."""
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    if task.status == S.FAILED:
        return _retry_locked(task, actor=actor, reason=reason, now=now, live_unit=live_unit)
    if task.status == S.RUNNING:
        # Not a failover (no unit lost it; someone decided): the failover budget is left as it is.
        # A unit that held it and comes back is told to abort (the attempt is no longer live).
        fields = _release_from_unit(task, ControlCommand.ABORT)
        return _move(
            task,
            S.PENDING,
            actor=actor,
            reason=reason or "requeued: no live unit held it",
            now=now,
            fields=fields,
            live_unit=live_unit,
        )
    return _move(task, S.PENDING, actor=actor, reason=reason or "resumed", now=now, live_unit=live_unit)


@transaction.atomic
def retry_task(
    task_id: int,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
) -> Task:
    """Manual retry (and bulk redrive) of a FAILED task: back to PENDING with a fresh budget."""
    now = now or timezone.now()
    task = _lock(task_id, queryset)
    if task.status != S.FAILED:
        raise Conflict(
            f"Task {task_id} is {task.status}; only FAILED tasks can be retried",
            details={"currentStatus": task.status, "allowedStatuses": [S.FAILED]},
        )
    return _retry_locked(task, actor=actor, reason=reason, now=now, live_unit=live_unit)


def _retry_locked(task: Task, *, actor: Actor, reason: str, now: datetime, live_unit: LiveUnit) -> Task:
    # A retry by hand is a decision to try again: it resets the automatic budgets.
    task.retry_count = 0
    task.failover_count = 0
    return _move(
        task,
        S.PENDING,
        actor=actor,
        reason=reason or "retried by hand",
        now=now,
        fields={"retry_count", "failover_count"},
        live_unit=live_unit,
    )


# --- Unit reports ---------------------------------------------------------------------------


class StaleAttempt(Conflict):
    code = "stale_attempt"

    def __init__(self, task: Task, unit_id: str, attempt: int) -> None:
        details: dict[str, Any] = {"taskId": task.pk, "attempt": attempt, "command": ControlCommand.ABORT}
        message = f"Attempt {attempt} of task {task.pk} is not live for unit {unit_id}; abort it"
        if task.unit_id == unit_id:  # say more only to the unit that held the task
            details |= {"liveAttempt": task.attempt, "status": task.status}
            message += f" (task is {task.status}, live attempt {task.attempt})"
        super().__init__(message, details=details)
        metrics.record_stale_report()


def live_lease(unit_id: str, attempt: int) -> dict[str, Any]:
    """The fencing rule: a report is live if the task is RUNNING, leased to this unit, at this
    attempt. As filter arguments (a compare-and-set UPDATE) and, through `is_live`, on a locked row."""
    return {"status": S.RUNNING, "unit_id": unit_id, "attempt": attempt}


def is_live(task: Task, unit_id: str, attempt: int) -> bool:
    return all(getattr(task, name) == value for name, value in live_lease(unit_id, attempt).items())


def check_live(task: Task, unit_id: str, attempt: int) -> Task:
    if not is_live(task, unit_id, attempt):
        raise StaleAttempt(task, unit_id, attempt)
    return task


def lock_live_attempt(task_id: int, unit_id: str, attempt: int) -> Task:
    """Lock the task and check the fencing token: the unit must hold the live attempt."""
    return check_live(_lock(task_id), unit_id, attempt)


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


def _is_same_outcome(task: Task, unit_id: str, attempt: int, status: str) -> bool:
    """A repeat of a report already accepted (a retry after a lost reply): answer it again."""
    if task.unit_id != unit_id or task.attempt != attempt:
        return False
    if status == S.FAILED:
        # Accepted failure may have been moved on by the retry mover already.
        return (
            task.status in (S.FAILED, S.PENDING, S.RUNNING)
            and task.history.filter(to_status=S.FAILED, attempt=attempt, unit_id=unit_id).exists()
        )
    return task.status == status


def fence_outcome(task: Task, unit_id: str, attempt: int, status: str) -> bool:
    """Fencing of a result (`status` COMPLETED or FAILED) on a locked row: True if the attempt is
    live (apply it), False if this is a repeat of the accepted report (answer again, change
    nothing); otherwise StaleAttempt. A live attempt cannot already have a result (each claim
    starts a new attempt), so the repeat check runs only when the attempt is not live."""
    if is_live(task, unit_id, attempt):
        return True
    if _is_same_outcome(task, unit_id, attempt, status):
        return False
    raise StaleAttempt(task, unit_id, attempt)


def apply_complete(task: Task, *, unit_id: str, result: Any, now: datetime) -> tuple[set[str], TaskStatusHistory]:
    """A live attempt's result, in memory (the caller saves: `_save` or `save_reported`)."""
    task.progress = 100
    task.result = result
    return _apply(
        task, S.COMPLETED, actor=Actor.unit(unit_id), reason="completed", now=now, fields={"progress", "result"}
    )


def apply_fail(
    task: Task, *, error: str, retryable: bool, now: datetime, actor: Actor
) -> tuple[set[str], TaskStatusHistory]:
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
    fields = {"error", "retry_count"} if will_retry else {"error"}
    changed, history = _apply(task, S.FAILED, actor=actor, reason=reason, now=now, fields=fields)
    task.error = error[:10_000]
    if will_retry:
        task.retry_count = retry_number
        task.next_retry_at = now + retry_delay(retry_number)  # after enter_state cleared it
    return changed, history


@transaction.atomic
def complete_attempt(
    task_id: int, *, unit_id: str, attempt: int, result: Any, now: datetime | None = None
) -> tuple[Task, bool]:
    """A unit's result. Returns (task, accepted_now); a repeat of the accepted report is a no-op."""
    now = now or timezone.now()
    task = _lock(task_id)
    if not fence_outcome(task, unit_id, attempt, S.COMPLETED):
        return task, False
    return _save(task, apply_complete(task, unit_id=unit_id, result=result, now=now)), True


@transaction.atomic
def fail_attempt(
    task_id: int, *, unit_id: str, attempt: int, error: str, retryable: bool, now: datetime | None = None
) -> tuple[Task, bool]:
    """A failed attempt (see `apply_fail`). Returns (task, accepted_now)."""
    now = now or timezone.now()
    task = _lock(task_id)
    if not fence_outcome(task, unit_id, attempt, S.FAILED):
        return task, False
    return _fail_locked(task, error=error, retryable=retryable, now=now, actor=Actor.unit(unit_id)), True


def _fail_locked(task: Task, *, error: str, retryable: bool, now: datetime, actor: Actor) -> Task:
    return _save(task, apply_fail(task, error=error, retryable=retryable, now=now, actor=actor))


def fail_locked_for_timeout(task: Task, *, now: datetime) -> Task:
    """Used by the timeout job on a row it has locked."""
    return _fail_locked(
        task, error=f"timed out after {task.timeout_seconds}s", retryable=True, now=now, actor=Actor.system("timeouts")
    )
