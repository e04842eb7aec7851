"""What a client or an operator asks for: the verbs of `tasks.states.VERBS` (retry, cancel, pause,
resume, requeue, start, complete, fail), and `PUT status`, which means the verb of the pair
(current status, requested status).

One implementation for one task and many (`act`): the rows are locked in id order, each is checked
and moved in memory on its own (a refusal is that row's, and leaves the others alone), then one
write for them all. The single-task functions are `act` on one id, raising its refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.base.errors import Conflict, DomainError, NotFound
from tasks.models import Task
from tasks.states import COMPOSITE, VERB_FOR, VERBS, TaskStatus, Verb
from tasks.transitions.core import (
    IllegalTransition,
    LiveUnit,
    Move,
    assume_live,
    held_by_live_unit,
    lock_many,
    plan,
    write,
)

S = TaskStatus
RETRY, CANCEL, PAUSE, RESUME, REQUEUE = (VERBS[n] for n in ("retry", "cancel", "pause", "resume", "requeue"))
START, COMPLETE, FAIL = (VERBS[n] for n in ("start", "complete", "fail"))


class VerbRefused(Conflict):
    """The task is not in a state the verb starts from (`POST /tasks/{id}/retry` of a task that is
    not FAILED, the console's "resume" of a task that is not PAUSED)."""

    def __init__(self, task: Task, verb: Verb) -> None:
        sources = sorted(verb.sources)
        super().__init__(
            f"Task {task.pk} is {task.status}; only {', '.join(sources)} tasks can be {verb.past}",
            details={"currentStatus": task.status, "allowedStatuses": sources},
        )
        self.requested = verb.target


# What each verb changes besides the move itself, on the locked row before it moves.
def _start(task: Task) -> set[str]:
    # Its last holder, if any, does not hold it now (a client runs it: it gets a lease of its own).
    task.unit = None
    return {"unit"}


def _complete(task: Task, *, result: Any = None) -> set[str]:
    task.progress, task.result = 100, result
    return {"progress", "result"}


def _fail(task: Task, *, reason: str) -> set[str]:
    task.error = reason or task.error or "failed by request"
    return {"error"}


def _retry(task: Task) -> set[str]:
    # A retry by hand is a decision to try again: it resets the automatic budgets. (A requeue is
    # not a failover either, no unit lost it: the failover budget is left as it is.)
    task.retry_count = task.failover_count = 0
    return {"retry_count", "failover_count"}


def _release(task: Task, verb: Verb) -> set[str]:
    """A RUNNING task leaving its unit's hands: tell the unit (in heartbeat replies) to stop."""
    if verb.command and task.status == S.RUNNING and task.unit_id:
        task.pending_command = verb.command
        return {"pending_command"}
    return set()


def _plan(
    task: Task, verb: Verb, *, actor: Actor, reason: str, now: datetime, live_unit: LiveUnit, **extra: Any
) -> Move:
    """Check and make `verb`'s move on a locked row, in memory. A refused move raises (the row may be
    changed in memory then, never written: only planned moves are)."""
    if task.status not in verb.sources:
        raise VerbRefused(task, verb)
    via = COMPOSITE.get((task.status, verb.target))
    fields = _release(task, verb)
    if verb is START:
        fields |= _start(task)
    elif verb is COMPLETE:
        fields |= _complete(task, **extra)
    elif verb is FAIL:
        fields |= _fail(task, reason=reason)
    elif verb is RETRY:
        fields |= _retry(task)
    move = Move(task)
    if via is not None:  # its first step by the system (a check of the table that cannot fail)
        why = f"{verb.name} requested by {actor.label}"
        move = plan(task, via.state, actor=Actor.system(via.actor), reason=why, code=via.code, now=now)
    reason = reason or verb.reason
    step = plan(
        task, verb.target, actor=actor, reason=reason, code=verb.code, now=now, fields=fields, live_unit=live_unit
    )
    return move.then(step)


Choice = Callable[[Task], Verb]


@transaction.atomic
def act(
    task_ids: Sequence[int],
    choose: Verb | Choice,
    *,
    actor: Actor,
    reason: str = "",
    now: datetime | None = None,
    queryset: QuerySet[Task] | None = None,
    live_unit: LiveUnit = assume_live,
    **extra: Any,
) -> tuple[list[Task], dict[int, DomainError]]:
    """Make a verb's move on each of `task_ids` (in `queryset`): `choose` is the verb, or picks it
    for each locked row (PUT status). Returns the tasks moved, in the order asked, and why the
    others were not (NotFound, VerbRefused, IllegalTransition)."""
    now = now or timezone.now()
    locked = lock_many(task_ids, queryset)
    moves: list[Move] = []
    refused: dict[int, DomainError] = {}
    for task_id in task_ids:
        task = locked.get(task_id)
        try:
            if task is None:
                raise NotFound(f"Task {task_id} not found")
            verb = choose if isinstance(choose, Verb) else choose(task)
            moves.append(_plan(task, verb, actor=actor, reason=reason, now=now, live_unit=live_unit, **extra))
        except DomainError as exc:
            refused[task_id] = exc
    write(moves)
    return [move.task for move in moves], refused


def act_on_one(task_id: int, choose: Verb | Choice, **options: Any) -> Task:
    """`act` on one task (options as `act`'s): the task moved, or its refusal raised."""
    moved, refused = act([task_id], choose, **options)
    if refused:
        raise refused[task_id]
    return moved[0]


def change_status(
    task_id: int, target: str, *, actor: Actor, live_unit: LiveUnit = assume_live, **options: Any
) -> Task:
    """`PUT /tasks/{id}/status`: the verb the task's current status and `target` mean; a pair the
    tables do not have is a 409 naming the allowed targets. Options as `act`'s."""

    def verb_of(task: Task) -> Verb:
        verb = VERB_FOR.get((task.status, target))
        if verb is None:
            held = held_by_live_unit(task, live_unit)
            raise IllegalTransition(task, target, system=actor.is_system, held=held)
        return verb

    return act_on_one(task_id, verb_of, actor=actor, live_unit=live_unit, **options)


def _verb_function(verb: Verb) -> Callable[..., Task]:
    def run(task_id: int, **options: Any) -> Task:
        return act_on_one(task_id, verb, **options)

    run.__name__ = run.__qualname__ = f"{verb.name}_task"
    run.__doc__ = (
        f"{verb.name.capitalize()} one task ({', '.join(sorted(verb.sources))} -> {verb.target}); options as `act`'s."
    )
    return run


retry_task = _verb_function(RETRY)
cancel_task = _verb_function(CANCEL)
pause_task = _verb_function(PAUSE)
resume_task = _verb_function(RESUME)
requeue_task = _verb_function(REQUEUE)
start_task = _verb_function(START)
complete_task = _verb_function(COMPLETE)
fail_task = _verb_function(FAIL)


def redrive(
    queryset: QuerySet[Task],
    *,
    actor: Actor,
    ids: Sequence[int] | None = None,
    task_type: str | None = None,
    limit: int,
    reason: str = "",
) -> dict[str, Any]:
    """Retry FAILED tasks in bulk (the dead set): those of `queryset`, of `ids` and `task_type` if
    given, oldest first, up to `limit`. Says which were retried and why the others were not (one
    may have moved on since it was read)."""
    qs = queryset.filter(status=S.FAILED)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    if task_type is not None:
        qs = qs.filter(task_type=task_type)
    chosen = list(qs.order_by("id").values_list("id", flat=True)[:limit])
    moved, refused = act(chosen, RETRY, actor=actor, reason=reason or "redrive", queryset=queryset)
    return {
        "retried": [task.pk for task in moved],
        "skipped": {str(task_id): exc.message for task_id, exc in refused.items()},
    }
