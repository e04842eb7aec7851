"""Execution-unit writes: register, heartbeat, edit, drain, deregister. The unit row is written here
(its hot-path statements in units.sql); task rows only through the tasks package."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from taskhub.apikeys.models import DEFAULT_POOL
from taskhub.apikeys.tokens import digest, new_unit_token
from taskhub.base import doorbell
from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.errors import Forbidden, NotFound
from taskhub.base.sql import aware, db_now
from tasks import heartbeat
from tasks.states import TaskStatus
from tasks.transitions.bulk import fail_over_tasks
from units import hearing, idle, lifecycle, sql
from units.models import ExecutionUnit
from units.states import CLAIMING, Cause, UnitStatus, check_move

S = TaskStatus


def _lock_unit(unit_id: str, queryset: QuerySet[ExecutionUnit] | None = None) -> ExecutionUnit:
    locked = queryset.select_for_update() if queryset is not None else None
    unit = sql.lock_unit_row(unit_id) if locked is None else locked.filter(pk=unit_id).first()
    if unit is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    return unit


class Registration(NamedTuple):
    unit: ExecutionUnit
    token: str
    created: bool
    cleared_drain_at: datetime | None  # this registration ended the unit's own drain, begun then


@retry_on_lock_error()
def unit_register(*, owner: Any, data: dict[str, Any], now: datetime | None = None) -> Registration:
    """First registration creates the unit (created=True); a re-registration by the same key
    refreshes it and issues a new token. A restarted unit holds none of its earlier attempts, so
    they fail over at once. `data` may carry `instance_id` (the registering process) and `replace`
    (take the unit from a live process): see units.lifecycle. The unit row lock serialises
    registrations of one id, so of two instances registering at once the second finds the first
    live."""
    now = now or db_now()  # the database's clock: the sweeper reads last_heartbeat_at with it
    token = new_unit_token()
    fields = {**data, "token_hash": digest(token), "last_heartbeat_at": now}
    unit_id = fields.pop("id")
    replace = bool(fields.pop("replace", False))
    fields["instance_id"] = fields.get("instance_id") or ""
    lifecycle.refuse_an_evicted_instance(unit_id, fields["instance_id"])
    pool = getattr(owner, "pool", None) or DEFAULT_POOL  # the registering key's execution pool
    try:
        with transaction.atomic():
            unit = ExecutionUnit.objects.select_for_update().filter(pk=unit_id).first()
            if unit is None:
                unit = ExecutionUnit.objects.create(
                    id=unit_id, owner=owner, registered_at=now, status=UnitStatus.ONLINE, pool=pool, **fields
                )
                return Registration(unit, token, True, None)
            if unit.owner_id != getattr(owner, "pk", None):
                raise Forbidden(f"Execution unit {unit_id} was registered by another API key")
            lifecycle.refuse_another_live_instance(unit, fields["instance_id"], replace=replace, now=now)
            for name, value in fields.items():
                setattr(unit, name, value)
            unit.pool = pool
            before = unit.status
            cleared = lifecycle.drain_after_register(unit, now)
            check_move(before, unit.status, Cause.REGISTER)
            unit.save()
            fail_over_tasks(
                Q(unit_id=unit_id),
                reason=f"unit {unit_id} re-registered (restarted)",
                actor=Actor.system("register"),
                now=now,
                counted=not hearing.recovering(now),
            )
            return Registration(unit, token, False, cleared)
    except IntegrityError:
        # Two first registrations raced: the loser retries as a re-registration.
        if not ExecutionUnit.objects.filter(pk=unit_id).exists():
            raise
        return unit_register(owner=owner, data={"id": unit_id, **data}, now=now)


@retry_on_lock_error()
@transaction.atomic
def unit_heartbeat(
    unit_id: str,
    *,
    current_load: int,
    metadata: dict[str, Any] | None,
    tasks: list[dict[str, Any]] | None,
    instance_id: str = "",
    stopping: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Record liveness; with a task list, reconcile the unit's leases against it.

    Listed tasks whose attempt is live are renewed (and their progress recorded); leased tasks not
    listed fail over at once (unless claimed within the last `list_grace()` seconds); listed tasks
    that are no longer the unit's get a command: the stored cancel/pause, or abort for a stale
    attempt. `stopping`: the process is exiting; the unit goes OFFLINE (so a new process may
    register at once). A heartbeat from an instance that was replaced is refused (409). Without
    `now`, the liveness stamp is the database's clock (what the sweeper compares it with)."""
    db_clock = now is None
    now = now or timezone.now()
    # The hot path of every unit, in plain SQL (the ORM spent more CPU building these statements
    # than the database spends answering them): the unit row lock, one read of the leases, the
    # progress that changed, the unit UPDATE.
    locked = sql.lock_unit_columns(
        unit_id,
        ("id", "status", "capacity", "metadata", "instance_id", "drained_by", "drained_by_actor", "drained_at"),
    )
    if locked is None:
        raise NotFound(f"Execution unit {unit_id} not found")
    unit_id, unit_status, capacity, stored_metadata, held_by, drained_by, drained_by_actor, drained_at = locked
    # Under the lock: a replacement that committed after this request was authenticated is seen.
    lifecycle.refuse_a_replaced_instance(unit_id, held_by, instance_id)
    failed_over: list[int] = []
    commands: list[dict[str, Any]] = []
    # (id, attempt, status, progress, started within the grace) of the unit's leases; with a task
    # list, the same read finds the commands stored for tasks this unit held last (their rows sit
    # beside its leases): the UPDATE that clears the acted-on ones below then runs only when there
    # are some, instead of on every heartbeat.
    rows = heartbeat.leases(unit_id, with_commands=tasks is not None, grace_start=now - timedelta(seconds=list_grace()))
    live = [(tid, att, young) for tid, att, status, _, young in rows if status == S.RUNNING]
    if tasks is not None:
        listed = {t["id"]: t for t in tasks}
        # A claim reply may still be on its way to the unit when it sends this list: a lease
        # younger than the grace is not lost for being unlisted (the next heartbeat decides).
        held = {(tid, att) for tid, att, _ in live if listed.get(tid, {}).get("attempt") == att}
        young = {(tid, att) for tid, att, recent in live if tid not in listed and recent}
        lost = [tid for tid, att, _ in live if (tid, att) not in held and (tid, att) not in young]
        if lost:
            fail_over_tasks(
                Q(id__in=lost),
                reason=f"unit {unit_id} no longer runs this attempt (heartbeat)",
                actor=Actor.system("heartbeat"),
                now=now,
                counted=not hearing.recovering(now),  # e.g. a claim reply lost in the hub's outage
            )
            failed_over = lost
        stored = {tid: progress for tid, _, status, progress, _ in rows if status == S.RUNNING}
        heartbeat.record_progress(
            unit_id,
            {
                tid: listed[tid]["progress"]
                for tid, _ in held
                if listed[tid].get("progress") is not None and listed[tid]["progress"] != stored[tid]
            },
        )
        live_set = held | young
        stale = {t["id"]: t["attempt"] for t in tasks if (t["id"], t["attempt"]) not in live_set}
        commands = heartbeat.commands_for(unit_id, stale)
        # The unit no longer lists these: it has acted on their commands (the tasks failed over
        # just now are unlisted too). The UPDATE re-checks every condition on the rows it changes.
        acted = ({tid for tid, _, status, _, _ in rows if status != S.RUNNING} | set(lost)) - set(stale)
        if acted:
            heartbeat.clear_acted_commands(unit_id, acted)
        running = len(live_set)
    else:
        commands = heartbeat.commands_for(unit_id, None)
        running = len(live)
    if stopping:
        status = UnitStatus.OFFLINE
    elif lifecycle.drain_of(unit_status, drained_by):  # also a drained unit back from OFFLINE
        status = UnitStatus.MAINTENANCE
    else:
        status = UnitStatus.BUSY if running >= capacity else UnitStatus.ONLINE
    unit_status = check_move(unit_status, status, Cause.HEARTBEAT)
    sql.save_heartbeat(unit_id, None if db_clock else now, current_load, unit_status, metadata, stored_metadata)
    claiming = unit_status in CLAIMING
    return {
        "unitId": unit_id,
        "status": str(unit_status),
        "heartbeatIntervalSeconds": settings.UNIT_HEARTBEAT_INTERVAL,
        # Holding nothing, the unit may heartbeat this rarely while its long poll waits (units.idle).
        "idleHeartbeatIntervalSeconds": idle.idle_heartbeat_interval(unit_status, running, stopping=stopping),
        "heartbeatTimeoutSeconds": settings.UNIT_HEARTBEAT_TIMEOUT,
        "runningTasks": running,
        "freeCapacity": max(capacity - running, 0) if claiming else 0,
        "commands": commands,
        "failedOver": failed_over,
        "serverTime": now,
        **lifecycle.drain_fields(unit_status, drained_by, drained_by_actor, aware(drained_at)),
    }


