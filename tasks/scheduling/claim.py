"""The claim: the one query that hands PENDING tasks to a unit.

    SELECT * FROM tasks
     WHERE status='PENDING' AND task_type=%s AND available_at <= %s
     ORDER BY priority DESC, id
     LIMIT n FOR UPDATE SKIP LOCKED

served by `task_claim_idx (status, task_type, priority DESC, id)`: no filesort, and concurrent
claimers skip each other's rows instead of waiting. On SQLite, IMMEDIATE transactions serialise
writers, so the same read-then-update is correct there too.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Field

from taskhub import metrics
from taskhub.errors import NotFound
from taskhub.rowload import fetch_models
from tasks.actors import Actor
from tasks.models import Task, TaskStatusHistory
from tasks.scheduling.dbretry import retry_on_lock_error
from tasks.states import TaskStatus, can_transition
from tasks.transitions import enter_state, new_history
from units.models import ExecutionUnit, UnitStatus
from units.services import db_datetime, lock_unit_columns

S = TaskStatus
assert can_transition(S.PENDING, S.RUNNING)


def claimable(task_type: str, now: datetime):  # type: ignore[no-untyped-def]
    return Task.objects.filter(status=S.PENDING, task_type=task_type, available_at__lte=now).order_by("-priority", "id")


def claim_tasks(unit_id: str, max_tasks: int, *, now: datetime) -> list[Task]:
    """Lease up to `max_tasks` tasks of the unit's type, within its free capacity."""
    return claim_tasks_with_status(unit_id, max_tasks, now=now)[0]


@retry_on_lock_error()
@transaction.atomic
def claim_tasks_with_status(unit_id: str, max_tasks: int, *, now: datetime) -> tuple[list[Task], str]:
    """`claim_tasks`, also returning the unit's status as this claim left it (what the claim
    endpoint replies), so no query re-reads either after the commit."""
    # The unit row lock serialises this unit's claims, so its capacity count is exact.
    locked = lock_unit_columns(unit_id, ("id", "status", "capacity", "unit_type"))
    if locked is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    unit_pk, unit_status, capacity, unit_type = locked
    if unit_status in (UnitStatus.OFFLINE, UnitStatus.MAINTENANCE):
        return [], unit_status
    qn = connection.ops.quote_name
    running = _scalar(
        f"SELECT COUNT(*) FROM {qn(Task._meta.db_table)} WHERE {qn('unit_id')} = %s AND {qn('status')} = %s",
        [unit_pk, S.RUNNING.value],
    )
    wanted = min(max_tasks, capacity - running)
    # Whole rows, locked: they are what the unit gets back, updated below as the UPDATE does.
    tasks: list[Task] = []
    if wanted > 0:
        sql, params = _claim_statement(unit_type, now, wanted)
        tasks = fetch_models(Task, sql, params)
    # The entry effects of RUNNING come from the one place that defines them (enter_state), applied
    # to the locked rows in memory; the UPDATE writes the same values, one statement per distinct
    # timeout (the only per-row value besides the attempt increment).
    groups: dict[int | None, list[Task]] = defaultdict(list)
    changed: set[str] = set()
    for task in tasks:
        task.unit_id = unit_pk
        task.status = S.RUNNING
        task.updated_at = now
        changed = enter_state(task, S.RUNNING, now)
        groups[task.timeout_seconds].append(task)
    for group in groups.values():
        _update_claimed(group, sorted(changed - {"attempt"}), unit_pk, now)
    actor = Actor.unit(unit_pk)
    _insert_rows(
        [
            new_history(task.pk, task.attempt, unit_pk, S.PENDING, S.RUNNING, actor=actor, reason="claimed", now=now)
            for task in tasks
        ]
    )
    metrics.record_claim(unit_type, len(tasks))
    status = UnitStatus.BUSY if running + len(tasks) >= capacity else UnitStatus.ONLINE
    if status != unit_status:
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {qn(ExecutionUnit._meta.db_table)} SET {qn('status')} = %s WHERE {qn('id')} = %s",
                [status.value, unit_pk],
            )
    return tasks, status


