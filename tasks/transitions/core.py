"""The rules every move follows: check the table, apply the entry effects in memory, write.

A move is planned on a locked row in memory (`plan`: the fields it changed and its history rows)
and written by `write`, the one writer of moved rows for one task or many: rows that got the same
values share one UPDATE ... WHERE id IN (...) (past MAX_GROUPED_UPDATES groups, one UPDATE with a
CASE per field serves them all), and all their history rows go in one INSERT. The statements are
bounded per batch, not per row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from taskhub.base import doorbell, metrics
from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict, NotFound
from tasks.entry import enter
from tasks.history import history_row, write_history
from tasks.models import Task, TaskStatusHistory
from tasks.states import SYSTEM_ONLY, TaskStatus, allowed_targets, can_transition

S = TaskStatus
OUTCOMES = frozenset({S.COMPLETED, S.FAILED})  # moves counted (and timed) in /metrics
MAX_GROUPED_UPDATES = 4
# Whether a unit (by id) may still be running what it holds: the units' question, asked by the
# layer above (which sees both) and passed down, since tasks never import units.
LiveUnit = Callable[[str], bool]


def assume_live(unit_id: str) -> bool:
    """The cautious answer for a caller that did not ask the units: the holder may be live."""
    return True


def held_by_live_unit(task: Task, live_unit: LiveUnit = assume_live) -> bool:
    """Whether a live unit holds this RUNNING task (it heartbeats, so it may be running it): then
    only the hub may take it back. `live_unit` is asked only about a RUNNING task with a unit."""
    return task.status == S.RUNNING and task.unit_id is not None and live_unit(task.unit_id)


class IllegalTransition(Conflict):
    code = "illegal_transition"

    def __init__(self, task: Task, target: str, *, system: bool = False, held: bool = True) -> None:
        """`held`: a live unit holds the task (`held_by_live_unit`); allowedTargets depend on it."""
        allowed = allowed_targets(task.status, system=system, held=held)
        message = (
            f"Task {task.pk} cannot go from {task.status} to {target}; "
            f"allowed: {', '.join(allowed) if allowed else 'none (terminal state)'}"
        )
        details: dict[str, Any] = {"currentStatus": task.status, "requestedStatus": target, "allowedTargets": allowed}
        if held and (task.status, target) in SYSTEM_ONLY:
            message += (
                f". Unit {task.unit_id} holds it and is live: the hub takes a task back from its unit only when "
                f"the unit stops heartbeating (for {settings.UNIT_HEARTBEAT_TIMEOUT:g}s). To stop it now, PUT "
                "status CANCELLED; to run it again later, PUT status PAUSED, then PENDING"
            )
            details["unitId"] = task.unit_id
        super().__init__(message, details=details)


def lock(task_id: int, queryset: QuerySet[Task] | None = None) -> Task:
    qs = (queryset if queryset is not None else Task.objects.all()).select_for_update()
    try:
        return qs.get(pk=task_id)
    except Task.DoesNotExist:
        raise NotFound(f"Task {task_id} not found") from None


def lock_many(task_ids: Iterable[int], queryset: QuerySet[Task] | None = None) -> dict[int, Task]:
    """The rows among `task_ids` (in `queryset`), locked in id order: two callers locking
    overlapping sets never wait on each other in a cycle."""
    qs = (queryset if queryset is not None else Task.objects.all()).select_for_update()
    return {task.pk: task for task in qs.filter(pk__in=sorted(set(task_ids))).order_by("id")}


@dataclass
class Move:
    """A move planned on a locked row: the row as moved in memory, the fields to write, its
    history rows (two for a composite move)."""

    task: Task
    fields: set[str] = field(default_factory=set)
    history: list[TaskStatusHistory] = field(default_factory=list)

    def then(self, other: Move) -> Move:
        return Move(self.task, self.fields | other.fields, self.history + other.history)


def check(task: Task, target: str, *, actor: Actor, live_unit: LiveUnit = assume_live) -> None:
    """Raise IllegalTransition unless the table allows `actor` to move `task` to `target`."""
    if can_transition(task.status, target, system=actor.is_system):
        return
    # Only a move the table refuses while a unit holds the task asks who holds it (a query): units'
    # reports and the other moves read nothing more.
    held = held_by_live_unit(task, live_unit)
    if not can_transition(task.status, target, system=actor.is_system, held=held):
        raise IllegalTransition(task, target, system=actor.is_system, held=held)


def plan(
    task: Task,
    target: str,
    *,
    actor: Actor,
    reason: str,
    code: str,
    now: datetime,
    fields: Iterable[str] = (),
    live_unit: LiveUnit = assume_live,
) -> Move:
    """Check the table and move `task` to `target` in memory (its entry effects). The caller holds
    the lock and writes the move (`save`, or `write` for many)."""
    source = task.status
    check(task, target, actor=actor, live_unit=live_unit)
    changed = set(fields) | enter(task, target, now)
    return Move(task, changed, [history_row(task, source, target, actor=actor, reason=reason, code=code, now=now)])


def write(moves: Sequence[Move]) -> None:
    """Write many locked rows moved (or changed) in memory, and their history rows in one INSERT.
    Fields a row did not change are written back as read under its lock when the CASE form
    serves several groups."""
    groups: dict[str, tuple[dict[str, Any], list[int]]] = {}
    for move in moves:
        if not move.fields:
            continue
        values = {name: getattr(move.task, name) for name in sorted(move.fields)}
        key = json.dumps(values, sort_keys=True, default=repr)
        groups.setdefault(key, (values, []))[1].append(move.task.pk)
    if len(groups) <= MAX_GROUPED_UPDATES:
        for values, ids in groups.values():
            Task.objects.filter(pk__in=ids).update(**values)
    else:
        names = sorted(set().union(*(move.fields for move in moves)))
        Task.objects.bulk_update([move.task for move in moves if move.fields], names)
    rows = [row for move in moves for row in move.history]
    write_history(rows)
    metrics.record_outcomes(
        [
            metrics.Outcome(
                move.task.task_type,
                row.to_status,
                (row.created_at - move.task.started_at).total_seconds()
                if row.from_status == S.RUNNING and move.task.started_at is not None
                else None,
            )
            for move in moves
            for row in move.history
            if row.to_status in OUTCOMES
        ]
    )
    ring_for(moves)


def ring_for(moves: Sequence[Move]) -> None:
    """After the commit, wake long-poll claims (taskhub.base.doorbell): one waiter per task that is
    PENDING now (claimable from its `available_at`), and the unit of a task that left RUNNING (its
    capacity freed)."""
    pending = [(m.task.task_type, m.task.available_at) for m in moves if m.task.status == S.PENDING and m.fields]
    freed = {
        row.unit_id
        for m in moves
        for row in m.history
        if row.from_status == S.RUNNING and row.to_status != S.RUNNING and row.unit_id
    }
    doorbell.ring_on_commit(
        doorbell.claimable_rings(pending) + [(doorbell.unit_key(u), doorbell.ALL, None) for u in sorted(freed)]
    )


def save(move: Move) -> Task:
    write([move])
    return move.task
