"""Who holds a unit id and who drained it: the rules register, heartbeat, claim and edits share.

- **Instances.** A `taskhub-unit` process sends a random `instanceId`, made at its start, on
  register, heartbeat and claim. While the stored instance is live (it heartbeated within
  UNIT_HEARTBEAT_TIMEOUT and the unit is not OFFLINE), a register from another instance is refused
  (409 `unit_in_use`) unless it asks to `replace` it; a process that stopped cleanly said so (its
  last heartbeat made the unit OFFLINE), one that died is taken over once it has been silent past
  the timeout. A request without an instance id (the seed's examples, older agents) is not checked.
- **Drains.** MAINTENANCE records who set it. The unit's own drain (its process shutting down)
  ends when it registers again; an operator's (a user, or an API key with units:write) lasts until
  an operator resumes the unit, across restarts and OFFLINE spells.

These functions only decide: the callers hold the unit row lock and write.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from taskhub.base.actors import Actor, ActorType
from taskhub.base.errors import Conflict
from units.models import ExecutionUnit, UnitEviction
from units.states import ALIVE, DrainedBy, UnitStatus


class UnitInUse(Conflict):
    code = "unit_in_use"


class UnitReplaced(Conflict):
    code = "unit_replaced"


class UnitEvicted(Conflict):
    code = "unit_evicted"


EVICTION_DAYS = 7


def refuse_an_evicted_instance(unit_id: str, instance_id: str) -> None:
    """A register from the process whose unit an operator deregistered: refused, so its agent stops
    (a process without an instance id cannot be told apart, and is not checked)."""
    if not instance_id:
        return
    evicted = UnitEviction.objects.filter(unit_id=unit_id, instance_id=instance_id).order_by("-id").first()
    if evicted is not None:
        raise UnitEvicted(
            f"Execution unit {unit_id} was deregistered by {evicted.evicted_by or 'an operator'} at "
            f"{evicted.evicted_at.isoformat()} while this process (instance {instance_id}) ran it: it must "
            "stop. A new process may register the id again.",
            details={
                "unitId": unit_id,
                "instanceId": instance_id,
                "evictedBy": evicted.evicted_by,
                "evictedAt": evicted.evicted_at.isoformat(),
            },
        )


def record_eviction(unit: ExecutionUnit, actor: Actor, now: datetime) -> None:
    """Deregistration: remember the process that ran the unit (and forget old tombstones)."""
    UnitEviction.objects.filter(evicted_at__lt=now - timedelta(days=EVICTION_DAYS)).delete()
    if unit.instance_id:
        UnitEviction.objects.create(
            unit_id=unit.pk, instance_id=unit.instance_id, evicted_by=actor.label, evicted_at=now
        )


def is_live(status: str, last_heard_at: datetime, now: datetime) -> bool:
    """Whether the process registered as the unit is live: the unit is alive and was heard (a
    heartbeat, or a long-poll claim it held: ExecutionUnit.last_heard_at) within UNIT_HEARTBEAT_TIMEOUT."""
    return status in ALIVE and now - last_heard_at <= timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT)


def refuse_another_live_instance(unit: ExecutionUnit, instance_id: str, *, replace: bool, now: datetime) -> None:
    """Raise UnitInUse if `instance_id` would take the unit from a live process without `replace`."""
    held_by = unit.instance_id
    if not instance_id or replace or not held_by or held_by == instance_id:
        return
    heard = unit.last_heard_at
    if not is_live(unit.status, heard, now):
        return
    age = max((now - heard).total_seconds(), 0.0)
    timeout = settings.UNIT_HEARTBEAT_TIMEOUT
    raise UnitInUse(
        f"Execution unit {unit.pk} is in use by another process (instance {held_by}, last heard "
        f'{age:.1f}s ago). Stop that process, or register with "replace": true (taskhub-unit --replace) '
        f"to take over now; a process silent for {timeout:g}s is taken over without it.",
        details={
            "unitId": unit.pk,
            "instanceId": held_by,
            "lastHeartbeatAt": unit.last_heartbeat_at.isoformat(),
            "lastHeartbeatSecondsAgo": round(max((now - unit.last_heartbeat_at).total_seconds(), 0.0), 1),
            "lastHeardAt": heard.isoformat(),  # the later of it and its held long-poll claim's stamp
            "lastHeardSecondsAgo": round(age, 1),
            "heartbeatTimeoutSeconds": timeout,
        },
    )


def refuse_a_replaced_instance(unit_id: str, held_by: str, instance_id: str) -> None:
    """A heartbeat or claim from a process that is no longer the one registered as this unit."""
    if instance_id and held_by and held_by != instance_id:
        raise UnitReplaced(
            f"Execution unit {unit_id} is now registered by another process (instance {held_by}); "
            f"this process (instance {instance_id}) was replaced and must stop.",
            details={"unitId": unit_id, "instanceId": held_by},
        )


def drain_of(status: str, drained_by: str) -> str:
    """Who drained a unit ("self", "operator"), or "" if it is not drained. A MAINTENANCE that
    names nobody (written before drains were recorded, or by hand) counts as an operator's."""
    if drained_by:
        return drained_by
    return DrainedBy.OPERATOR if status == UnitStatus.MAINTENANCE else ""


def drained_by(unit: ExecutionUnit) -> str:
    return drain_of(unit.status, unit.drained_by)


def record_drain(unit: ExecutionUnit, actor: Actor, now: datetime) -> None:
    """Drain the unit for `actor`. A unit draining itself never turns an operator's drain into its
    own (its restart would then end it); an operator's drain replaces the unit's own."""
    by = DrainedBy.SELF if actor.type == ActorType.UNIT else DrainedBy.OPERATOR
    current = drained_by(unit)
    if current == DrainedBy.OPERATOR or current == by:
        if not unit.drained_by:  # attribute a MAINTENANCE nobody had claimed
            unit.drained_by, unit.drained_at = current, unit.drained_at or now
        return
    unit.drained_by, unit.drained_by_actor, unit.drained_at = by, actor.label, now


def clear_drain(unit: ExecutionUnit) -> None:
    unit.drained_by, unit.drained_by_actor, unit.drained_at = "", "", None


def drain_after_register(unit: ExecutionUnit, now: datetime) -> datetime | None:
    """A new registration ends the unit's own drain and keeps an operator's: set the status, and
    return when the cleared drain began (None if none was cleared)."""
    by = drained_by(unit)
    if by == DrainedBy.SELF:
        began = unit.drained_at or now
        clear_drain(unit)
        unit.status = UnitStatus.ONLINE
        return began
    unit.status = UnitStatus.MAINTENANCE if by == DrainedBy.OPERATOR else UnitStatus.ONLINE
    if by and not unit.drained_by:
        unit.drained_by = by
    return None


def drain_fields(status: str, drained_by: str, actor: str, at: datetime | None) -> dict[str, Any]:
    """The API's view of a drain (units, the register and heartbeat replies)."""
    by = drain_of(status, drained_by)
    return {"drainedBy": by or None, "drainedByActor": (actor or None) if by else None, "drainedAt": at if by else None}
