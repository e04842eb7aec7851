"""Steering queues (a queue is a task type): their overview (counts, units serving them, settings,
when the next start is allowed) and the one writer of their settings (pause/resume, limits,
creation defaults), audited.

Why this lives in the units layer: creating a queue's settings row must first lock the rows of the
units of that type. A claim that began before the row existed read "no settings" and holds its unit
row's lock until it commits; taking those locks waits for it, and every claim after sees the row
(and takes its lock). Without this a claim's uncommitted leases could be missed by the first
limited claims' counts (READ COMMITTED has no gap lock to stop the insert). Later changes lock the
settings row itself, as every claim of the queue does (units.sql.lock_unit_for_claim).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from taskhub.base import doorbell
from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.base.errors import Forbidden, NotFound
from taskhub.base.viewer import Viewer
from tasks.models import QueueKeyWindow, QueueSettings, Task
from tasks.queues import (
    SETTINGS_FIELDS,
    can_change_queue,
    can_see_queue,
    hidden_queue_settings,
    queue_counts,
    recent_changes,
    record_queue_change,
    settings_reply,
)
from tasks.retention import retention_periods
from tasks.states import TaskStatus
from units import sql
from units.models import ExecutionUnit
from units.states import CLAIMING

PAIRS = (("rate_limit", "rate_period"), ("key_rate_limit", "key_rate_period"))
UNITS_LISTED = 50
DEFAULT_RATE_PERIOD = 60  # seconds: the window of a rate limit given without one
WAKE_MAX = 1000  # waiting claims a settings change wakes at most (each claims through units.claim)


@retry_on_lock_error()
@transaction.atomic
def update_queue_settings(
    task_type: str,
    changes: dict[str, Any],
    *,
    viewer: Viewer,
    actor: Actor,
    owner_id: int | None,
    now: datetime | None = None,
) -> QueueSettings:
    """Change a queue's settings (creating its row, owned by `owner_id`, the first time), writing
    one audit row with what changed. A refused change changes nothing."""
    now = now or timezone.now()
    if not can_see_queue(viewer, task_type):
        raise NotFound("Queue not found (or configured by another API key)")
    row = QueueSettings.objects.select_for_update().filter(pk=task_type).first()
    if not can_change_queue(viewer, row):
        raise Forbidden(f"Queue {task_type} is configured by an operator; this API key cannot change it")
    created = row is None
    if row is None:
        list(ExecutionUnit.objects.select_for_update().filter(unit_type=task_type).values_list("pk", flat=True))
        row = QueueSettings(task_type=task_type, owner_id=owner_id, created_at=now, updated_at=now)
    diff: dict[str, list[Any]] = {}
    for name, value in changes.items():
        old = getattr(row, name)
        if old != value:
            diff[SETTINGS_FIELDS[name]] = [old, value]
            setattr(row, name, value)
    for limit, period in PAIRS:
        if getattr(row, limit) is not None and getattr(row, period) is None:
            setattr(row, period, DEFAULT_RATE_PERIOD)  # "N starts" alone: N per minute
            diff.setdefault(SETTINGS_FIELDS[period], [None, DEFAULT_RATE_PERIOD])
    if "paused" in diff:
        row.paused_at, row.paused_by = (now, actor.label) if row.paused else (None, "")
    if "rateLimit" in diff or "ratePeriodSeconds" in diff:
        row.rate_starts = (row.rate_starts or [])[-(row.rate_limit or 1) :] if row.rate_limit else []
    if "keyRateLimit" in diff and row.key_rate_limit is None:
        QueueKeyWindow.objects.filter(task_type=task_type).delete()
    if row.per_key_concurrency is None and row.key_rate_limit is None and row.held_keys:
        sql.release_all_held(task_type)  # no key limit left: nothing may stay held back
        row.held_keys = []
    row.updated_at = now
    if created:
        row.save(force_insert=True)
    elif diff:
        row.save()
    record_queue_change(task_type, diff, actor=actor, now=now)
    if diff:
        _wake_waiters(task_type)
    return row


def _wake_waiters(task_type: str) -> None:
    """A resume or a raised limit can make the queue's PENDING tasks claimable at once: ring its
    doorbell for as many waiting claims as it has PENDING tasks (at most WAKE_MAX), once this
    change commits. Each woken claim takes what the claim's rules allow; the rest wait on."""
    pending = Task.objects.filter(task_type=task_type, status=TaskStatus.PENDING).values_list("id", flat=True)
    count = len(pending[:WAKE_MAX])
    if count:
        doorbell.ring_on_commit([(doorbell.type_key(task_type), count, None)])


def set_paused(
    task_type: str, paused: bool, *, viewer: Viewer, actor: Actor, owner_id: int | None = None
) -> QueueSettings:
    """Pause or resume a queue (the API's PATCH {paused} and the console's action)."""
    return update_queue_settings(task_type, {"paused": paused}, viewer=viewer, actor=actor, owner_id=owner_id)


def known_task_types(viewer: Viewer) -> list[str]:
    """Every queue there is: the types of tasks, of units and of settings rows, but those of queues
    another API key owns."""
    hidden = set(hidden_queue_settings(viewer).values_list("task_type", flat=True))
    types = set(Task.objects.order_by().values_list("task_type", flat=True).distinct())
    types |= set(ExecutionUnit.objects.order_by().values_list("unit_type", flat=True).distinct())
    types |= set(QueueSettings.objects.values_list("task_type", flat=True))
    return sorted(types - hidden)


