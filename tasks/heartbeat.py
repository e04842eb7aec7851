"""The task side of a unit's heartbeat: the leases it holds, the progress it lists, the commands for
the attempts it should stop. The unit side (its row, its status, which leases are lost) is
units.services.unit_heartbeat, which calls these."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from tasks import sql
from tasks.models import Task
from tasks.states import ControlCommand, TaskStatus

S = TaskStatus


def leases(unit_id: str, *, with_commands: bool, grace_start: datetime) -> list[tuple[int, int, str, int, bool]]:
    """(id, attempt, status, progress, started after grace_start) of the unit's leases and,
    `with_commands`, of the other tasks it held last that still carry a stored command."""
    return sql.unit_leases(unit_id, with_commands=with_commands, grace_start=grace_start)


def record_progress(unit_id: str, progress: dict[int, int]) -> None:
    """Progress of listed live tasks whose value changed, in one UPDATE fenced by the unit's leases."""
    if progress:
        sql.record_lease_progress(unit_id, progress)


def clear_acted_commands(unit_id: str, task_ids: Iterable[int]) -> None:
    """The unit no longer lists these tasks: it has acted on their commands. The UPDATE re-checks
    every condition on the rows it changes."""
    Task.objects.filter(id__in=sorted(task_ids), unit_id=unit_id).exclude(status=S.RUNNING).exclude(
        pending_command=""
    ).update(pending_command="")


def commands_for(unit_id: str, stale: dict[int, int] | None) -> list[dict[str, Any]]:
    """Commands for attempts the unit should stop. `stale` maps listed task id -> attempt; None
    (no list sent) means: the stored commands of tasks this unit held last."""
    if stale is None:
        rows = Task.objects.filter(unit_id=unit_id).exclude(status=S.RUNNING).exclude(pending_command="")
        return [
            _command(t.pk, t.attempt, t.pending_command, t)
            for t in rows.only("id", "attempt", "pending_command", "status")
        ]
    if not stale:
        return []
    found = {
        t.pk: t
        for t in Task.objects.filter(id__in=list(stale)).only("id", "attempt", "pending_command", "status", "unit_id")
    }
    out = []
    for task_id, attempt in sorted(stale.items()):
        task = found.get(task_id)
        held_last = task is not None and task.unit_id == unit_id and task.attempt == attempt
        command = (
            task.pending_command if held_last and task is not None and task.pending_command else ControlCommand.ABORT
        )
        out.append(_command(task_id, attempt, command, task if held_last else None))
    return out


def _command(task_id: int, attempt: int, command: str, task: Task | None) -> dict[str, Any]:
    reasons: dict[str, str] = {
        ControlCommand.CANCEL: "task was cancelled",
        ControlCommand.PAUSE: "task was paused",
    }
    why = reasons.get(command, "attempt is no longer live (failed over, finished or reassigned)")
    if task is not None and command == ControlCommand.ABORT:
        why = f"attempt is no longer live (task is {task.status})"
    return {"taskId": task_id, "attempt": attempt, "command": command, "reason": why}
