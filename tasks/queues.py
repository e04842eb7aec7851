"""Queues (a queue is a task type) as the tasks layer knows them: their settings rows, who may see
them, the creation defaults they give new tasks, their counts, and the audit of their changes.

The rules the settings set for claims live in units.claim (the one claim); changing settings, which
must also lock the queue's units, is units.queues.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import Count, Q, QuerySet

from taskhub.base.actors import Actor
from taskhub.base.viewer import Viewer
from tasks.models import QueueChange, QueueSettings, Task
from tasks.selectors import oldest_due_by_type
from tasks.states import TaskStatus

S = TaskStatus
# The settings a PATCH may change: model field -> the API's name.
SETTINGS_FIELDS = {
    "paused": "paused",
    "max_running": "maxRunning",
    "per_key_concurrency": "perKeyConcurrency",
    "rate_limit": "rateLimit",
    "rate_period": "ratePeriodSeconds",
    "key_rate_limit": "keyRateLimit",
    "key_rate_period": "keyRatePeriodSeconds",
    "default_max_retries": "defaultMaxRetries",
    "default_timeout_seconds": "defaultTimeoutSeconds",
    "default_priority": "defaultPriority",
    "retention_seconds": "retentionSeconds",
    "dead_retention_seconds": "deadRetentionSeconds",
}
# The largest value of each limit (the smallest is 1; none: no limit), as the API and the console take them.
MAX_LIMIT = 100_000
MAX_RATE_LIMIT = 10_000  # the sliding-window log holds this many start times at most
MAX_PERIOD = 7 * 24 * 3600
LIMIT_MAX = {
    "max_running": MAX_LIMIT,
    "per_key_concurrency": MAX_LIMIT,
    "rate_limit": MAX_RATE_LIMIT,
    "rate_period": MAX_PERIOD,
    "key_rate_limit": MAX_RATE_LIMIT,
    "key_rate_period": MAX_PERIOD,
}
# What a new task of a queue takes from its settings when the request leaves it out.
DEFAULTED = {
    "max_retries": "default_max_retries",
    "timeout_seconds": "default_timeout_seconds",
    "priority": "default_priority",
}


def queue_settings_for(task_type: str) -> QueueSettings | None:
    """The queue's settings row, or None when it has none (the queue behaves as before queues)."""
    return QueueSettings.objects.filter(pk=task_type).first()


def visible_queue_settings(viewer: Viewer) -> QuerySet[QueueSettings]:
    """Operators see every queue's settings; an API key (with queues:read) those it configured
    first (its own) and those an operator configured (hub-wide). Another key's queue does not exist
    for it: not listed, 404 when named."""
    qs = QueueSettings.objects.all()
    if viewer.is_operator:
        return qs
    return qs.filter(Q(owner_id=viewer.api_key_id) | Q(owner__isnull=True))


def hidden_queue_settings(viewer: Viewer) -> QuerySet[QueueSettings]:
    """The settings rows of queues another API key owns (none for an operator)."""
    if viewer.is_operator:
        return QueueSettings.objects.none()
    return QueueSettings.objects.filter(owner__isnull=False).exclude(owner_id=viewer.api_key_id)


def can_see_queue(viewer: Viewer, task_type: str) -> bool:
    return viewer.is_operator or not hidden_queue_settings(viewer).filter(pk=task_type).exists()


def can_change_queue(viewer: Viewer, row: QueueSettings | None) -> bool:
    """Operators change any queue; an API key (with queues:write) a queue with no settings yet
    (it becomes the owner) or its own; not an operator's."""
    return viewer.is_operator or row is None or (row.owner_id is not None and row.owner_id == viewer.api_key_id)


def apply_queue_defaults(rows: Iterable[dict[str, Any]]) -> None:
    """Fill in, in place, what each new task's request left out from its queue's defaults (one
    query for all the types of a batch; none of their queues with settings: nothing changes)."""
    rows = list(rows)
    types = {row["task_type"] for row in rows if "task_type" in row}
    if not types:
        return
    found = {
        q["task_type"]: q for q in QueueSettings.objects.filter(pk__in=types).values("task_type", *DEFAULTED.values())
    }
    if not found:
        return
    for row in rows:
        queue = found.get(row.get("task_type"))
        if queue is None:
            continue
        for name, default in DEFAULTED.items():
            if name not in row and queue[default] is not None:
                row[name] = queue[default]


def queue_counts(task_types: Iterable[str] | None, now: datetime) -> dict[str, dict[str, Any]]:
    """Per task type: tasks by status and the age in seconds of the oldest due PENDING task (the
    one waiting longest). Two grouped queries (the first reads the (status, task_type) prefix of the
    claim index, the second one entry of task_due_by_type_idx per status and type: oldest_due_by_type)."""
    qs = Task.objects.all() if task_types is None else Task.objects.filter(task_type__in=list(task_types))
    out: dict[str, dict[str, Any]] = {}
    for row in qs.order_by().values("task_type", "status").annotate(n=Count("id")):
        entry = out.setdefault(row["task_type"], {"byStatus": dict.fromkeys(S.values, 0), "oldestDueAgeSeconds": None})
        entry["byStatus"][row["status"]] = row["n"]
    for task_type, oldest in oldest_due_by_type(now).items():  # every type: one index entry per type
        if task_type in out:
            out[task_type]["oldestDueAgeSeconds"] = round((now - oldest).total_seconds(), 3)
    return out


def record_queue_change(task_type: str, changes: dict[str, list[Any]], *, actor: Actor, now: datetime) -> None:
    """The audit row of one settings change (in the caller's transaction)."""
    if changes:
        QueueChange.objects.create(
            task_type=task_type, actor_type=actor.type, actor=actor.label, changes=changes, created_at=now
        )


def recent_changes(task_type: str, limit: int = 20) -> list[QueueChange]:
    return list(QueueChange.objects.filter(task_type=task_type).order_by("-id")[:limit])


def settings_reply(row: QueueSettings | None) -> dict[str, Any]:
    """The settings of a queue as the API shows them (defaults for a queue without a row)."""
    if row is None:
        row = QueueSettings()
    reply: dict[str, Any] = {api: getattr(row, name) for name, api in SETTINGS_FIELDS.items()}
    reply["pausedAt"] = None if row.paused_at is None else row.paused_at.isoformat()
    reply["pausedBy"] = row.paused_by or None
    return reply