def list_grace() -> float:
    return min(settings.UNIT_HEARTBEAT_INTERVAL, 5.0)


@transaction.atomic
def unit_update(
    unit_id: str, changes: dict[str, Any], *, queryset: QuerySet[ExecutionUnit], actor: Actor
) -> ExecutionUnit:
    """Edit a unit. `status` MAINTENANCE drains it for `actor` (see units.lifecycle: the unit's own
    drain or an operator's); ONLINE resumes it, ending any drain (an OFFLINE unit stays OFFLINE
    until it heartbeats or registers, then claims again)."""
    unit = _lock_unit(unit_id, queryset)
    status = changes.pop("status", None)
    if status == UnitStatus.MAINTENANCE:
        lifecycle.record_drain(unit, actor, timezone.now())
        if unit.status != UnitStatus.OFFLINE:  # an OFFLINE unit comes back drained
            unit.status = check_move(unit.status, UnitStatus.MAINTENANCE, Cause.DRAIN)
    elif status == UnitStatus.ONLINE:
        lifecycle.clear_drain(unit)
        if unit.status == UnitStatus.MAINTENANCE:  # BUSY stays BUSY; OFFLINE comes back by heartbeating
            unit.status = check_move(unit.status, UnitStatus.ONLINE, Cause.RESUME)
    for name, value in changes.items():
        setattr(unit, name, value)
    unit.save()
    # A long-poll claim of this unit waiting now re-claims (and sees a drain or new capacity).
    doorbell.ring_on_commit([(doorbell.unit_key(unit_id), doorbell.ALL, None)])
    return unit


@transaction.atomic
def unit_delete(unit_id: str, *, queryset: QuerySet[ExecutionUnit], actor: Actor) -> dict[str, int]:
    """Deregister: the unit's RUNNING tasks fail over first, then the row goes (its token dies).
    The process that ran it is evicted: its registrations are refused from now on (see
    units.lifecycle), so it stops instead of registering again and restarting work."""
    unit = _lock_unit(unit_id, queryset)
    lifecycle.record_eviction(unit, actor, timezone.now())
    counts = fail_over_tasks(
        Q(unit_id=unit_id),
        reason=f"unit {unit_id} deregistered by {actor.label}",
        actor=actor if actor.is_system else Actor.system("deregister"),
        now=timezone.now(),
    )
    unit.delete()
    doorbell.ring_on_commit([(doorbell.unit_key(unit_id), doorbell.ALL, None)])
    return counts
