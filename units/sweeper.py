"""The heartbeat sweeper: units silent for UNIT_HEARTBEAT_TIMEOUT go OFFLINE and their RUNNING tasks
fail over; so do RUNNING tasks that no unit holds once nobody has reported on them for as long.

A plain function of `now`, safe when two run at once (rows are taken with SKIP LOCKED). The job
registry (taskhub.jobs) runs it from Celery beat and `manage.py runjob sweep_heartbeats`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from tasks.transitions.bulk import fail_over_orphans, fail_over_tasks
from units.models import ExecutionUnit
from units.states import ALIVE, UnitStatus

UNIT_CHUNK = 500
BATCH = 1000
SWEEP_COUNTS = ("unitsOffline", "failedOver", "poisoned", "orphans")


def sweep_heartbeats(now: datetime) -> dict[str, int]:
    """Units silent for UNIT_HEARTBEAT_TIMEOUT -> OFFLINE; their RUNNING tasks fail over. So do
    RUNNING tasks that no unit holds, once nobody has reported on them for as long (`orphans`)."""
    totals = dict.fromkeys(SWEEP_COUNTS, 0)
    while True:
        counts = _sweep_chunk(now)
        for key, value in counts.items():
            totals[key] += value
        if counts["unitsOffline"] < UNIT_CHUNK and counts["orphans"] < BATCH:
            return totals


@retry_on_lock_error()
@transaction.atomic
def _sweep_chunk(now: datetime) -> dict[str, int]:
    """Up to UNIT_CHUNK silent units and up to BATCH tasks no unit holds, in one transaction: a
    failure anywhere leaves the chunk as it was."""
    units, orphans = _sweep_units(now), fail_over_orphans(now, BATCH, actor=Actor.system("sweep_heartbeats"))
    return {key: units.get(key, 0) + orphans.get(key, 0) for key in SWEEP_COUNTS}


def _sweep_units(now: datetime) -> dict[str, int]:
    deadline = now - timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT)
    # Locking the unit rows orders us with heartbeats and claims: a unit that heartbeats while we
    # hold it waits, then finds itself OFFLINE and is told to abort the attempts it lost.
    dead = list(
        ExecutionUnit.objects.select_for_update(skip_locked=True)
        .filter(status__in=ALIVE, last_heartbeat_at__lt=deadline)  # the units.states.MOVES of a sweep
        .order_by("last_heartbeat_at")
        .values_list("id", flat=True)[:UNIT_CHUNK]
    )
    if not dead:
        return {}
    ExecutionUnit.objects.filter(id__in=dead).update(status=UnitStatus.OFFLINE)
    counts = fail_over_tasks(
        Q(unit_id__in=dead),
        reason=f"unit silent for more than {settings.UNIT_HEARTBEAT_TIMEOUT:g}s (heartbeat timeout): marked OFFLINE",
        actor=Actor.system("sweep_heartbeats"),
        now=now,
    )
    return {"unitsOffline": len(dead), **counts}
