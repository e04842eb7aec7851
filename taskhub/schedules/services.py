"""Schedule writes (create, edit, pause/resume, delete) and reads (who sees which, next fire times)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from taskhub.base.errors import InvalidInput, NotFound
from taskhub.base.viewer import Viewer
from taskhub.schedules import cron
from taskhub.schedules.models import OverlapPolicy, Schedule
from taskhub.schedules.template import check_template

MIN_CATCHUP = 10  # seconds: a beat tick late by this much is lag, not downtime
MAX_CATCHUP = 7 * 24 * 3600
EDITABLE = frozenset({"name", "cron", "timezone", "template", "overlap", "catchup_seconds", "paused"})


def visible_schedules(viewer: Viewer) -> QuerySet[Schedule]:
    """Operators see every schedule; an API key its own; a unit none."""
    qs = Schedule.objects.all()
    if viewer.is_operator:
        return qs
    if viewer.unit_id is not None:
        return qs.none()
    return qs.filter(owner_id=viewer.api_key_id)


def clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Check what a create or an edit sets (InvalidInput naming the field)."""
    out = dict(fields)
    if "cron" in out:
        out["cron"] = cron.check_cron(out["cron"])
    if "timezone" in out:
        cron.zone(out["timezone"])
    if "template" in out:
        out["template"] = check_template(out["template"])
    if "overlap" in out and out["overlap"] not in OverlapPolicy.values:
        raise InvalidInput("overlap", "one of " + ", ".join(OverlapPolicy.values))
    if "catchup_seconds" in out and not MIN_CATCHUP <= out["catchup_seconds"] <= MAX_CATCHUP:
        raise InvalidInput("catchupSeconds", f"from {MIN_CATCHUP} to {MAX_CATCHUP} seconds")
    return out


def plan_next(schedule: Schedule, now: datetime) -> None:
    # Never at or before the last fire: a fire time happens once, even if a node's clock is behind.
    after = max(now, schedule.last_fire_at) if schedule.last_fire_at else now
    schedule.next_fire_at = cron.next_times(schedule.cron, schedule.timezone, after, 1)[0]


def schedule_create(*, owner: Any, fields: dict[str, Any], now: datetime | None = None) -> Schedule:
    now = now or timezone.now()
    schedule = Schedule(owner=owner, created_at=now, updated_at=now, **clean(fields))
    plan_next(schedule, now)
    schedule.save(force_insert=True)
    return schedule


@transaction.atomic
def schedule_update(
    schedule_id: int, changes: dict[str, Any], *, queryset: QuerySet[Schedule], now: datetime | None = None
) -> Schedule:
    """Edit a schedule. A new cron or zone, or a resume, plans the next fire time from now: fire times
    missed while paused are not caught up."""
    now = now or timezone.now()
    schedule = queryset.select_for_update().filter(pk=schedule_id).first()
    if schedule is None:
        raise NotFound(f"Schedule {schedule_id} not found")
    changes = clean(changes)
    resumed = schedule.paused and changes.get("paused") is False
    for name, value in changes.items():
        setattr(schedule, name, value)
    if resumed or {"cron", "timezone"} & set(changes):
        plan_next(schedule, now)
    schedule.updated_at = now
    schedule.save()
    return schedule


@transaction.atomic
def schedule_delete(schedule_id: int, *, queryset: QuerySet[Schedule]) -> None:
    """Delete a schedule and its fire records; the tasks it made stay."""
    deleted, _ = queryset.filter(pk=schedule_id).delete()
    if not deleted:
        raise NotFound(f"Schedule {schedule_id} not found")


def upcoming(schedule: Schedule, n: int = 5) -> list[datetime]:
    """The next `n` fire times (paused: none)."""
    if schedule.paused or schedule.next_fire_at is None:
        return []
    first = schedule.next_fire_at
    return [first, *cron.next_times(schedule.cron, schedule.timezone, first, n - 1)]
