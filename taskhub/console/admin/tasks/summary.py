"""What the top of a task's page says: what happened (status, the current attempt's error, attempt,
unit, queue wait, run time), and the timeline of its attempts, built from its history rows.

A history row carries the attempt it belongs to: the creation is attempt 0; a claim starts attempt
n, and the rows after it (the outcome, then a failover or a retry back to PENDING) are attempt n's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from taskhub.console.formatting import format_duration, format_time
from tasks.models import Task, TaskStatusHistory
from tasks.states import ReasonCode, TaskStatus
from units.selectors import is_orphaned

S = TaskStatus
R = ReasonCode
# Events shown as such on the timeline (the CSS class says which kind).
EVENT_KINDS: dict[str, str] = {
    R.FAILOVER: "failover",
    R.POISONED: "failover",
    R.RETRY_SCHEDULED: "retry",
    R.RETRIED: "retry",
    R.RETRIED_BY_HAND: "retry",
    R.TIMED_OUT: "failure",
    R.FAILED: "failure",
    R.CANCELLED: "cancel",
    R.PAUSED: "pause",
    R.PAUSE_REQUESTED: "pause",
    R.RESUMED: "pause",
    R.REQUEUED: "failover",
}
CLAIMS = frozenset({R.CLAIMED, R.STARTED})


@dataclass
class Attempt:
    number: int
    rows: list[TaskStatusHistory] = field(default_factory=list)
    claimed_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = ""
    queued_since: datetime | None = None  # when it last became PENDING before this attempt's claim
    logs: dict[str, Any] | None = None

    @property
    def queue_wait(self) -> timedelta | None:
        if self.claimed_at is None or self.queued_since is None:
            return None
        return max(self.claimed_at - self.queued_since, timedelta(0))

    @property
    def run_time(self) -> timedelta | None:
        if self.claimed_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.claimed_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "events": [
                {
                    "row": row,
                    "kind": EVENT_KINDS.get(row.reason_code, "claim" if row.reason_code in CLAIMS else "step"),
                    "at": format_time(row.created_at),
                }
                for row in self.rows
            ],
            "outcome": self.outcome,
            "queue_wait": format_duration(self.queue_wait) if self.queue_wait is not None else "—",
            "run_time": format_duration(self.run_time) if self.run_time is not None else "—",
            "logs": self.logs,
        }


def attempts_of(rows_oldest_first: Sequence[TaskStatusHistory]) -> list[Attempt]:
    """The history rows grouped by attempt (0: creation and what came before the first claim)."""
    attempts: dict[int, Attempt] = {}
    queued_since: datetime | None = None
    for row in rows_oldest_first:
        attempt = attempts.setdefault(row.attempt, Attempt(row.attempt))
        attempt.rows.append(row)
        if row.to_status == S.RUNNING and row.reason_code in CLAIMS | {""}:
            attempt.claimed_at, attempt.queued_since = row.created_at, queued_since
        elif row.from_status == S.RUNNING and attempt.ended_at is None and attempt.claimed_at is not None:
            attempt.ended_at, attempt.outcome = row.created_at, row.to_status
        if row.to_status == S.PENDING:
            queued_since = row.created_at
    return [attempts[n] for n in sorted(attempts)]


def timeline(history_newest_first: Sequence[TaskStatusHistory], logs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attempts, newest first, each with its events oldest first and its log counts and link."""
    by_number = {entry["attempt"]: entry for entry in logs}
    attempts = attempts_of(list(reversed(history_newest_first)))
    for attempt in attempts:
        attempt.logs = by_number.get(attempt.number)
    return [a.as_dict() for a in reversed(attempts)]


def summary(task: Task, now: datetime, history_newest_first: Sequence[TaskStatusHistory] = ()) -> dict[str, Any]:
    """The page's first lines. The error is shown only while it is the current attempt's: a task
    that failed, then was retried and completed keeps the old text in its row, which is history."""
    current = attempts_of(list(reversed(history_newest_first)))[-1:] if history_newest_first else []
    attempt = current[0] if current else None
    if task.status == S.PENDING:
        since = max(filter(None, [attempt.ended_at if attempt else None, task.available_at]), default=None)
        wait = format_duration(now - since) + " so far" if since and since <= now else "not due yet"
    else:
        wait = format_duration(attempt.queue_wait) if attempt and attempt.queue_wait is not None else "—"
    if task.status == S.RUNNING and task.started_at:
        run = format_duration(now - task.started_at) + " so far"
    else:
        run = format_duration(attempt.run_time) if attempt and attempt.run_time is not None else "—"
    kind = ""
    if task.status == S.FAILED:
        kind = "waiting retry" if task.next_retry_at else "dead"
    elif is_orphaned(task):
        kind = "orphaned"
    return {
        "status": task.status,
        "kind": kind,
        "error": task.error if task.status == S.FAILED else "",
        "next_retry_at": format_time(task.next_retry_at) if task.next_retry_at else "",
        "attempt": task.attempt,
        "retries": f"{task.retry_count}/{task.max_retries}",
        "failovers": task.failover_count,
        "unit_id": task.unit_id,
        "unit_status": task.unit.status if task.unit_id and task.unit is not None else "",
        "queue_wait": wait,
        "run_time": run,
    }
