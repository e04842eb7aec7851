"""The set-based moves: many rows in a bounded number of statements, never one per row.

- the claim's lease (PENDING -> RUNNING), on the rows it locked and hands back;
- failover (RUNNING -> PENDING, or -> FAILED as poison past TASK_MAX_FAILOVER_COUNT), by a filter
  the caller gives (a unit's tasks) or for the RUNNING tasks nobody reports on (`fail_over_orphans`);
- due retries (FAILED -> PENDING once the backoff has elapsed).

What entering each state sets comes from `tasks.entry` (in memory for the claim, as UPDATE values for
the others); history rows go through `tasks.history`.
"""

from __future__ import annotations

from collections import Counter as TypeCounter
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from taskhub.apikeys.models import DEFAULT_POOL
from taskhub.base import doorbell, metrics
from taskhub.base.actors import Actor, ActorType
from tasks import sql
from tasks.entry import enter, entry_values
from tasks.history import new_history, write_history
from tasks.models import Task, TaskStatusHistory
from tasks.states import ControlCommand, ReasonCode, TaskStatus, can_transition

S = TaskStatus
CHUNK = 1000
assert can_transition(S.PENDING, S.RUNNING)
assert can_transition(S.RUNNING, S.PENDING, system=True)
assert can_transition(S.RUNNING, S.FAILED, system=True)
assert can_transition(S.FAILED, S.PENDING, system=True)


# --- the claim's lease --------------------------------------------------------------------------


def lease_to_unit(
    unit_pk: str,
    unit_type: str,
    wanted: int,
    now: datetime,
    pool: str = DEFAULT_POOL,
    *,
    pick: Callable[[list[Task]], list[Task]] | None = None,
) -> list[Task]:
    """PENDING -> RUNNING for up to `wanted` claimable tasks of `unit_type`, leased to the unit (the
    claim; the caller holds the unit row lock). The locked rows are what the unit gets back: the
    entry into RUNNING is applied to them in memory, and one UPDATE per distinct timeout (the only
    per-row value besides the attempt increment) writes the same values; one INSERT writes their
    history rows. A limited queue's claim (units.claim) passes `pick`, which chooses among the
    locked rows (it may hold others back; the rest stay PENDING, untouched)."""
    tasks = sql.lock_claimable(unit_type, now, wanted, pool) if wanted > 0 else []
    if pick is not None:
        tasks = pick(tasks)
    metrics.record_dispatch(
        unit_type,
        [(now - task.available_at).total_seconds() for task in tasks],
        [(now - (task.scheduled_at or task.created_at)).total_seconds() for task in tasks if task.attempt == 0],
    )
    groups: dict[int | None, list[Task]] = defaultdict(list)
    changed: set[str] = set()
    for task in tasks:
        task.unit_id = unit_pk
        changed = enter(task, S.RUNNING, now)
        groups[task.timeout_seconds].append(task)
    for group in groups.values():
        sql.update_claimed(group, sorted(changed - {"attempt"}), unit_pk)
    actor = Actor.unit(unit_pk)
    write_history(
        [
            new_history(
                task.pk,
                task.attempt,
                unit_pk,
                S.PENDING,
                S.RUNNING,
                actor=actor,
                reason="claimed",
                code=ReasonCode.CLAIMED,
                now=now,
            )
            for task in tasks
        ]
    )
    return tasks


# --- failover -----------------------------------------------------------------------------------


def fail_over_tasks(
    where: Q,
    *,
    reason: str,
    actor: Actor,
    now: datetime,
    reasons: Mapping[int, str] | None = None,
    limit: int | None = None,
    counted: bool = True,
) -> dict[str, int]:
    """Fail over every RUNNING task matching `where` (up to `limit`), taken with SKIP LOCKED. Must
    run inside a transaction (the caller holds the unit rows locked, so no claim adds tasks
    underneath). `reasons` may say why per task (in its history row); `reason` stands for the
    others and goes into a poison task's error. `counted=False`: a failover the unit is not to blame
    for (the hub's own outage, units.hearing): not counted toward TASK_MAX_FAILOVER_COUNT, never
    poison. Returns counts."""
    assert transaction.get_connection().in_atomic_block
    why: Callable[[int], str] = (lambda task_id: reasons.get(task_id, reason)) if reasons else (lambda _: reason)
    counts = {"failedOver": 0, "poisoned": 0}
    failed_over: TypeCounter[str] = TypeCounter()
    poisoned: TypeCounter[str] = TypeCounter()
    cap = settings.TASK_MAX_FAILOVER_COUNT
    running = (
        Task.objects.filter(where, status=S.RUNNING)
        .select_for_update(skip_locked=True)
        .order_by("id")
        .values_list("id", "attempt", "unit_id", "failover_count", "task_type")
    )
    rows = list(running if limit is None else running[:limit])
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        back = [r for r in chunk if r[3] + 1 <= cap or not counted]
        poison = [r for r in chunk if r[3] + 1 > cap and counted]
        taken: dict[str, Any] = {"pending_command": ControlCommand.ABORT}
        if counted:
            taken["failover_count"] = F("failover_count") + 1
        if back:
            Task.objects.filter(id__in=[r[0] for r in back], status=S.RUNNING).update(
                **entry_values(S.PENDING, now), **taken
            )
        if poison:
            Task.objects.filter(id__in=[r[0] for r in poison], status=S.RUNNING).update(
                **entry_values(S.FAILED, now),
                **taken,
                error=f"poison: lost by its unit more than {cap} times ({reason})",
            )
        write_history(
            _history(back, S.PENDING, why, ReasonCode.FAILOVER, actor, now)
            + _history(
                poison,
                S.FAILED,
                lambda t: f"poison: failed over more than {cap} times; last: {why(t)}",
                ReasonCode.POISONED,
                actor,
                now,
            )
        )
        counts["failedOver"] += len(back)
        counts["poisoned"] += len(poison)
        failed_over.update(r[4] for r in back)
        poisoned.update(r[4] for r in poison)
        doorbell.ring_on_commit(doorbell.claimable_rings((r[4], None) for r in back))
    metrics.record_failover(failed_over, poisoned)
    return counts


