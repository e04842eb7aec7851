"""The beat job that fires schedules: `fire_schedules(now)`, a plain function of the time.

Exactly once per schedule and fire time, with any number of beats and workers running it, and
after a crash mid-fire:
- each batch of due schedules is taken with SELECT ... FOR UPDATE SKIP LOCKED (two runs split the
  due schedules between them, never share one) in one transaction that writes everything a fire
  does: the fire rows, the tasks (one INSERT, one of their history rows), the cancel of a previous
  run, the schedules' next fire times. A crash rolls all of it back; the next run does it again.
- a fire is a row of `schedule_fires`, UNIQUE on (schedule, fire_time): whatever goes wrong with the
  lock (an edit that moved next_fire_at back, a clock behind), a second insert of a fire time fails
  and its batch is rolled back and redone without it.

Catch-up: fire times missed by more than the schedule's catchup window (downtime) are skipped, the
rest fire in order (at most MAX_FIRES per schedule and run). Overlap: while the previous fire's task
is active, `skip` records the fire as skipped, `cancel` cancels that task first, `allow` fires."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, Subquery

from taskhub.base import metrics
from taskhub.base.actors import Actor
from taskhub.base.dbretry import retry_on_lock_error
from taskhub.schedules import cron
from taskhub.schedules.models import FireOutcome, OverlapPolicy, Schedule, ScheduleFire
from taskhub.schedules.template import task_fields
from tasks.models import Task
from tasks.states import VERBS, TaskStatus
from tasks.transitions.creation import create_tasks
from tasks.transitions.verbs import act

S = TaskStatus
BATCH = 200  # schedules per transaction
MAX_BATCHES = 50  # per run
MAX_FIRES = 100  # fire times per schedule per run (a long catch-up window goes on next run)
FIRE_KEEP = timedelta(days=7)  # fire rows older than this are deleted (next_fire_at only moves on)
ACTOR = Actor.system("fire_schedules")


def fire_schedules(now: datetime, ahead: float = 0.0) -> dict[str, int]:
    """Fire every schedule due by `now` (and, `ahead` seconds > 0, those due within that much
    after it: their tasks are claimable from their fire time, see fire_schedules_on_time)."""
    totals: Counter[str] = Counter()
    for _ in range(MAX_BATCHES):
        done = _fire_batch(now, ahead)
        totals.update(done)
        if done["schedules"] < BATCH and not done["capped"]:
            break
    totals["firesDeleted"] = _delete_old_fires(now)
    return {name: totals[name] for name in ("schedules", "created", "skipped", "missed", "cancelled", "firesDeleted")}


def _fire_batch(now: datetime, ahead: float = 0.0) -> Counter[str]:
    for attempt in range(3):
        try:
            return _fire_locked(now, ahead)
        except IntegrityError:
            # A fire time was already fired (schedule_fire_once): the rolled-back batch is redone, and
            # its read of the existing fires now skips it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _is_active(task: Task | None) -> bool:
    """The previous run is still going: not finished, and not in the dead set."""
    if task is None:
        return False
    return task.status in (S.PENDING, S.RUNNING, S.PAUSED) or (
        task.status == S.FAILED and task.next_retry_at is not None
    )


@retry_on_lock_error()
@transaction.atomic
def _fire_locked(now: datetime, ahead: float = 0.0) -> Counter[str]:
    counts: Counter[str] = Counter()
    until = now + timedelta(seconds=ahead)
    schedules = list(
        Schedule.objects.select_for_update(skip_locked=True)
        .filter(paused=False, next_fire_at__lte=until)
        .order_by("next_fire_at")[:BATCH]
    )
    counts["schedules"] = len(schedules)
    if not schedules:
        return counts
    fired = set(
        ScheduleFire.objects.filter(
            schedule_id__in=[s.pk for s in schedules],
            fire_time__gte=min(s.next_fire_at for s in schedules if s.next_fire_at),
        ).values_list("schedule_id", "fire_time")
    )
    previous = Task.objects.in_bulk([s.last_task_id for s in schedules if s.last_task_id])
    fires: list[ScheduleFire] = []
    new_rows: list[dict[str, Any]] = []
    creates: list[ScheduleFire] = []  # the fires that create a task, in the order of new_rows
    to_cancel: list[int] = []
    for schedule in schedules:
        times, missed, capped = _due_times(schedule, now, until)
        counts["missed"] += missed
        counts["capped"] += capped
        active = _is_active(previous.get(schedule.last_task_id or 0))
        for at in times:
            if (schedule.pk, at) in fired:
                continue
            fire = ScheduleFire(schedule=schedule, fire_time=at, created_at=now, outcome=FireOutcome.CREATED)
            if active and schedule.overlap == OverlapPolicy.SKIP:
                fire.outcome = FireOutcome.SKIPPED
                counts["skipped"] += 1
            else:
                if active and schedule.overlap == OverlapPolicy.CANCEL and schedule.last_task_id:
                    to_cancel.append(schedule.last_task_id)
                # Claimable from its fire time (a fire made ahead of it waits until then).
                new_rows.append({"owner_id": schedule.owner_id, **task_fields(schedule.template), "scheduled_at": at})
                creates.append(fire)
                active = True  # the task of this fire is the previous run of the next one
            fires.append(fire)
            schedule.last_fire_at = at
        # A capped backlog goes on from its last fire time (the next batch or run); else from now.
        after = times[-1] if capped else max([now, *times])
        schedule.next_fire_at = cron.next_times(schedule.cron, schedule.timezone, after, 1)[0]
        schedule.updated_at = now
    if to_cancel:
        moved, _ = act(to_cancel, VERBS["cancel"], actor=ACTOR, reason="cancelled: its schedule fired again", now=now)
        counts["cancelled"] = len(moved)
    tasks = create_tasks(new_rows, actor=ACTOR, now=now) if new_rows else []
    by_schedule: dict[int, int] = {}
    for fire, task in zip(creates, tasks, strict=True):
        fire.task_id = task.pk
        by_schedule[fire.schedule_id] = task.pk
    counts["created"] = len(tasks)
    ScheduleFire.objects.bulk_create(fires)
    _save_schedules(schedules, set(by_schedule), now)
    metrics.record_fires({"created": counts["created"], "skipped": counts["skipped"], "missed": counts["missed"]})
    return counts


def _save_schedules(schedules: list[Schedule], with_task: set[int], now: datetime) -> None:
    """Write the batch's schedules: one UPDATE per distinct (next, last) fire time (one for a batch
    due the same minute; bulk_update's CASE per row costs more to build than the fire itself), and
    the new last task of those that made one, read from their newest fire row."""
    groups: dict[tuple[datetime | None, datetime | None], list[int]] = {}
    for schedule in schedules:
        groups.setdefault((schedule.next_fire_at, schedule.last_fire_at), []).append(schedule.pk)
    for (next_fire_at, last_fire_at), ids in groups.items():
        Schedule.objects.filter(pk__in=ids).update(next_fire_at=next_fire_at, last_fire_at=last_fire_at, updated_at=now)
    if with_task:
        newest = (
            ScheduleFire.objects.filter(schedule_id=OuterRef("pk"), outcome=FireOutcome.CREATED)
            .order_by("-fire_time")
            .values("task_id")[:1]
        )
        Schedule.objects.filter(pk__in=sorted(with_task)).update(last_task_id=Subquery(newest))


def _due_times(schedule: Schedule, now: datetime, until: datetime | None = None) -> tuple[list[datetime], int, bool]:
    """(the fire times to make now, in order: from next_fire_at, or the start of the catch-up window
    if that is later, up to `until` (now unless firing ahead), at most MAX_FIRES; 1 if earlier ones
    were missed past the window; whether MAX_FIRES cut the list)."""
    until = until or now
    first = schedule.next_fire_at
    if first is None or first > until:
        return [], 0, False
    window = now - timedelta(seconds=schedule.catchup_seconds)
    missed = 0
    if first < window:
        missed = 1
        first = next(cron.fire_times(schedule.cron, schedule.timezone, window - timedelta(microseconds=1)))
        if first > until:
            return [], missed, False
    times = [first]
    for at in cron.fire_times(schedule.cron, schedule.timezone, first):
        if at > until:
            return times, missed, False
        if len(times) >= MAX_FIRES:
            return times, missed, True
        times.append(at)
    return times, missed, False


def _delete_old_fires(now: datetime) -> int:
    ids = list(
        ScheduleFire.objects.filter(created_at__lt=now - FIRE_KEEP).order_by("id").values_list("id", flat=True)[:1000]
    )
    return ScheduleFire.objects.filter(id__in=ids).delete()[0] if ids else 0


def schedule_tick() -> float:
    return float(settings.SCHEDULE_TICK)


def next_due_at() -> datetime | None:
    """The soonest fire time of any running schedule: the first entry of schedule_due_idx's
    `paused = false` range (one index probe)."""
    return (
        Schedule.objects.filter(paused=False, next_fire_at__isnull=False)
        .order_by("next_fire_at")
        .values_list("next_fire_at", flat=True)
        .first()
    )


MAX_WAKES = 5  # fire times a run waits for (an early wake-up waits again)
WAKE_MARGIN = 0.002  # seconds slept past a wake-up time, so the wake-up is not before it
# A fire is made this many seconds before its fire time, its task claimable from the fire time: the
# fire's own work (a batch of 200 tasks, history rows and fire rows: ~0.1 s, several times that on
# a loaded machine) is done by then. Its overlap policy reads the previous task's state then.
FIRE_AHEAD = 1.0


def fire_schedules_on_time(
    now: datetime, *, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
) -> dict[str, int]:
    """The beat job: fire what is due by `now` + FIRE_AHEAD; then, while a schedule falls due so
    soon that the next run (SCHEDULE_TICK after `now`) would be late for it, sleep until FIRE_AHEAD
    before its fire time and fire it then. A schedule due at 12:00:00 has its task committed by
    about 12:00:00, claimable from 12:00:00, not from the first tick after it (a tick of a second
    added up to a second of lag). Each run waits at most one tick; two runs (two beats, or a worker
    still asleep when the next run starts) wake together and split the due schedules, as any two
    runs do (SKIP LOCKED, and one fire row per fire time)."""
    tick = timedelta(seconds=schedule_tick())
    ahead = timedelta(seconds=FIRE_AHEAD)
    started = clock()
    totals = Counter(fire_schedules(now, FIRE_AHEAD))
    for _ in range(MAX_WAKES):
        due = next_due_at()
        if due is None or due - ahead >= now + tick:
            break  # nothing the next run would be late for
        wait = (due - ahead - (now + timedelta(seconds=clock() - started))).total_seconds()
        if wait <= 0:
            break  # due now and still there: another run is firing it
        sleep(wait + WAKE_MARGIN)
        totals.update(fire_schedules(now + timedelta(seconds=clock() - started), FIRE_AHEAD))
    return {name: totals[name] for name in ("schedules", "created", "skipped", "missed", "cancelled", "firesDeleted")}
