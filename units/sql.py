"""The execution_units table's statements on the hot paths (heartbeat, claim), in plain SQL (see
taskhub.base.sql for why): the unit row lock, the heartbeat's UPDATE, the claim's status change."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import connection, transaction

from taskhub.base.rowload import fetch_models
from taskhub.base.sql import db_datetime, db_now_sql, execute, for_update, lock_columns, qn, scalar
from tasks.models import QueueSettings, Task
from tasks.states import TaskStatus
from units.models import ExecutionUnit

TABLE = ExecutionUnit._meta.db_table
TASK_TABLE = Task._meta.db_table


def lock_unit_row(unit_id: str) -> ExecutionUnit | None:
    """`SELECT ... FOR UPDATE` of one unit by primary key (None if there is none); inside a
    transaction. Every heartbeat and every claim takes this lock."""
    assert transaction.get_connection().in_atomic_block
    sql = f"SELECT * FROM {qn(TABLE)} WHERE {qn('id')} = %s{for_update()}"
    return next(iter(fetch_models(ExecutionUnit, sql, [unit_id])), None)


def lock_unit_columns(unit_id: str, columns: tuple[str, ...]) -> tuple[Any, ...] | None:
    """`lock_unit_row` for the hot paths (heartbeat, claim): the same lock, but only `columns`, as
    the database driver returns them. None if there is no such unit."""
    return lock_columns(ExecutionUnit, unit_id, columns)


def set_status(unit_id: str, status: str) -> None:
    execute(f"UPDATE {qn(TABLE)} SET {qn('status')} = %s WHERE {qn('id')} = %s", [str(status), unit_id])


def save_heartbeat(
    unit_id: str,
    now: datetime | None,
    current_load: int,
    status: str,
    metadata: dict[str, Any] | None,
    stored_metadata: Any,
) -> None:
    """The unit UPDATE of a heartbeat, in one plain statement. Metadata is written only when its
    JSON differs from the stored text (agents resend the same metadata on every heartbeat). `now`
    None: stamped with the database's clock (the one the sweeper reads: node clocks may skew)."""
    stamp = db_datetime(now) if now is not None else None
    clock = "%s" if stamp is not None else db_now_sql()
    sets = [f"{qn('last_heartbeat_at')} = {clock}", f"{qn('current_load')} = %s", f"{qn('status')} = %s"]
    params: list[Any] = ([stamp] if stamp is not None else []) + [current_load, str(status)]
    if metadata is not None:
        text = ExecutionUnit._meta.get_field("metadata").get_db_prep_save(metadata, connection)
        if text != stored_metadata:
            sets.append(f"{qn('metadata')} = %s")
            params.append(text)
    sets.append(f"{qn('updated_at')} = {clock}")
    params += ([stamp] if stamp is not None else []) + [unit_id]
    execute(f"UPDATE {qn(TABLE)} SET {', '.join(sets)} WHERE {qn('id')} = %s", params)


# --- the claim of a queue with settings (tasks.models.QueueSettings) ------------------------------

QUEUE_TABLE = QueueSettings._meta.db_table
# What the claim reads of a queue's settings row, in this order (see units.claim.QueueRules).
QUEUE_COLUMNS = (
    "task_type",
    "paused",
    "max_running",
    "per_key_concurrency",
    "rate_limit",
    "rate_period",
    "key_rate_limit",
    "key_rate_period",
    "rate_starts",
    "held_keys",
)