def fail_over_orphans(now: datetime, limit: int, *, actor: Actor, lapsed_before: datetime | None) -> dict[str, int]:
    """Fail over up to `limit` RUNNING tasks that no unit holds and nobody reports on: those whose
    lease ran out (started with PUT status: `Task.lease_expires_at`), and those whose unit row was
    deleted without a deregistration (SET_NULL left them neither a unit nor a lease). Two polls,
    each on its index; the rows stay locked (SKIP LOCKED: a second sweeper takes others).
    `lapsed_before`: leases count as run out before this time (`now`, or less when the hub could
    not hear; None: it heard nobody long enough to tell, see units.hearing, and none has run out)."""
    running = Task.objects.select_for_update(skip_locked=True).filter(status=S.RUNNING)
    # Past the lease, not at it: like a unit, a task is lost when silent for more than the timeout.
    polls = [running.filter(unit__isnull=True, lease_expires_at__isnull=True).order_by("id")]
    if lapsed_before is not None:
        polls.insert(0, running.filter(lease_expires_at__lt=lapsed_before).order_by("lease_expires_at"))
    ids: list[int] = []
    for poll in polls:
        if len(ids) < limit:
            ids += poll.values_list("id", flat=True)[: limit - len(ids)]
    if not ids:
        return {}
    # Who put each task in RUNNING (its newest RUNNING history row) says why nobody reports on it.
    started = {
        task_id: (actor_type, starter, unit_id)
        for task_id, actor_type, starter, unit_id in TaskStatusHistory.objects.filter(
            task_id__in=ids, to_status=S.RUNNING
        )
        .order_by("task_id", "id")
        .values_list("task_id", "actor_type", "actor", "unit_id")
    }
    timeout = settings.UNIT_HEARTBEAT_TIMEOUT
    reasons = {}
    for task_id in ids:
        actor_type, starter, unit_id = started.get(task_id, ("", "someone", None))
        if actor_type == ActorType.UNIT:
            reasons[task_id] = f"its unit {unit_id} was removed without deregistering; no unit holds it"
        else:
            reasons[task_id] = f"started by {starter} without a unit; nobody reported on it for {timeout:g}s"
    counts = fail_over_tasks(
        Q(id__in=ids), reason="RUNNING with no unit reporting on it", reasons=reasons, actor=actor, now=now
    )
    return {"orphans": counts["failedOver"] + counts["poisoned"], **counts}


def _history(
    rows: Iterable[tuple[int, int, str | None, int, str]],
    target: str,
    why: Callable[[int], str],
    code: str,
    actor: Actor,
    now: datetime,
) -> list[TaskStatusHistory]:
    return [
        new_history(task_id, attempt, unit_id, S.RUNNING, target, actor=actor, reason=why(task_id), code=code, now=now)
        for task_id, attempt, unit_id, *_ in rows
    ]


# --- due retries --------------------------------------------------------------------------------


def retry_due(now: datetime, limit: int) -> int:
    """Up to `limit` FAILED tasks whose backoff has elapsed -> PENDING (taken with SKIP LOCKED), in
    the transaction of the caller. Returns how many."""
    rows = list(
        Task.objects.select_for_update(skip_locked=True)
        .filter(status=S.FAILED, next_retry_at__lte=now)
        .order_by("next_retry_at")
        .values_list("id", "attempt", "unit_id", "retry_count", "max_retries", "task_type")[:limit]
    )
    if not rows:
        return 0
    Task.objects.filter(id__in=[r[0] for r in rows], status=S.FAILED).update(**entry_values(S.PENDING, now))
    actor = Actor.system("move_due_retries")
    write_history(
        [
            new_history(
                task_id,
                attempt,
                unit_id,
                S.FAILED,
                S.PENDING,
                actor=actor,
                reason=f"automatic retry {retries}/{max_retries} after backoff",
                code=ReasonCode.RETRIED,
                now=now,
            )
            for task_id, attempt, unit_id, retries, max_retries, _ in rows
        ]
    )
    doorbell.ring_on_commit(doorbell.claimable_rings((r[5], None) for r in rows))
    metrics.record_retries(TypeCounter(row[5] for row in rows))
    return len(rows)
