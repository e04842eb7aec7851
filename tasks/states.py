"""The task state machine, as data: the states, the one table of direct moves, the composite moves,
the system-only moves, the verbs a client or an operator asks for, the reason codes of history rows
and the fields each state lets a client edit.

Everything that says what may happen to a task derives from these tables: the transitions (which
check them), a 409's `allowedTargets`, the console's actions and buttons, the dashboard's series.
"""

from __future__ import annotations

from typing import NamedTuple

from django.db import models


class TaskStatus(models.TextChoices):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ControlCommand(models.TextChoices):
    """What the unit that held a task's last attempt is told in its heartbeat replies."""

    CANCEL = "cancel"
    PAUSE = "pause"
    ABORT = "abort"


class ReasonCode(models.TextChoices):
    """Why a history row was written, for code to read (the row's `reason` says it in words)."""

    CREATED = "created"
    CLAIMED = "claimed"  # PENDING -> RUNNING: a unit's claim
    STARTED = "started"  # PENDING -> RUNNING: a client's PUT status, no unit holds it
    COMPLETED = "completed"
    FAILED = "failed"  # for good: not retryable, no retries left, or failed by request
    RETRY_SCHEDULED = "retry_scheduled"  # FAILED with an automatic retry due at next_retry_at
    TIMED_OUT = "timed_out"  # FAILED by the timeout job (retryable)
    RETRIED = "retried"  # FAILED -> PENDING by the retry mover after the backoff
    RETRIED_BY_HAND = "retried_by_hand"  # FAILED -> PENDING asked for (fresh budgets)
    RESUMED = "resumed"  # PAUSED -> PENDING
    PAUSED = "paused"
    PAUSE_REQUESTED = "pause_requested"  # RUNNING -> PENDING, the first step of pausing a RUNNING task
    CANCELLED = "cancelled"
    FAILOVER = "failover"  # RUNNING -> PENDING: taken back from a unit that lost it
    POISONED = "poisoned"  # RUNNING -> FAILED: failed over too many times
    REQUEUED = "requeued"  # RUNNING -> PENDING asked for, of a task no live unit holds


S = TaskStatus
R = ReasonCode