# The claim's writes in plain SQL: per claimed task the ORM spent more CPU compiling the UPDATE and
# preparing the history INSERT (every field of every row through get_db_prep_save) than MariaDB
# spends on them. The values are still the model's: prepared by each field, once per distinct value.


_TYPE_MARK = "\x00claim task type"
_NOW_MARK = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
_statements: dict[tuple[str, int], tuple[str, list[Any]]] = {}


def _claim_statement(task_type: str, now: datetime, limit: int) -> tuple[str, list[Any]]:
    """The SQL the ORM compiles for `claimable(task_type, now).select_for_update(skip_locked=True)
    [:limit]`, compiled once per (database, limit): its text does not depend on the type or the
    time, whose parameters are found by compiling with marker values (compiling cost more CPU than
    MariaDB spends running it)."""
    key = (connection.alias, limit)
    if key not in _statements:
        query = claimable(_TYPE_MARK, _NOW_MARK).select_for_update(skip_locked=True)[:limit].query
        sql, params = query.get_compiler(connection.alias).as_sql()
        if list(params).count(_TYPE_MARK) != 1 or list(params).count(db_datetime(_NOW_MARK)) != 1:
            raise AssertionError(f"unexpected parameters of the claim query: {params}")
        _statements[key] = (sql, list(params))
    sql, template = _statements[key]
    stamp, marked_now = db_datetime(now), db_datetime(_NOW_MARK)
    return sql, [task_type if p == _TYPE_MARK else stamp if p == marked_now else p for p in template]


def _scalar(sql: str, params: list[Any]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.fetchone()[0])


def _prepared(field: Field, value: Any, memo: dict[tuple[str, Any], Any]) -> Any:
    key = (field.attname, value)
    try:
        return memo[key]
    except KeyError:
        memo[key] = prepared = field.get_db_prep_save(value, connection)
        return prepared
    except TypeError:  # unhashable (a JSON value): no memo
        return field.get_db_prep_save(value, connection)


def _field(name: str) -> Field:
    field = Task._meta.get_field(name)
    assert isinstance(field, Field)
    return field


def _update_claimed(group: list[Task], names: list[str], unit_pk: str, now: datetime) -> None:
    """UPDATE of one timeout group of claimed rows: `names` (enter_state's fields but the attempt)
    as the rows now hold them, status RUNNING, the unit, updated_at, attempt + 1."""
    qn = connection.ops.quote_name
    meta = Task._meta
    memo: dict[tuple[str, Any], Any] = {}
    fields = [_field(name) for name in names]
    sets = [f"{qn(f.column)} = %s" for f in fields]
    params = [_prepared(f, getattr(group[0], f.attname), memo) for f in fields]
    for name, value in (("status", S.RUNNING.value), ("unit", unit_pk), ("updated_at", now)):
        field = _field(name)
        sets.append(f"{qn(field.column)} = %s")
        params.append(_prepared(field, value, memo))
    attempt = qn(_field("attempt").column)
    sets.append(f"{attempt} = {attempt} + 1")
    ids = [t.pk for t in group]
    sql = (
        f"UPDATE {qn(meta.db_table)} SET {', '.join(sets)} "
        f"WHERE {qn(meta.pk.column)} IN ({', '.join(['%s'] * len(ids))})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *ids])


def _insert_rows(rows: list[TaskStatusHistory]) -> None:
    """The history rows built by `new_history`, in one multi-row INSERT (what `bulk_create` sends
    for up to 1,000 rows, without its per-value preparation)."""
    if not rows:
        return
    meta = TaskStatusHistory._meta
    fields = [f for f in meta.concrete_fields if f is not meta.pk]
    qn = connection.ops.quote_name
    memo: dict[tuple[str, Any], Any] = {}
    params = [_prepared(f, getattr(row, f.attname), memo) for row in rows for f in fields]
    one = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES {', '.join([one] * len(rows))}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
