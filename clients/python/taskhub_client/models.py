"""Typed results: one frozen dataclass per body of the hub's schema.

Each field maps to the camelCase key of the hub's JSON (`wire`), datetimes are parsed, and keys a
newer hub adds are ignored, so an SDK release keeps working against the next hub. Fields an older
hub may not send default to None.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")

PENDING, RUNNING, PAUSED = "PENDING", "RUNNING", "PAUSED"
COMPLETED, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"
STATUSES = (PENDING, RUNNING, PAUSED, COMPLETED, FAILED, CANCELLED)


def _datetime(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _wire(
    key: str,
    *,
    parse: Callable[[Any], Any] | None = None,
    default: Any = dataclasses.MISSING,
    factory: Callable[[], Any] | None = None,
) -> Any:
    metadata = {"wire": key, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    if default is dataclasses.MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def _when(key: str) -> Any:
    return _wire(key, parse=_datetime, default=None)


def decode(cls: type[T], body: Mapping[str, Any], **extra: Any) -> T:
    """`cls` from a JSON object of the hub; unknown keys are dropped, missing optional ones default."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = item.metadata.get("wire")
        if key is None or key not in body:
            continue
        parse = item.metadata.get("parse")
        values[item.name] = parse(body[key]) if parse is not None else body[key]
    return cls(**values, **extra)


@dataclass(frozen=True, slots=True)
class Task:
    """A task as `GET /tasks/{id}` shows it (TaskSerializer)."""

    id: int = _wire("id")
    name: str = _wire("name")
    task_type: str = _wire("taskType")
    status: str = _wire("status")
    priority: int = _wire("priority", default=0)
    config: Mapping[str, Any] = _wire("config", factory=dict)
    attempt: int = _wire("attempt", default=0)
    progress: int = _wire("progress", default=0)
    max_retries: int | None = _wire("maxRetries", default=None)
    retry_count: int = _wire("retryCount", default=0)
    failover_count: int = _wire("failoverCount", default=0)
    timeout_seconds: int | None = _wire("timeoutSeconds", default=None)
    scheduled_at: datetime | None = _when("scheduledAt")
    next_retry_at: datetime | None = _when("nextRetryAt")
    lease_expires_at: datetime | None = _when("leaseExpiresAt")
    unit_id: str | None = _wire("unitId", default=None)
    pending_command: str = _wire("pendingCommand", default="")  # a command on its way to the unit, or ""
    result: Any = _wire("result", default=None)
    error: str | None = _wire("error", default=None)
    created_at: datetime | None = _when("createdAt")
    updated_at: datetime | None = _when("updatedAt")
    started_at: datetime | None = _when("startedAt")
    finished_at: datetime | None = _when("finishedAt")
    # The W3C trace context the task was created in (the submit's traceparent), or None.
    traceparent: str | None = _wire("traceparent", default=None)
    # Not a field of the hub's task: True when a submit got back the task an earlier request with
    # the same idempotency key created (header `Idempotency-Replayed`, or a batch item's `created`).
    replayed: bool = False

    @property
    def waiting_for_retry(self) -> bool:
        """FAILED with an automatic retry pending (`nextRetryAt` set): the hub runs it again."""
        return self.status == FAILED and self.next_retry_at is not None

    @property
    def done(self) -> bool:
        """Nothing more happens to it unless someone acts: COMPLETED, CANCELLED, or FAILED with no
        automatic retry pending (a FAILED task can still be retried by hand)."""
        return self.status in (COMPLETED, CANCELLED) or (self.status == FAILED and not self.waiting_for_retry)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One state change (`GET /tasks/{id}/history`)."""

    id: int = _wire("id")
    to_status: str = _wire("toStatus")
    from_status: str | None = _wire("fromStatus", default=None)
    reason: str = _wire("reason", default="")
    actor_type: str | None = _wire("actorType", default=None)
    actor: str | None = _wire("actor", default=None)
    unit_id: str | None = _wire("unitId", default=None)
    attempt: int | None = _wire("attempt", default=None)
    created_at: datetime | None = _when("createdAt")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One execution log line (`GET /tasks/{id}/logs`)."""

    id: int = _wire("id")
    message: str = _wire("message")
    task_id: int | None = _wire("taskId", default=None)
    attempt: int | None = _wire("attempt", default=None)
    level: str = _wire("level", default="INFO")
    timestamp: datetime | None = _when("timestamp")
    unit_id: str | None = _wire("unitId", default=None)
    source: str | None = _wire("source", default=None)
    created_at: datetime | None = _when("createdAt")


@dataclass(frozen=True, slots=True)
class Stats:
    """`GET /tasks/stats`: counts over the caller's tasks."""

    total: int = _wire("total")
    by_status: Mapping[str, int] = _wire("byStatus", factory=dict)
    by_type: Mapping[str, Mapping[str, int]] = _wire("byType", factory=dict)
    waiting_retry: int = _wire("waitingRetry", default=0)
    dead: int = _wire("dead", default=0)


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One task of `submit_many`: the arguments of `submit`. Without an `idempotency_key` the SDK
    makes one, so a retried batch returns the tasks its lost reply had created."""

    name: str
    task_type: str
    config: Mapping[str, Any] | None = None
    priority: int = 0
    max_retries: int | None = None
    timeout_seconds: int | None = None
    scheduled_at: datetime | None = None
    idempotency_key: str | None = None
    traceparent: str | None = None  # this item's W3C trace context, instead of the request's


@dataclass(frozen=True, slots=True)
class Event:
    """One Server-Sent Event of `GET /api/v1/events`: a state change of a task."""

    id: str
    event: str
    data: Mapping[str, Any]

    @property
    def task_id(self) -> int | None:
        value = self.data.get("taskId")
        return value if isinstance(value, int) else None

    @property
    def from_status(self) -> str | None:
        return self.data.get("fromStatus")

    @property
    def to_status(self) -> str | None:
        """The state the task entered (`toStatus`, or `status` where the event says only that)."""
        return self.data.get("toStatus") or self.data.get("status")

    @property
    def history_id(self) -> int | None:
        value = self.data.get("historyId")
        return value if isinstance(value, int) else None

    @classmethod
    def from_sse(cls, event_id: str, event: str, data: str) -> Event:
        try:
            body = json.loads(data) if data else {}
        except ValueError:
            body = {"raw": data}
        return cls(id=event_id, event=event, data=body if isinstance(body, dict) else {"value": body})