def lock_unit_for_claim(unit_id: str, columns: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The claim's unit row lock, joined to the unit type's queue settings row: the unit's `columns`,
    then QUEUE_COLUMNS (NULLs when the queue has no settings). One statement, as before queues
    existed: a queue with no settings costs the claim nothing more. When the row exists, FOR UPDATE
    locks it too (InnoDB locks the rows a locking join reads, in both tables), which serialises the
    claims of a queue with settings across every node for the rest of the claim's transaction."""
    assert transaction.get_connection().in_atomic_block
    names = ", ".join([*(f"u.{qn(c)}" for c in columns), *(f"q.{qn(c)}" for c in QUEUE_COLUMNS)])
    statement = (
        f"SELECT {names} FROM {qn(TABLE)} u LEFT JOIN {qn(QUEUE_TABLE)} q ON q.{qn('task_type')} = u.{qn('unit_type')}"
        f" WHERE u.{qn('id')} = %s{for_update()}"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [unit_id])
        row = cursor.fetchone()
    return tuple(row) if row is not None else None


def running_of_type(task_type: str) -> int:
    """RUNNING tasks of a type: a range of task_running_key_idx (status, task_type, concurrency_key)."""
    return int(
        scalar(
            f"SELECT COUNT(*) FROM {qn(TASK_TABLE)} WHERE {qn('status')} = %s AND {qn('task_type')} = %s",
            [TaskStatus.RUNNING, task_type],
        )
    )


def running_by_key(task_type: str) -> dict[str, int]:
    """RUNNING tasks of a type counted by concurrency key ('' for the tasks without one): the same
    range, grouped in index order (no temporary table). As many rows as keys running, which the
    limits bound; their sum is the queue's running count."""
    statement = (
        f"SELECT {qn('concurrency_key')}, COUNT(*) FROM {qn(TASK_TABLE)} WHERE {qn('status')} = %s"
        f" AND {qn('task_type')} = %s GROUP BY {qn('concurrency_key')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [TaskStatus.RUNNING, task_type])
        return {str(key): int(n) for key, n in cursor.fetchall()}


def save_queue_starts(task_type: str, starts: list[float]) -> None:
    execute(
        f"UPDATE {qn(QUEUE_TABLE)} SET {qn('rate_starts')} = %s WHERE {qn('task_type')} = %s",
        [json.dumps(starts), task_type],
    )


def save_held_keys(task_type: str, keys: list[str]) -> None:
    execute(
        f"UPDATE {qn(QUEUE_TABLE)} SET {qn('held_keys')} = %s WHERE {qn('task_type')} = %s",
        [json.dumps(sorted(keys)), task_type],
    )


def hold_key(task_type: str, key: str, limit: int) -> int:
    """Take up to `limit` PENDING tasks of a key at its limit out of the claim's index range (one
    range of task_running_key_idx, then an UPDATE by id): later claims do not read them again."""
    return _set_held(task_type, key, limit, held=True)


def _set_held(task_type: str, key: str, limit: int, *, held: bool, due_by: datetime | None = None) -> int:
    due = f" AND {qn('available_at')} <= %s" if due_by is not None else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {qn('id')} FROM {qn(TASK_TABLE)} WHERE {qn('status')} = %s AND {qn('task_type')} = %s"
            f" AND {qn('concurrency_key')} = %s AND {qn('held_back')} = %s{due}"
            f" ORDER BY {qn('priority')} DESC, {qn('id')} LIMIT {int(limit)}",
            [TaskStatus.PENDING, task_type, key, not held, *([db_datetime(due_by)] if due_by is not None else [])],
        )
        ids = [row[0] for row in cursor.fetchall()]
    if ids:
        marks = ", ".join(["%s"] * len(ids))
        execute(f"UPDATE {qn(TASK_TABLE)} SET {qn('held_back')} = %s WHERE {qn('id')} IN ({marks})", [held, *ids])
    return len(ids)


def release_held(task_type: str, key: str, n: int, now: datetime) -> int:
    """Put the `n` most urgent held-back tasks of a key that are due by `now` back in the claim's
    range (the same range, then an UPDATE by id). Returns how many there were."""
    return _set_held(task_type, key, n, held=False, due_by=now)


def has_held(task_type: str, key: str) -> bool:
    """Whether a key still has held-back PENDING tasks (not due yet, say): one index probe."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {qn(TASK_TABLE)} WHERE {qn('status')} = %s AND {qn('task_type')} = %s"
            f" AND {qn('concurrency_key')} = %s AND {qn('held_back')} = %s LIMIT 1",
            [TaskStatus.PENDING, task_type, key, True],
        )
        return cursor.fetchone() is not None


def release_all_held(task_type: str) -> int:
    """A queue whose key limits are lifted: every held-back task of it back in the claim's range."""
    return execute(
        f"UPDATE {qn(TASK_TABLE)} SET {qn('held_back')} = %s WHERE {qn('status')} = %s AND {qn('task_type')} = %s"
        f" AND {qn('held_back')} = %s",
        [False, TaskStatus.PENDING, task_type, True],
    )
