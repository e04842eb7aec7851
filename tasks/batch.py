"""Batch reports from a unit: `POST /tasks/reports`, many results, progress and logs in one request.

One transaction. Every task named is locked in one statement, in id order (two batches never wait
on each other in a cycle). Each item is fenced on its own, by the rules of the single endpoints
(`transitions.fence_outcome` / `check_live`): a stale item is refused with its error and does not
fail the others. An item is all-or-nothing: its logs (under the per-task cap, `services`) and its
outcome (`transitions.apply_complete` / `apply_fail` / `progress_values`) are applied together or
not at all. The writes are set-based: one INSERT of log lines, one UPDATE of the tasks
(`transitions.save_reported`), one INSERT of history rows, whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.errors import DomainError, NotFound
from tasks import services, transitions
from tasks.models import Task, TaskExecutionLog, TaskStatusHistory
from tasks.states import TaskStatus

S = TaskStatus
OUTCOME_STATUS = {"complete": S.COMPLETED, "fail": S.FAILED}


@dataclass
class _Plan:
    logs: list[TaskExecutionLog] = field(default_factory=list)
    moves: list[tuple[Task, set[str]]] = field(default_factory=list)
    history: list[TaskStatusHistory] = field(default_factory=list)


def report_attempts(
    unit_id: str, reports: list[dict[str, Any]], *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Apply a unit's reports; one reply item per report, in request order. Task ids are unique
    in `reports` (the serializer refuses duplicates)."""
    return _report(unit_id, reports, now or timezone.now())


@retry_on_lock_error()
@transaction.atomic
def _report(unit_id: str, reports: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    actor = Actor.unit(unit_id)
    ids = sorted(r["taskId"] for r in reports)
    locked = {t.pk: t for t in Task.objects.select_for_update().filter(pk__in=ids).order_by("id")}
    replies: list[dict[str, Any]] = []
    live: list[tuple[dict[str, Any], Task, dict[str, Any]]] = []
    for report in reports:
        reply: dict[str, Any] = {
            "taskId": report["taskId"],
            "attempt": report["attempt"],
            "status": None,
            "accepted": False,
            "error": None,
        }
        replies.append(reply)
        try:
            task = _fence(locked.get(report["taskId"]), report, unit_id)
        except DomainError as exc:
            reply["error"] = _error(exc)
            continue
        if task is None:  # a repeat of the accepted result: answered again, nothing changes
            reply["status"] = locked[report["taskId"]].status
            continue
        live.append((report, task, reply))
    stored = services.stored_log_counts([task.pk for report, task, _ in live if report.get("logs")])
    plan = _Plan()
    for report, task, reply in live:
        try:
            _plan_item(plan, report, task, stored.get(task.pk, 0), actor=actor, now=now)
        except DomainError as exc:
            reply["error"] = _error(exc)
            continue
        reply |= {"status": task.status, "accepted": True}
    if plan.logs:
        TaskExecutionLog.objects.bulk_create(plan.logs)
    transitions.save_reported(plan.moves, plan.history)
    return replies


def _fence(task: Task | None, report: dict[str, Any], unit_id: str) -> Task | None:
    """The locked task if the report's attempt is live; None for a repeat of an accepted result."""
    if task is None:
        raise NotFound(f"Task {report['taskId']} not found")
    outcome = report["outcome"]
    if outcome in OUTCOME_STATUS:
        return task if transitions.fence_outcome(task, unit_id, report["attempt"], OUTCOME_STATUS[outcome]) else None
    return transitions.check_live(task, unit_id, report["attempt"])


def _plan_item(plan: _Plan, report: dict[str, Any], task: Task, stored: int, *, actor: Actor, now: datetime) -> None:
    """Check, then apply in memory: the item's logs first (fenced by the same attempt), then its
    outcome. Raises before changing anything if the logs would pass the cap."""
    entries = report.get("logs") or []
    if entries:
        services.check_log_room(task.pk, stored, len(entries))
    outcome = report["outcome"]
    if outcome == "complete":
        changed, history = transitions.apply_complete(
            task, unit_id=actor.unit_id or "", result=report["result"], now=now
        )
        plan.history.append(history)
    elif outcome == "fail":
        changed, history = transitions.apply_fail(
            task, error=report["error"], retryable=report["retryable"], now=now, actor=actor
        )
        plan.history.append(history)
    else:
        values = transitions.progress_values(report["progress"], now)
        for name, value in values.items():
            setattr(task, name, value)
        changed = set(values)
    plan.logs += services.log_rows(task.pk, report["attempt"], entries, actor=actor, now=now)
    plan.moves.append((task, changed))


def _error(exc: DomainError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "details": exc.details or {}}
