"""The task state machine: the seed's six states and the one table of allowed transitions."""

from __future__ import annotations

from django.db import models


class TaskStatus(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


S = TaskStatus

# The one transition table. Every write of Task.status goes through tasks.transitions, which
# checks this table. RUNNING -> PENDING is failover, done by the system; a client or an operator
# may make it only for a task no live unit holds (a requeue: see SYSTEM_ONLY).
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.PENDING}),
    S.PAUSED: frozenset({S.PENDING, S.FAILED, S.CANCELLED}),
    S.FAILED: frozenset({S.PENDING, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}

# Transitions only the system may make while a live unit holds the task (a client asking gets 409):
# taking a task from a unit that still runs it and reports on it would run it twice. A RUNNING task
# that no live unit holds (started with PUT status, or its unit gone) nobody runs for the hub, so
# anyone allowed to change it may put it back.
SYSTEM_ONLY: frozenset[tuple[str, str]] = frozenset({(S.RUNNING, S.PENDING)})

TERMINAL: frozenset[str] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
# States a client may not delete a task in: it is leased to a unit.
UNDELETABLE: frozenset[str] = frozenset({S.RUNNING})


def can_transition(source: str, target: str, *, system: bool = False, held: bool = True) -> bool:
    """`held`: a live unit holds the task (the cautious default: only a caller that checked says no)."""
    if target not in TRANSITIONS.get(source, frozenset()):
        return False
    return system or not held or (source, target) not in SYSTEM_ONLY


def allowed_targets(source: str, *, system: bool = False, held: bool = True) -> list[str]:
    return sorted(
        t for t in TRANSITIONS.get(source, frozenset()) if can_transition(source, t, system=system, held=held)
    )
