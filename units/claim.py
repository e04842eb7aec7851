"""The claim: a unit leases up to `max` PENDING tasks of its type and pool, within its free capacity.

The unit row lock (units.sql) serialises one unit's claims, so its capacity count is exact; the
tasks are taken by `tasks.transitions.bulk.lease_to_unit` (one locked read with SKIP LOCKED: concurrent
claimers skip each other's rows instead of waiting), and the unit's status follows its load.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from taskhub.base import metrics
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.errors import NotFound
from tasks.models import Task
from tasks.selectors import running_on
from tasks.transitions.bulk import lease_to_unit
from units import sql
from units.states import CLAIMING, Cause, UnitStatus, check_move


def claim_tasks(unit_id: str, max_tasks: int, *, now: datetime) -> list[Task]:
    """Lease up to `max_tasks` tasks of the unit's type, within its free capacity."""
    return claim_tasks_with_status(unit_id, max_tasks, now=now)[0]


@retry_on_lock_error()
@transaction.atomic
def claim_tasks_with_status(unit_id: str, max_tasks: int, *, now: datetime) -> tuple[list[Task], str]:
    """`claim_tasks`, also returning the unit's status as this claim left it (what the claim
    endpoint replies), so no query re-reads either after the commit."""
    locked = sql.lock_unit_columns(unit_id, ("id", "status", "capacity", "unit_type", "pool"))
    if locked is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    unit_pk, unit_status, capacity, unit_type, pool = locked
    if unit_status not in CLAIMING:
        return [], unit_status
    running = running_on(unit_pk)
    tasks = lease_to_unit(unit_pk, unit_type, min(max_tasks, capacity - running), now, pool)
    metrics.record_claim(unit_type, len(tasks))
    status = UnitStatus.BUSY if running + len(tasks) >= capacity else UnitStatus.ONLINE
    if status != unit_status:
        sql.set_status(unit_pk, check_move(unit_status, status, Cause.CLAIM))
    return tasks, status
