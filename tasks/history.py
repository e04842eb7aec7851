"""The one writer of history rows: how a row is built, and one INSERT for any number of them.

Every state change writes one row (from -> to) in the transaction that made it, with its actor,
a reason in words and a reason code (`ReasonCode`) that the dashboard and the tools read instead
of the words. Single-row and set-based moves alike write through `write_history`: a multi-row
INSERT in plain SQL (what `bulk_create` sends, without its per-value preparation).

History rows are also the hub's ordered log of events: `GET /api/v1/events` streams them (the row
id is the event id) and `write_history` writes the webhook outbox rows of the changes someone
subscribed to in the same transaction, so a rolled-back change announces nothing. For the same
reason it rings the results doorbell (taskhub.base.historybell) only when that transaction commits:
held `waitFor` reads and event streams read again on the ring instead of polling.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from taskhub.base import historybell
from taskhub.base.actors import Actor
from taskhub.base.sql import insert_rows, insert_rows_returning_ids
from taskhub.webhooks import outbox, subscriptions
from tasks.models import Task, TaskStatusHistory

EVENT = outbox.EVENT  # the event type of a state change, on the stream and in webhooks
OWNER_CHUNK = 5000  # task ids per read of their owners (a set-based move can write 10,000 rows)


def new_history(
    task_id: int,
    attempt: int,
    unit_id: str | None,
    source: str | None,
    target: str,
    *,
    actor: Actor,
    reason: str,
    code: str,
    now: datetime,
) -> TaskStatusHistory:
    """The one place a history row is built (per-row and set-based moves alike)."""
    return TaskStatusHistory(
        task_id=task_id,
        from_status=source,
        to_status=target,
        reason=reason[:2000],
        reason_code=code,
        actor_type=actor.type,
        actor=actor.label[:150],
        unit_id=unit_id,
        attempt=attempt,
        created_at=now,
    )


def history_row(
    task: Task, source: str | None, target: str, *, actor: Actor, reason: str, code: str, now: datetime
) -> TaskStatusHistory:
    """A row for a move of `task` (in memory, after the move): the actor's unit, else the task's."""
    unit_id = actor.unit_id or task.unit_id
    return new_history(task.pk, task.attempt, unit_id, source, target, actor=actor, reason=reason, code=code, now=now)


def event_body(row: TaskStatusHistory, task_type: str) -> dict[str, Any]:
    """A state change as an event: the `data` of a stream event and the body of a webhook."""
    return {
        "type": EVENT,
        "historyId": row.pk,
        "taskId": row.task_id,
        "taskType": task_type,
        "fromStatus": row.from_status,
        "toStatus": row.to_status,
        "reason": row.reason,
        "reasonCode": row.reason_code,
        "actorType": row.actor_type,
        "actor": row.actor,
        "unitId": row.unit_id,
        "attempt": row.attempt,
        "createdAt": row.created_at.isoformat().replace("+00:00", "Z"),
    }


def write_history(rows: Sequence[TaskStatusHistory]) -> None:
    if rows:
        historybell.ring_on_commit(r.task_id for r in rows)
    subs = subscriptions.active() if rows else []
    if not subs:
        insert_rows(TaskStatusHistory, rows)  # no webhooks: exactly one statement, as always
        return
    insert_rows_returning_ids(TaskStatusHistory, rows)
    task_ids = sorted({r.task_id for r in rows})
    owners: dict[int, tuple[int | None, str]] = {}
    for start in range(0, len(task_ids), OWNER_CHUNK):
        chunk = task_ids[start : start + OWNER_CHUNK]
        for pk, owner, kind in Task.objects.filter(pk__in=chunk).order_by().values_list("id", "owner_id", "task_type"):
            owners[pk] = (owner, kind)
    changes = []
    for row in rows:
        owner_id, task_type = owners.get(row.task_id, (None, ""))
        changes.append(
            outbox.Change(row.pk, row.task_id, owner_id, task_type, row.to_status, event_body(row, task_type))
        )
    outbox.record(changes, subs, rows[0].created_at)
