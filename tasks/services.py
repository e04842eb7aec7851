"""Task writes that are not status changes: submit (idempotent), edit, delete, append logs.
Status lives in tasks.transitions."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict, NotFound
from tasks import logs, unique
from tasks.entry import AVAILABLE_AT
from tasks.models import Task, TaskExecutionLog
from tasks.states import EDITABLE_FIELDS, TaskStatus
from tasks.transitions.creation import create_task, create_tasks
from tasks.transitions.reports import lock_live_attempt, renew_lease

S = TaskStatus

CAMEL = {
    "task_type": "taskType",
    "max_retries": "maxRetries",
    "timeout_seconds": "timeoutSeconds",
    "scheduled_at": "scheduledAt",
    "concurrency_key": "concurrencyKey",
}


def request_fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _creation_fields(
    owner: Any, data: dict[str, Any], idempotency_key: str | None, fingerprint: str, now: datetime
) -> dict[str, Any]:
    """A client's task as stored: its fields, its owner, with a key the body's fingerprint, with a
    uniqueKey its slot (`data`'s unique_key/unique_for/on_conflict are taken out)."""
    data = dict(data)
    key, unique_for = data.pop("unique_key", None), data.pop("unique_for", None)
    data.pop("on_conflict", None)
    return {
        "owner": owner,
        "idempotency_key": idempotency_key or None,
        "request_fingerprint": fingerprint if idempotency_key else "",
        **unique.unique_fields(getattr(owner, "pk", None), key, unique_for, now),
        **data,
    }


# How a submit ended: a new task, an Idempotency-Key replay, or the task holding the uniqueKey.
CREATED, REPLAYED, UNIQUE_EXISTING = "created", "replayed", "unique_existing"
_UNIQUE_ROUNDS = 3  # a holder can finish (and free the key) between our INSERT and our read


def _unique_conflict(task: Task, on_conflict: str, field: str) -> Task:
    if on_conflict == unique.ERROR:
        raise Conflict(
            "uniqueKey is held by another task", details={"taskId": task.pk, "status": task.status, "field": field}
        )
    return task


def task_submit(
    *, owner: Any, actor: Actor, data: dict[str, Any], idempotency_key: str | None, fingerprint: str
) -> tuple[Task, str]:
    """Create a task, or return the one created earlier with the same Idempotency-Key by the same
    client (REPLAYED), or the task holding its uniqueKey (UNIQUE_EXISTING; 409 with onConflict
    "error"). The Idempotency-Key is looked at first: a replay returns the first task whatever
    became of its uniqueKey. Returns (task, outcome)."""
    now = timezone.now()
    fields = _creation_fields(owner, data, idempotency_key, fingerprint, now)
    slot, on_conflict = fields.get("unique_slot"), data.get("on_conflict") or unique.EXISTING
    for _ in range(_UNIQUE_ROUNDS):
        if idempotency_key:
            existing = _idempotent_match(owner, idempotency_key, fingerprint)
            if existing is not None:
                return existing, REPLAYED
        if slot:
            holder = unique.holders([slot], now).get(slot)
            if holder is not None:
                return _unique_conflict(holder, on_conflict, "uniqueKey"), UNIQUE_EXISTING
        try:
            return create_task(actor=actor, now=now, **fields), CREATED
        except IntegrityError:
            # A concurrent create with the same Idempotency-Key or uniqueKey won: the next round finds it.
            if not (idempotency_key or slot):
                raise
    raise Conflict("uniqueKey: the task holding it kept changing; try again", details={"field": "uniqueKey"})


def _check_fingerprint(task: Task, fingerprint: str, field: str) -> Task:
    if task.request_fingerprint != fingerprint:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            details={"taskId": task.pk, "field": field},
        )
    return task


def _idempotent_match(owner: Any, key: str, fingerprint: str) -> Task | None:
    task = Task.objects.filter(owner=owner, idempotency_key=key).first()
    return None if task is None else _check_fingerprint(task, fingerprint, "Idempotency-Key")


def task_submit_batch(
    *, owner: Any, actor: Actor, items: list[tuple[dict[str, Any], str | None, str]]
) -> list[tuple[Task, str]]:
    """Create many tasks, all or nothing: `items` are (data, idempotency key or None, fingerprint)
    in request order; returns (task, outcome) in the same order, as `task_submit`. A key already
    used by this client returns its task (a different body: 409 for the whole batch, nothing
    created); so does a held uniqueKey (onConflict "error": 409 for the whole batch). One lookup of
    the keys, one of the unique slots, one INSERT of the new tasks, one of their history rows."""
    for round_ in range(_UNIQUE_ROUNDS):
        try:
            with transaction.atomic():
                return _submit_batch(owner, actor, items)
        except IntegrityError:
            # A concurrent request inserted one of the keys first: the next round finds it.
            if round_ == _UNIQUE_ROUNDS - 1:
                raise Conflict(
                    "An idempotencyKey or uniqueKey of this batch collides with another of the client's keys "
                    "(idempotency keys are compared as the database compares them, e.g. case-insensitively)",
                    details={"field": "tasks"},
                ) from None
    raise AssertionError("unreachable")


