"""The event log: history rows read in id order, as `GET /api/v1/events` streams them and
`GET /tasks/{id}?waitFor=terminal` watches a task.

History ids are the event ids. On MariaDB ids are handed out when a row is inserted but become
visible when its transaction commits, so id 11 can be seen before id 10; a reader that moved past
10 would miss it for ever. So `EventCursor` delivers rows in id order only up to the first missing
id, and holds back what follows until the missing row appears or the row after the gap is
EVENTS_GAP_GRACE_SECONDS old: then its transaction rolled back (or its task was deleted, which
deletes its history), and the id is skipped. A change is therefore never skipped unless its
transaction stayed open longer than the grace after writing its history row, and never delivered
twice. (SQLite serialises writers: ids become visible in order, and no gap waits.)

Every event passes the visibility rule of GET /tasks/{id} (`visible_tasks`), asked of the
database for each batch: an event of a task the caller cannot read never reaches it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from taskhub.base.sql import aware
from taskhub.base.viewer import Viewer
from tasks.history import event_body
from tasks.models import Task, TaskStatusHistory
from tasks.selectors import visible_tasks
from tasks.states import TERMINAL, TaskStatus

BATCH = 500  # history rows one poll reads at most


def is_done(status: str, next_retry_at: datetime | None) -> bool:
    """What `waitFor=terminal` waits for: COMPLETED or CANCELLED, or FAILED with no automatic retry
    pending (the SDK's `Task.done`)."""
    return status in TERMINAL or (status == TaskStatus.FAILED and next_retry_at is None)


def task_done(task_id: int) -> bool | None:
    """Whether the task is done (one primary-key read); None if it is gone."""
    row = Task.objects.filter(pk=task_id).values_list("status", "next_retry_at").first()
    return None if row is None else is_done(row[0], row[1])


def last_event_id() -> int:
    """Where a stream without Last-Event-ID starts: after the newest history row."""
    row = TaskStatusHistory.objects.order_by("-id").values_list("id", flat=True).first()
    return int(row or 0)


@dataclass(frozen=True)
class EventFilter:
    task_ids: frozenset[int] | None = None
    task_type: str | None = None
    mine: bool = False  # only tasks the caller created (its API key's; an operator's: no key's)


class EventCursor:
    """A reader of the event log after `after`, for one viewer and filter."""

    def __init__(self, viewer: Viewer, events: EventFilter, after: int) -> None:
        self.viewer, self.filter, self.position = viewer, events, after
        # When the rows held back behind a missing id will be given up on (None: none is held):
        # no ring comes for a transaction that rolled back, so a waiting stream reads again then.
        self.held_until: datetime | None = None

    def _tasks(self) -> Any:
        qs = visible_tasks(self.viewer)
        if self.filter.task_ids is not None:
            qs = qs.filter(pk__in=self.filter.task_ids)
        if self.filter.task_type:
            qs = qs.filter(task_type=self.filter.task_type)
        if self.filter.mine:
            qs = qs.filter(owner_id=self.viewer.api_key_id)
        return qs

    def settled_upto(self, rows: Collection[tuple[int, datetime]], now: datetime) -> int:
        """The highest id up to which every id is visible or given up for lost (the gap rule)."""
        grace = timedelta(seconds=settings.EVENTS_GAP_GRACE_SECONDS)
        upto = self.position
        self.held_until = None
        for pk, created_at in rows:
            written = aware(created_at) or now
            if pk != upto + 1 and now - written < grace:
                self.held_until = written + grace
                break  # an id below `pk` may still commit
            upto = pk
        return upto

    def poll(self, now: datetime) -> list[dict[str, Any]]:
        """The events after the position, in order, and the position moved past them: one read of
        ids on the primary key, then (only if there are any) one of the visible rows among them."""
        rows = list(
            TaskStatusHistory.objects.filter(id__gt=self.position)
            .order_by("id")
            .values_list("id", "created_at")[:BATCH]
        )
        upto = self.settled_upto(rows, now)
        if upto == self.position:
            return []
        visible = (
            TaskStatusHistory.objects.filter(id__gt=self.position, id__lte=upto, task__in=self._tasks())
            .select_related("task")
            .only(
                "id",
                "task_id",
                "from_status",
                "to_status",
                "reason",
                "reason_code",
                "actor_type",
                "actor",
                "unit_id",
                "attempt",
                "created_at",
                "task__task_type",
            )
            .order_by("id")
        )
        self.position = upto
        return [event_body(row, row.task.task_type) for row in visible]