def queue_overview(
    viewer: Viewer, task_types: list[str] | None = None, *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The API's view of queues: counts by status, oldest due age, running count, the units
    serving each (claiming units of the type), settings and the rate limits' next allowed start."""
    now = now or timezone.now()
    types = known_task_types(viewer) if task_types is None else task_types
    counts = queue_counts(types, now)
    rows = {row.task_type: row for row in QueueSettings.objects.filter(pk__in=types)}
    periods = retention_periods(types)
    units: dict[str, list[str]] = {}
    serving = (
        ExecutionUnit.objects.filter(unit_type__in=types, status__in=list(CLAIMING))
        .order_by("unit_type", "id")
        .values_list("unit_type", "id")
    )
    for unit_type, unit_id in serving:
        units.setdefault(unit_type, []).append(unit_id)
    out = []
    for task_type in types:
        entry = counts.get(task_type) or {"byStatus": dict.fromkeys(TaskStatus.values, 0), "oldestDueAgeSeconds": None}
        row = rows.get(task_type)
        serving_ids = units.get(task_type, [])
        out.append(
            {
                "taskType": task_type,
                "byStatus": entry["byStatus"],
                "depth": entry["byStatus"].get("PENDING", 0),
                "running": entry["byStatus"].get("RUNNING", 0),
                "oldestDueAgeSeconds": entry["oldestDueAgeSeconds"],
                "units": {"count": len(serving_ids), "ids": serving_ids[:UNITS_LISTED]},
                "settings": settings_reply(row),
                "hasSettings": row is not None,
                "retention": {
                    "finishedSeconds": int(periods.for_type(task_type).finished.total_seconds()),
                    "deadSeconds": int(periods.for_type(task_type).dead.total_seconds()),
                },
                "nextStartAt": _next_start(row, now),
                "owner": None if row is None or row.owner_id is None else row.owner_id,
            }
        )
    return out


def _next_start(row: QueueSettings | None, now: datetime) -> str | None:
    """When the queue's rate limit next allows a start (now, if it does now; None without one)."""
    if row is None or row.rate_limit is None or row.rate_period is None:
        return None
    now_ts = now.timestamp()
    window = [float(s) for s in (row.rate_starts or []) if float(s) > now_ts - row.rate_period]
    if len(window) < row.rate_limit:
        return now.isoformat()
    next_ts = window[len(window) - row.rate_limit] + row.rate_period
    return datetime.fromtimestamp(next_ts, tz=now.tzinfo).isoformat()


KEYS_LISTED = 50  # keys at their rate limit shown by GET /queues/{type}, soonest first
KEY_WINDOWS_READ = 1000  # of the keys started most recently


def key_next_starts(task_type: str, now: datetime) -> list[dict[str, Any]]:
    """The concurrency keys of a queue that its per-key rate limit holds now, with when each may
    start again (soonest first). One range of queue_key_window_recent_idx: the keys started within
    the period (the KEY_WINDOWS_READ most recent of them)."""
    row = QueueSettings.objects.filter(pk=task_type).values_list("key_rate_limit", "key_rate_period").first()
    if row is None or row[0] is None or row[1] is None:
        return []
    limit, period = int(row[0]), int(row[1])
    now_ts = now.timestamp()
    recent = (
        QueueKeyWindow.objects.filter(task_type=task_type, last_start_at__gt=now - timedelta(seconds=period))
        .order_by("-last_start_at")
        .values_list("concurrency_key", "starts")[:KEY_WINDOWS_READ]
    )
    held = []
    for key, starts in recent:
        window = [float(s) for s in starts if float(s) > now_ts - period]
        if len(window) >= limit:
            held.append((window[len(window) - limit] + period, key))
    held.sort()
    return [
        {"key": key, "nextStartAt": datetime.fromtimestamp(ts, tz=now.tzinfo).isoformat()}
        for ts, key in held[:KEYS_LISTED]
    ]


def queue_detail(viewer: Viewer, task_type: str, *, now: datetime | None = None) -> dict[str, Any]:
    if not can_see_queue(viewer, task_type):
        raise NotFound("Queue not found (or configured by another API key)")
    now = now or timezone.now()
    entry = queue_overview(viewer, [task_type], now=now)[0]
    entry["keyNextStarts"] = key_next_starts(task_type, now)
    entry["changes"] = [
        {"at": c.created_at.isoformat(), "actorType": c.actor_type, "actor": c.actor, "changes": c.changes}
        for c in recent_changes(task_type)
    ]
    return entry


LIMITS = {
    "max_running": "maxRunning",
    "per_key_concurrency": "perKeyConcurrency",
    "rate_limit": "rateLimit",
    "rate_period": "ratePeriodSeconds",
    "key_rate_limit": "keyRateLimit",
    "key_rate_period": "keyRatePeriodSeconds",
}


def queue_settings_summary() -> dict[str, tuple[bool, dict[str, int | None]]]:
    """Every queue with settings: whether it is paused and its limits by API name (/metrics, the
    dashboard). One query."""
    return {
        task_type: (bool(paused), dict(zip(LIMITS.values(), limits, strict=True)))
        for task_type, paused, *limits in QueueSettings.objects.values_list("task_type", "paused", *LIMITS)
    }