# The one table of direct moves. Every write of Task.status goes through tasks.transitions, which
# checks it. RUNNING -> PENDING is failover, done by the system; a client or an operator may make
# it only for a task no live unit holds (a requeue: see SYSTEM_ONLY).
TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.RUNNING, S.PAUSED, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.PENDING}),
    S.PAUSED: frozenset({S.PENDING, S.FAILED, S.CANCELLED}),
    S.FAILED: frozenset({S.PENDING, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.CANCELLED: frozenset(),
}


# Moves made of two direct ones, the first made by the system: pausing a RUNNING task first takes
# it back from its unit (RUNNING -> PENDING, which fences the attempt), then pauses it.
class Via(NamedTuple):
    state: str
    actor: str  # the system actor making the first step (its history row names it)
    code: str


COMPOSITE: dict[tuple[str, str], Via] = {(S.RUNNING, S.PAUSED): Via(S.PENDING, "pause-request", R.PAUSE_REQUESTED)}

# Transitions only the system may make while a live unit holds the task (a client asking gets 409):
# taking a task from a unit that still runs it and reports on it would run it twice. A RUNNING task
# that no live unit holds (started with PUT status, or its unit gone) nobody runs for the hub, so
# anyone allowed to change it may put it back.
SYSTEM_ONLY: frozenset[tuple[str, str]] = frozenset({(S.RUNNING, S.PENDING)})

TERMINAL: frozenset[str] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
# States a client may not delete a task in: it is leased to a unit.
UNDELETABLE: frozenset[str] = frozenset({S.RUNNING})


def _check_composites() -> None:
    for (source, target), via in COMPOSITE.items():
        assert target not in TRANSITIONS[source] and via.state in TRANSITIONS[source], (source, target)
        assert target in TRANSITIONS[via.state], (source, target)


_check_composites()


def can_transition(source: str, target: str, *, system: bool = False, held: bool = True) -> bool:
    """A direct move. `held`: a live unit holds the task (the cautious default: only a caller that
    checked says no)."""
    if target not in TRANSITIONS.get(source, frozenset()):
        return False
    return system or not held or (source, target) not in SYSTEM_ONLY


def can_move(source: str, target: str, *, system: bool = False, held: bool = True) -> bool:
    """A direct move, or a composite one whose steps are each allowed (its first by the system)."""
    via = COMPOSITE.get((source, target))
    if via is None:
        return can_transition(source, target, system=system, held=held)
    return can_transition(source, via.state, system=True) and can_transition(via.state, target, system=system)


def allowed_targets(source: str, *, system: bool = False, held: bool = True) -> list[str]:
    """Where a task in `source` may go, directly or through a composite move (a 409 names these)."""
    targets = TRANSITIONS.get(source, frozenset()) | {t for s, t in COMPOSITE if s == source}
    return sorted(t for t in targets if can_move(source, t, system=system, held=held))


class Verb(NamedTuple):
    """A move a client or an operator asks for: from `sources` to `target`."""

    name: str
    sources: frozenset[str]
    target: str
    past: str  # "retried": the console's messages say what was done
    reason: str  # the history row's reason when the caller gives none
    code: str
    command: str = ""  # what the unit holding a RUNNING task is told (its attempt ends)
    console: bool = False  # an operator's action in the console (a bulk action and a button)


_LIVE = frozenset(TRANSITIONS) - TERMINAL
C = ControlCommand
VERBS: dict[str, Verb] = {
    verb.name: verb
    for verb in (
        Verb("retry", frozenset({S.FAILED}), S.PENDING, "retried", "retried by hand", R.RETRIED_BY_HAND, console=True),
        Verb("cancel", _LIVE, S.CANCELLED, "cancelled", "cancelled", R.CANCELLED, C.CANCEL, console=True),
        Verb("pause", frozenset({S.PENDING, S.RUNNING}), S.PAUSED, "paused", "paused", R.PAUSED, C.PAUSE, console=True),
        Verb("resume", frozenset({S.PAUSED}), S.PENDING, "resumed", "resumed", R.RESUMED, console=True),
        Verb(
            "requeue",
            frozenset({S.RUNNING}),
            S.PENDING,
            "requeued",
            "requeued: no live unit held it",
            R.REQUEUED,
            C.ABORT,  # a unit that held it and comes back: its attempt is no longer live
            console=True,
        ),
        Verb("start", frozenset({S.PENDING}), S.RUNNING, "started", "started", R.STARTED),
        Verb("complete", frozenset({S.RUNNING}), S.COMPLETED, "completed", "completed", R.COMPLETED, C.ABORT),
        Verb("fail", frozenset({S.RUNNING, S.PAUSED}), S.FAILED, "failed", "failed", R.FAILED, C.ABORT),
    )
}
# PUT status: the verb a (current status, requested status) pair means. Every move of the tables,
# direct or composite, is some verb's, and no pair is two verbs'.
VERB_FOR: dict[tuple[str, str], Verb] = {(s, v.target): v for v in VERBS.values() for s in v.sources}
assert len(VERB_FOR) == sum(len(v.sources) for v in VERBS.values()), "a move is two verbs'"
assert set(VERB_FOR) == {(s, t) for s, ts in TRANSITIONS.items() for t in ts} | set(COMPOSITE)

# Which fields a client may edit in which state. Config and schedule only before the work starts again.
_ALL_EDITABLE = frozenset(
    {"name", "priority", "config", "max_retries", "timeout_seconds", "scheduled_at", "concurrency_key"}
)
EDITABLE_FIELDS: dict[str, frozenset[str]] = {
    S.PENDING: _ALL_EDITABLE,
    S.PAUSED: _ALL_EDITABLE,
    S.FAILED: _ALL_EDITABLE,
    S.RUNNING: frozenset({"name", "priority", "max_retries"}),
    S.COMPLETED: frozenset({"name"}),
    S.CANCELLED: frozenset({"name"}),
}
