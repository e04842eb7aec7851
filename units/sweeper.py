"""The heartbeat sweeper: units silent for UNIT_HEARTBEAT_TIMEOUT go OFFLINE and their RUNNING tasks
fail over; so do RUNNING tasks left on a unit that is no longer alive, and RUNNING tasks that no
unit holds once nobody has reported on them for as long.

A plain function of `now`, safe when two run at once (rows are taken with SKIP LOCKED). The job
registry (taskhub.jobs) runs `sweep_job` from Celery beat and `manage.py runjob sweep_heartbeats`,
with the database's clock: it first asks units.hearing when the hub could hear its units, and fails
over only units silent for the timeout while it was listening (a hub outage fails nothing over).
`sweep_heartbeats(now)` without a window is the sweep of a hub that heard all along.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet

from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from tasks.fencing import live_lease
from tasks.models import Task
from tasks.transitions.bulk import fail_over_orphans, fail_over_tasks
from units import hearing
from units.models import ExecutionUnit, last_heard
from units.states import ALIVE, UnitStatus

UNIT_CHUNK = 500
BATCH = 1000
SWEEP_COUNTS = ("unitsOffline", "failedOver", "poisoned", "orphans")


def sweep_job(now: datetime) -> dict[str, int]:
    """The periodic sweep: `sweep_heartbeats` within what the hub could hear (units.hearing)."""
    return sweep_heartbeats(now, window=hearing.observe(now))


def sweep_heartbeats(now: datetime, *, window: hearing.Window | None = None) -> dict[str, int]:
    """Units silent for UNIT_HEARTBEAT_TIMEOUT -> OFFLINE; their RUNNING tasks fail over. So do
    RUNNING tasks that no unit holds, once nobody has reported on them for as long (`orphans`).
    With a `window`, the silence counts only while the hub was listening (units.hearing)."""
    totals = dict.fromkeys(SWEEP_COUNTS, 0)
    while True:
        counts = _sweep_chunk(now, window)
        for key, value in counts.items():
            totals[key] += value
        if counts["unitsOffline"] < UNIT_CHUNK and counts["orphans"] < BATCH:
            return totals


@retry_on_lock_error()
@transaction.atomic
def _sweep_chunk(now: datetime, window: hearing.Window | None = None) -> dict[str, int]:
    """Up to UNIT_CHUNK silent units and up to BATCH tasks no unit holds, in one transaction: a
    failure anywhere leaves the chunk as it was."""
    actor = Actor.system("sweep_heartbeats")
    lapsed_before = now if window is None else (window.until if window.silent_before() is not None else None)
    passes = (
        _sweep_units(now, window),
        _sweep_left_behind(now),
        fail_over_orphans(now, BATCH, actor=actor, lapsed_before=lapsed_before),
    )
    return {key: sum(counts.get(key, 0) for counts in passes) for key in SWEEP_COUNTS}


def _sweep_units(now: datetime, window: hearing.Window | None) -> dict[str, int]:
    timeout = settings.UNIT_HEARTBEAT_TIMEOUT
    heard = now - timedelta(seconds=timeout) if window is None else window.silent_before()
    # Silent for the timeout while the hub listened, or (every unit silent) past HUB_OUTAGE_GRACE.
    deadlines = [d for d in (heard, None if window is None else window.beyond_grace()) if d is not None]
    if not deadlines:
        return {}
    deadline = max(deadlines)
    # Locking the unit rows orders us with heartbeats and claims: a unit that heartbeats while we
    # hold it waits, then finds itself OFFLINE and is told to abort the attempts it lost.
    dead = list(silent_units(deadline)[:UNIT_CHUNK])
    if not dead:
        return {}
    ExecutionUnit.objects.filter(id__in=[unit_id for unit_id, _ in dead]).update(status=UnitStatus.OFFLINE)
    # Silent while the hub listened: the unit's doing. Past HUB_OUTAGE_GRACE only: maybe the hub's
    # (every unit was silent at once), so it does not count toward poison.
    heard_dead = [unit_id for unit_id, last in dead if heard is not None and last < heard]
    unsure = [unit_id for unit_id, last in dead if heard is None or last >= heard]
    counts = {"unitsOffline": len(dead), "failedOver": 0, "poisoned": 0}
    reason = f"unit silent for more than {timeout:g}s (heartbeat timeout): marked OFFLINE"
    for ids, counted, why in (
        (heard_dead, True, reason),
        (unsure, False, f"{reason}; every unit was silent, which may be the hub's own outage: not counted as poison"),
    ):
        if ids:
            moved = fail_over_tasks(
                Q(unit_id__in=ids), reason=why, actor=Actor.system("sweep_heartbeats"), now=now, counted=counted
            )
            counts["failedOver"] += moved["failedOver"]
            counts["poisoned"] += moved["poisoned"]
    return counts


def silent_units(deadline: datetime) -> QuerySet[ExecutionUnit, tuple[str, datetime]]:
    """(id, last heard) of the alive units last heard (a heartbeat, or the stamp of a held claim:
    units.models.last_heard) before `deadline`, locked (SKIP LOCKED), oldest heartbeat first. The
    heartbeat's own test keeps the poll on unit_liveness_idx."""
    return (
        ExecutionUnit.objects.select_for_update(skip_locked=True)
        .annotate(heard=last_heard())
        .filter(status__in=ALIVE, last_heartbeat_at__lt=deadline, heard__lt=deadline)  # units.states.MOVES
        .order_by("last_heartbeat_at")
        .values_list("id", "heard")
    )


def _sweep_left_behind(now: datetime) -> dict[str, int]:
    """Fail over up to BATCH tasks still RUNNING on a unit that is no longer alive. The failover of a
    silent unit takes its tasks with SKIP LOCKED: one whose row something held at that moment (a
    progress report, an edit) is skipped, and no later sweep of silent units comes back to it, since
    its unit is OFFLINE by then. The units are taken locked as the silent ones are (a heartbeat of
    one of them waits, or is passed over); a poll of the units' status index, each probing its
    leases on task_unit_status_idx."""
    leases = Task.objects.filter(**live_lease(OuterRef("pk")))
    lost = list(
        ExecutionUnit.objects.select_for_update(skip_locked=True)
        .exclude(status__in=ALIVE)
        .filter(Exists(leases))
        .order_by()
        .values_list("id", flat=True)[:UNIT_CHUNK]
    )
    if not lost:
        return {}
    counts = fail_over_tasks(
        Q(unit_id__in=lost),
        reason="its unit went OFFLINE while the task was held by another request; no live unit holds it",
        actor=Actor.system("sweep_heartbeats"),
        now=now,
        limit=BATCH,
    )
    return {"orphans": counts["failedOver"] + counts["poisoned"], **counts}