def _submit_batch(
    owner: Any, actor: Actor, items: list[tuple[dict[str, Any], str | None, str]]
) -> list[tuple[Task, str]]:
    now = timezone.now()
    keys = [key for _, key, _ in items if key]
    exact: dict[str, Task] = {}
    folded: dict[str, Task] = {}
    if keys:
        # Under a case-insensitive collation (MySQL) the database matches "Key" to "key": so does this.
        for task in Task.objects.filter(owner=owner, idempotency_key__in=keys):
            stored_key = task.idempotency_key or ""
            exact[stored_key] = task
            folded.setdefault(stored_key.casefold(), task)
    rows = [_creation_fields(owner, data, key, fingerprint, now) for data, key, fingerprint in items]
    held = unique.holders([row["unique_slot"] for row in rows if row.get("unique_slot")], now)
    # An item is answered as if the items before it had been sent first, one by one: a key or a
    # uniqueKey repeated inside the batch gets the task of its first item (new_rows' index).
    replies: list[tuple[Task | int, str]] = []
    new_rows: list[dict[str, Any]] = []
    batch_keys: dict[str, tuple[int, str]] = {}  # folded key -> (new row, fingerprint)
    batch_slots: dict[str, int] = {}
    for index, ((data, key, fingerprint), row) in enumerate(zip(items, rows, strict=True)):
        existing = (exact.get(key) or folded.get(key.casefold())) if key else None
        slot = row.get("unique_slot") or ""
        holder = held.get(slot)
        on_conflict = data.get("on_conflict") or unique.EXISTING
        if existing is not None:
            replies.append((_check_fingerprint(existing, fingerprint, f"tasks[{index}].idempotencyKey"), REPLAYED))
        elif key and key.casefold() in batch_keys:
            first, first_fingerprint = batch_keys[key.casefold()]
            if first_fingerprint != fingerprint:
                raise Conflict(
                    "Idempotency-Key was already used with a different request body (an earlier item of this batch)",
                    details={"field": f"tasks[{index}].idempotencyKey"},
                )
            replies.append((first, REPLAYED))
        elif holder is not None:
            replies.append((_unique_conflict(holder, on_conflict, f"tasks[{index}].uniqueKey"), UNIQUE_EXISTING))
        elif slot and slot in batch_slots:
            if on_conflict == unique.ERROR:
                raise Conflict(
                    "uniqueKey is held by an earlier item of this batch", details={"field": f"tasks[{index}].uniqueKey"}
                )
            replies.append((batch_slots[slot], UNIQUE_EXISTING))
        else:
            if key:
                batch_keys[key.casefold()] = (len(new_rows), fingerprint)
            if slot:
                batch_slots[slot] = len(new_rows)
            replies.append((len(new_rows), CREATED))
            new_rows.append(row)
    created = create_tasks(new_rows, actor=actor, now=now) if new_rows else []
    return [(created[reply] if isinstance(reply, int) else reply, outcome) for reply, outcome in replies]


@transaction.atomic
def task_update(
    task_id: int, changes: dict[str, Any], *, queryset: QuerySet[Task], now: datetime | None = None
) -> Task:
    now = now or timezone.now()
    try:
        task = queryset.select_for_update().get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"Task {task_id} not found") from None
    allowed = EDITABLE_FIELDS[task.status]
    refused = sorted(CAMEL.get(f, f) for f in changes if f not in allowed)
    if refused:
        raise Conflict(
            f"{', '.join(refused)} cannot change while the task is {task.status}",
            details={"fields": refused, "editable": sorted(CAMEL.get(f, f) for f in allowed), "status": task.status},
        )
    if "task_type" in changes:
        raise Conflict("taskType cannot change", details={"fields": ["taskType"]})
    for field, value in changes.items():
        setattr(task, field, value)
    fields = set(changes) | {"updated_at"}
    task.updated_at = now
    if "scheduled_at" in changes and task.status == S.PENDING:
        AVAILABLE_AT.apply(task, now)  # what entering PENDING would make it, from the new schedule
        fields.add(AVAILABLE_AT.field)
    task.save(update_fields=sorted(fields))
    return task


@transaction.atomic
def task_delete(task_id: int, *, queryset: QuerySet[Task]) -> None:
    try:
        task = queryset.select_for_update().get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"Task {task_id} not found") from None
    if task.status == S.RUNNING:
        raise Conflict(
            f"Task {task_id} is RUNNING and cannot be deleted; cancel it first",
            details={"status": task.status},
        )
    if task.owner_id is not None:  # its log lines no longer count against its key's quota
        logs.refund_deleted([(task.owner_id, TaskExecutionLog.objects.filter(task_id=task.pk).count())])
    task.delete()


def task_append_logs(
    task_id: int,
    entries: list[dict[str, Any]],
    *,
    actor: Actor,
    queryset: QuerySet[Task],
    attempt: int | None = None,
    now: datetime | None = None,
) -> int:
    """Append log lines. A unit must name its live attempt (fencing); a client's lines are
    recorded against the task's current attempt, and are its report on a RUNNING task that no unit
    holds: they renew that task's lease. Returns how many were stored."""
    now = now or timezone.now()
    with transaction.atomic():
        if actor.unit_id is not None:
            task = lock_live_attempt(task_id, actor.unit_id, attempt or 0)
        else:
            # Locked, as the unit's path locks it: concurrent appends count the cap one at a time.
            task = queryset.select_for_update().filter(pk=task_id).first()  # type: ignore[assignment]
            if task is None:
                raise NotFound(f"Task {task_id} not found")
        logs.check_log_room(task_id, logs.stored_log_counts([task_id]).get(task_id, 0), len(entries))
        logs.charge_owner(task.owner_id, task.pk, len(entries))
        rows = logs.log_rows(task.pk, task.attempt if attempt is None else attempt, entries, actor=actor, now=now)
        TaskExecutionLog.objects.bulk_create(rows)
        if actor.unit_id is None and task.lease_expires_at is not None:
            renew_lease(task.pk, now)
    return len(entries)
