"""The tasks table's statements on the hot paths, in plain SQL (see taskhub.base.sql for why).

The services that use these (the claim's lease, a heartbeat's read of its leases, reports) read as
decisions; what each statement does is said here once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import connection

from taskhub.apikeys.models import DEFAULT_POOL
from taskhub.base.rowload import fetch_models
from taskhub.base.sql import db_datetime, execute, model_field, prepared, qn, scalar
from tasks.fencing import lease_sql
from tasks.models import Task
from tasks.states import TaskStatus

S = TaskStatus
TABLE = Task._meta.db_table


def claimable(task_type: str, now: datetime, pool: str = DEFAULT_POOL):  # type: ignore[no-untyped-def]
    """PENDING tasks of `task_type` in `pool` due by `now` and not held back by their queue's key
    limits (Task.held_back), most urgent first: the claim's query, served by
    `task_claim_idx (status, pool, task_type, held_back, priority DESC, id)` with no filesort."""
    return Task.objects.filter(
        status=S.PENDING, pool=pool, task_type=task_type, held_back=False, available_at__lte=now
    ).order_by("-priority", "id")


_TYPE_MARK = "\x00claim task type"
_POOL_MARK = "\x00claim pool"
_NOW_MARK = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
_statements: dict[tuple[str, int], tuple[str, list[Any]]] = {}


def claim_statement(task_type: str, now: datetime, limit: int, pool: str = DEFAULT_POOL) -> tuple[str, list[Any]]:
    """The SQL the ORM compiles for `claimable(task_type, now).select_for_update(skip_locked=True)
    [:limit]`, compiled once per (database, limit): its text does not depend on the type or the
    time, whose parameters are found by compiling with marker values (compiling cost more CPU than
    MariaDB spends running it)."""
    key = (connection.alias, limit)
    if key not in _statements:
        query = claimable(_TYPE_MARK, _NOW_MARK, _POOL_MARK).select_for_update(skip_locked=True)[:limit].query
        sql, params = query.get_compiler(connection.alias).as_sql()
        marks = list(params)
        if marks.count(_TYPE_MARK) != 1 or marks.count(_POOL_MARK) != 1 or marks.count(db_datetime(_NOW_MARK)) != 1:
            raise AssertionError(f"unexpected parameters of the claim query: {params}")
        _statements[key] = (sql, list(params))
    sql, template = _statements[key]
    stamp, marked_now = db_datetime(now), db_datetime(_NOW_MARK)
    return sql, [
        task_type if p == _TYPE_MARK else pool if p == _POOL_MARK else stamp if p == marked_now else p for p in template
    ]


def lock_claimable(task_type: str, now: datetime, limit: int, pool: str = DEFAULT_POOL) -> list[Task]:
    """Whole rows, locked (SKIP LOCKED: concurrent claimers take others): what the unit gets back."""
    sql, params = claim_statement(task_type, now, limit, pool)
    return fetch_models(Task, sql, params)


def update_claimed(group: list[Task], names: list[str], unit_pk: str) -> None:
    """UPDATE of claimed rows that share their values: `names` (the entry into RUNNING's fields but
    the attempt) as the rows now hold them, the unit, and attempt + 1."""
    memo: dict[tuple[str, Any], Any] = {}
    fields = [model_field(Task, name) for name in names]
    sets = [f"{qn(f.column)} = %s" for f in fields]
    params = [prepared(f, getattr(group[0], f.attname), memo) for f in fields]
    sets.append(f"{qn(model_field(Task, 'unit').column)} = %s")
    params.append(unit_pk)
    attempt = qn(model_field(Task, "attempt").column)
    sets.append(f"{attempt} = {attempt} + 1")
    ids = [t.pk for t in group]
    marks = ", ".join(["%s"] * len(ids))
    execute(f"UPDATE {qn(TABLE)} SET {', '.join(sets)} WHERE {qn(Task._meta.pk.column)} IN ({marks})", [*params, *ids])


def running_count(unit_id: str) -> int:
    """The unit's leases (a range of task_unit_status_idx): its load, as the claim counts it."""
    lease, params = lease_sql(unit_id)
    return int(scalar(f"SELECT COUNT(*) FROM {qn(TABLE)} WHERE {lease}", params))


def unit_leases(unit_id: str, *, with_commands: bool, grace_start: datetime) -> list[tuple[int, int, str, int, bool]]:
    """(id, attempt, status, progress, started after grace_start) of the unit's leases and,
    `with_commands`, of its other tasks that still carry a stored command. Two ranges of
    task_unit_status_idx / the (unit, pending_command) index; the comparison with the grace done by
    the database (no datetime conversion here)."""
    lease, lease_params = lease_sql(unit_id)
    where = f"({lease})"
    params: list[Any] = [db_datetime(grace_start), *lease_params]
    if with_commands:
        where += f" OR ({qn('unit_id')} = %s AND {qn('pending_command')} <> '')"
        params.append(unit_id)
    statement = (
        f"SELECT {qn('id')}, {qn('attempt')}, {qn('status')}, {qn('progress')}, "
        f"CASE WHEN {qn('started_at')} > %s THEN 1 ELSE 0 END FROM {qn(TABLE)} WHERE {where}"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return [(tid, att, st, progress, bool(young)) for tid, att, st, progress, young in cursor.fetchall()]


def record_lease_progress(unit_id: str, progress: dict[int, int]) -> None:
    """Progress of the unit's listed leases, in one UPDATE with a CASE (through the ORM, building
    it cost ~1 ms of CPU for five tasks, more than the heartbeat's other statements together)."""
    ids = sorted(progress)
    lease, lease_params = lease_sql(unit_id)
    marks = ", ".join(["%s"] * len(ids))
    statement = (
        f"UPDATE {qn(TABLE)} SET {qn('progress')} = CASE {qn('id')} "
        + " ".join(["WHEN %s THEN %s"] * len(ids))
        + f" ELSE {qn('progress')} END WHERE {qn('id')} IN ({marks}) AND {lease}"
    )
    values: list[Any] = [value for tid in ids for value in (tid, progress[tid])]
    execute(statement, [*values, *ids, *lease_params])
