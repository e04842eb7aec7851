"""What entering a state sets, declared once, whoever causes the move.

Each state's entry effects are data (`Effect`: a field and how its value is made) that both kinds
of write use: on a row in memory (`enter`: the single-row transitions, unit reports, the claim's
locked rows, timeouts, the verbs on many rows) and as the SET values of a set-based UPDATE
(`entry_values`: failover, poison, the retry mover). So the rule "a PENDING task is claimable from
max(now, scheduledAt)" exists here only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, DateTimeField, F, Value, When
from django.db.models.functions import Coalesce, Greatest

from tasks.models import Task
from tasks.states import TERMINAL, TaskStatus

S = TaskStatus


@dataclass(frozen=True)
class Effect:
    """One field entering a state sets: `value(task, now)` on a row in memory, and `sql(now)` as a
    value or expression of `QuerySet.update()`, or None where the value needs the row (only the
    claim enters RUNNING, and it has the rows in memory)."""

    field: str
    value: Callable[[Task, datetime], Any]
    sql: Callable[[datetime], Any] | None = None

    def apply(self, task: Task, now: datetime) -> None:
        setattr(task, self.field, self.value(task, now))


def _constant(field: str, value: Any) -> Effect:
    return Effect(field, lambda task, now: value, lambda now: value)


def _now(field: str) -> Effect:
    return Effect(field, lambda task, now: now, lambda now: now)


def lease_deadline(now: datetime) -> datetime:
    """Until when a RUNNING task that no unit holds is left alone without a report on it: as long
    as a unit may stay silent before its tasks fail over."""
    return now + timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT)


def _stamp(now: datetime) -> Value:
    return Value(now, output_field=DateTimeField())


# A PENDING task is claimable from its schedule, or now if that has passed (or it has none).
AVAILABLE_AT = Effect(
    "available_at",
    lambda task, now: max(now, task.scheduled_at) if task.scheduled_at else now,
    lambda now: Greatest(_stamp(now), Coalesce(F("scheduled_at"), _stamp(now))),
)
# A unit's heartbeat keeps the tasks it holds; a RUNNING task that no unit holds has a lease of its
# own instead. Every other entry (the claim too: it sets the unit first) clears it.
_LEASE = Effect(
    "lease_expires_at",
    lambda task, now: lease_deadline(now) if task.status == S.RUNNING and task.unit_id is None else None,
)
# A terminal task releases its uniqueKey slot (tasks/unique.py), unless a period (uniqueFor) holds it.
_UNIQUE_RELEASE = Effect(
    "unique_slot",
    lambda task, now: task.unique_slot if task.unique_until is not None else None,
    lambda now: Case(When(unique_until__isnull=True, then=Value(None)), default=F("unique_slot")),
)
_FINISHED = (_now("finished_at"), _constant("timeout_at", None), _constant("next_retry_at", None))

ENTRY: dict[str, tuple[Effect, ...]] = {
    S.PENDING: (
        AVAILABLE_AT,
        _constant("held_back", False),  # a limited queue's claim holds it back again if its key is full
        _constant("next_retry_at", None),
        _constant("timeout_at", None),
        _constant("finished_at", None),
    ),
    S.RUNNING: (
        Effect("attempt", lambda task, now: task.attempt + 1, lambda now: F("attempt") + 1),
        _now("started_at"),
        _constant("progress", 0),
        _constant("pending_command", ""),
        Effect(
            "timeout_at",
            lambda task, now: now + timedelta(seconds=task.timeout_seconds) if task.timeout_seconds else None,
        ),
        _constant("next_retry_at", None),
    ),
    S.PAUSED: (_constant("next_retry_at", None),),
    S.COMPLETED: (*_FINISHED, _UNIQUE_RELEASE),
    S.FAILED: _FINISHED,  # not terminal: a retry (automatic or by hand) runs it again, under its key
    S.CANCELLED: (*_FINISHED, _UNIQUE_RELEASE),
}
assert {s for s, effects in ENTRY.items() if _UNIQUE_RELEASE in effects} == TERMINAL


def enter(task: Task, target: str, now: datetime) -> set[str]:
    """Move `task` into `target` in memory: its status, `updated_at` and `target`'s entry effects.
    Returns the names of the fields set (the caller saves them)."""
    task.status = target
    task.updated_at = now
    for effect in ENTRY[target]:
        effect.apply(task, now)
    _LEASE.apply(task, now)
    return {"status", "updated_at", "lease_expires_at", *(effect.field for effect in ENTRY[target])}


def entry_values(target: str, now: datetime) -> dict[str, Any]:
    """The same move as `enter`, as the values of `QuerySet.update()` (failover, poison, the retry
    mover). No set-based move makes a RUNNING task that no unit holds, so the lease is cleared."""
    values: dict[str, Any] = {"status": target, "updated_at": now, "lease_expires_at": None}
    for effect in ENTRY[target]:
        if effect.sql is None:
            raise ValueError(f"{effect.field} on entering {target} needs the row: only the claim enters {target}")
        values[effect.field] = effect.sql(now)
    return values
