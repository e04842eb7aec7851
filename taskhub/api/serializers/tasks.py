"""Request and response bodies of the tasks API, camelCase as the seed shows."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from taskhub.api.pagination import CURSOR_PATTERN, PageQuery
from taskhub.api.serializers.fields import (
    MAX_ATTEMPT,
    MAX_CONFIG_BYTES,
    MAX_ID,
    MAX_LOG_BATCH,
    MAX_LOG_MESSAGE,
    MAX_RESULT_BYTES,
    NAME_PATTERN,
    BoundedDateTimeField,
    PartialUpdate,
    check_json_size,
)
from taskhub.base import tracing
from tasks import bounds, unique
from tasks.models import LogLevel, Task, TaskExecutionLog, TaskStatusHistory
from tasks.states import TaskStatus


class TaskSerializer(serializers.ModelSerializer):
    taskType = serializers.CharField(source="task_type")
    maxRetries = serializers.IntegerField(source="max_retries")
    retryCount = serializers.IntegerField(source="retry_count")
    failoverCount = serializers.IntegerField(source="failover_count")
    timeoutSeconds = serializers.IntegerField(source="timeout_seconds", allow_null=True)
    scheduledAt = serializers.DateTimeField(source="scheduled_at", allow_null=True)
    nextRetryAt = serializers.DateTimeField(source="next_retry_at", allow_null=True)
    leaseExpiresAt = serializers.DateTimeField(
        source="lease_expires_at",
        allow_null=True,
        help_text="Set while RUNNING with no unit (started with PUT status): the hub puts the task back to "
        "PENDING at this time (a failover) unless someone reports on it first; each POST of log lines "
        "renews it by UNIT_HEARTBEAT_TIMEOUT. Null otherwise.",
    )
    unitId = serializers.CharField(source="unit_id", allow_null=True)
    concurrencyKey = serializers.CharField(source="concurrency_key")
    pendingCommand = serializers.CharField(source="pending_command")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)
    config = serializers.JSONField()
    result = serializers.JSONField(allow_null=True)
    uniqueKey = serializers.CharField(source="unique_key", allow_null=True)
    uniqueUntil = serializers.DateTimeField(source="unique_until", allow_null=True)
    traceparent = serializers.CharField(
        allow_null=True,
        help_text="The W3C trace context the task was created in (the `traceparent` header of the create, "
        "or the batch item's `traceparent`; with the hub's OpenTelemetry tracing on, its enqueue span's), "
        "as version 00; null without one. See docs/operations.md, Tracing.",
    )

    class Meta:
        model = Task
        fields = [
            "id",
            "name",
            "taskType",
            "priority",
            "config",
            "concurrencyKey",
            "status",
            "attempt",
            "progress",
            "maxRetries",
            "retryCount",
            "failoverCount",
            "timeoutSeconds",
            "scheduledAt",
            "nextRetryAt",
            "leaseExpiresAt",
            "unitId",
            "pendingCommand",
            "result",
            "error",
            "createdAt",
            "updatedAt",
            "startedAt",
            "finishedAt",
            "uniqueKey",
            "uniqueUntil",
            "traceparent",
        ]
        read_only_fields = fields


class TaskFieldsSerializer(serializers.Serializer):
    """The fields of a task a client sets (create, PATCH, a schedule's template)."""

    name = serializers.CharField(max_length=bounds.NAME_LENGTH, allow_blank=False)
    taskType = serializers.RegexField(NAME_PATTERN, max_length=bounds.TASK_TYPE_LENGTH, source="task_type")
    priority = serializers.IntegerField(
        min_value=bounds.PRIORITY[0],
        max_value=bounds.PRIORITY[1],
        required=False,
        help_text="Default 0, or the queue's defaultPriority.",
    )
    config = serializers.DictField(default=dict)
    concurrencyKey = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        source="concurrency_key",
        help_text="Tasks sharing a key are limited together by their queue's perKeyConcurrency and key rate limit.",
    )
    maxRetries = serializers.IntegerField(
        min_value=bounds.MAX_RETRIES[0], max_value=bounds.MAX_RETRIES[1], required=False, source="max_retries"
    )
    timeoutSeconds = serializers.IntegerField(
        min_value=bounds.TIMEOUT_SECONDS[0],
        max_value=bounds.TIMEOUT_SECONDS[1],
        required=False,
        allow_null=True,
        source="timeout_seconds",
    )
    scheduledAt = BoundedDateTimeField(required=False, allow_null=True, source="scheduled_at")

    def validate_config(self, value: dict[str, Any]) -> dict[str, Any]:
        return check_json_size(value, MAX_CONFIG_BYTES, "config")


class TaskCreateSerializer(TaskFieldsSerializer):
    uniqueKey = serializers.CharField(
        max_length=255,
        required=False,
        source="unique_key",
        help_text="At most one task of this client holds the key (compared byte-exact): while it is not "
        "COMPLETED or CANCELLED, or with uniqueFor for that many seconds after its creation. A create "
        "with a held key returns the holder (200, header Taskhub-Unique-Existing: true) or, with "
        'onConflict "error", 409.',
    )
    uniqueFor = serializers.IntegerField(
        min_value=1,
        max_value=366 * 24 * 3600,
        required=False,
        source="unique_for",
        help_text="Seconds: the key is held this long after the creation, whatever the task's state.",
    )
    onConflict = serializers.ChoiceField(
        choices=unique.ON_CONFLICT,
        default=unique.EXISTING,
        source="on_conflict",
        help_text="What a create with a held uniqueKey gets: the existing task (200) or an error (409).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("unique_for") is not None and not attrs.get("unique_key"):
            raise serializers.ValidationError({"uniqueFor": ["needs uniqueKey"]})
        return attrs


class TaskUpdateSerializer(PartialUpdate, TaskFieldsSerializer):
    """PATCH: every field optional; which may change depends on the task's state (the service)."""

    ELSEWHERE = {"status": "Change status with PUT /tasks/{id}/status"}


class StatusChangeSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class TaskListQuerySerializer(PageQuery):
    ORDERINGS = ("id", "-id", "priority", "-priority", "createdAt", "-createdAt", "updatedAt", "-updatedAt")
    DEFAULT_LIMIT = 10

    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    taskType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False)
    unitId = serializers.CharField(max_length=64, required=False)
    priority = serializers.IntegerField(min_value=bounds.PRIORITY[0], max_value=bounds.PRIORITY[1], required=False)
    search = serializers.CharField(
        max_length=255,
        required=False,
        help_text="Digits only: the task with that id. Otherwise: names containing the term (case-insensitive), "
        "among the newest API_SEARCH_WINDOW (default 5,000) tasks that match the other filters.",
    )
    createdAfter = BoundedDateTimeField(required=False)
    createdBefore = BoundedDateTimeField(required=False)
    ordering = serializers.ChoiceField(
        choices=ORDERINGS, default="-id", help_text="Ties are broken by id in the same direction."
    )
    cursor = serializers.RegexField(
        CURSOR_PATTERN,
        max_length=64,
        required=False,
        allow_blank=True,
        help_text="Cursor mode for large tables: pass an empty cursor to start, then nextCursor (with the same "
        "ordering and filters); no total count. A cursor is the last row's position: `<id>` under an id ordering, "
        "`<value>.<id>` under another (date-times as microseconds since 1970); the list goes on after it.",
    )


class LogEntrySerializer(serializers.Serializer):
    level = serializers.ChoiceField(choices=LogLevel.choices, default=LogLevel.INFO)
    message = serializers.CharField(max_length=MAX_LOG_MESSAGE, trim_whitespace=False)
    timestamp = BoundedDateTimeField(required=False)


class LogWriteSerializer(serializers.Serializer):
    """One entry (`{level, message}`) or a batch (`{entries: [...]}`); units add `attempt`."""

    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT, required=False)
    entries = LogEntrySerializer(many=True, required=False)
    level = serializers.ChoiceField(choices=LogLevel.choices, required=False)
    message = serializers.CharField(max_length=MAX_LOG_MESSAGE, required=False, trim_whitespace=False)
    timestamp = BoundedDateTimeField(required=False)

    def validate_entries(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not value:
            raise serializers.ValidationError("must hold at least one entry")
        if len(value) > MAX_LOG_BATCH:
            raise serializers.ValidationError(f"at most {MAX_LOG_BATCH} entries per request")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "entries" in attrs:
            if "message" in attrs:
                raise serializers.ValidationError({"message": ["Send either entries or one message, not both"]})
            return attrs
        if "message" not in attrs:
            raise serializers.ValidationError({"message": ["This field is required (or send entries)."]})
        entry = {"level": attrs.pop("level", LogLevel.INFO), "message": attrs.pop("message")}
        if "timestamp" in attrs:
            entry["timestamp"] = attrs.pop("timestamp")
        attrs["entries"] = [entry]
        return attrs


class LogSerializer(serializers.ModelSerializer):
    taskId = serializers.IntegerField(source="task_id")
    unitId = serializers.CharField(source="unit_id", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = TaskExecutionLog
        fields = ["id", "taskId", "attempt", "level", "message", "timestamp", "unitId", "source", "createdAt"]
        read_only_fields = fields


class LogQuerySerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=0, max_value=MAX_ATTEMPT, required=False)
    level = serializers.ChoiceField(choices=LogLevel.choices, required=False)
    after = serializers.IntegerField(
        min_value=0, max_value=MAX_ID, default=0, help_text="Return entries with id greater than this."
    )
    limit = serializers.IntegerField(min_value=1, max_value=MAX_ID, default=100)

    def validate_limit(self, value: int) -> int:
        return min(value, 1000)


class HistorySerializer(serializers.ModelSerializer):
    fromStatus = serializers.CharField(source="from_status", allow_null=True)
    toStatus = serializers.CharField(source="to_status")
    actorType = serializers.CharField(source="actor_type")
    unitId = serializers.CharField(source="unit_id", allow_null=True)
    createdAt = serializers.DateTimeField(source="created_at")

    class Meta:
        model = TaskStatusHistory
        fields = ["id", "fromStatus", "toStatus", "reason", "actorType", "actor", "unitId", "attempt", "createdAt"]
        read_only_fields = fields


class ProgressSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT)
    progress = serializers.IntegerField(min_value=0, max_value=100)


class CompleteSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT)
    result = serializers.JSONField(required=False, allow_null=True, default=None)

    def validate_result(self, value: Any) -> Any:
        return check_json_size(value, MAX_RESULT_BYTES, "result")


class FailSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT)
    error = serializers.CharField(max_length=10_000)
    retryable = serializers.BooleanField(default=True)


class RedriveSerializer(serializers.Serializer):
    ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), required=False, max_length=1000
    )
    taskType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False)
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


# --- batch forms ------------------------------------------------------------------------------


def _within(items: list[Any], limit: int) -> list[Any]:
    # The schema's maxItems comes from the setting at start-up; this checks the live value.
    if len(items) > limit:
        raise serializers.ValidationError(f"at most {limit} items per request")
    return items


class TaskBatchItemSerializer(TaskCreateSerializer):
    idempotencyKey = serializers.CharField(
        max_length=255,
        required=False,
        source="idempotency_key",
        help_text="Like the Idempotency-Key header of POST /tasks: a repeat returns the task created first.",
    )
    traceparent = serializers.RegexField(
        tracing.TRACEPARENT_PATTERN,
        max_length=512,
        required=False,
        allow_null=True,
        help_text="This item's W3C trace context (version-traceid-parentid-flags), instead of the request's "
        "`traceparent` header. Unlike the header (ignored when invalid, as the W3C says), an invalid value "
        "here is refused (400). Not part of the idempotency fingerprint.",
    )

    def validate_traceparent(self, value: str | None) -> str | None:
        if value is None:
            return None
        parsed = tracing.parse_traceparent(value)
        if parsed is None:
            raise serializers.ValidationError(
                "Not a W3C traceparent: version-traceid-parentid-flags in lowercase hex, e.g. "
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )
        return parsed


class TaskBatchCreateSerializer(serializers.Serializer):
    tasks: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=TaskBatchItemSerializer(),
        max_length=settings.TASK_BATCH_MAX,
        help_text="Answered in order, as if sent one by one: an idempotencyKey (compared case-insensitively) or "
        "a uniqueKey repeated in the batch gets the task of its first item. An empty list gets an empty one.",
    )

    def validate_tasks(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _within(value, settings.TASK_BATCH_MAX)


class TaskBatchItemResultSerializer(TaskSerializer):
    created = serializers.BooleanField(help_text="false: an idempotent replay of a task created earlier")
    uniqueExisting = serializers.BooleanField(help_text="true: the task holding the item's uniqueKey")

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "created", "uniqueExisting"]
        read_only_fields = fields


class ReportSerializer(serializers.Serializer):
    OUTCOMES = ("complete", "fail", "progress")

    taskId = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT)
    outcome = serializers.ChoiceField(choices=OUTCOMES)
    result = serializers.JSONField(required=False, allow_null=True, default=None, help_text="outcome complete")
    error = serializers.CharField(max_length=10_000, required=False, help_text="outcome fail (required)")
    retryable = serializers.BooleanField(default=True, help_text="outcome fail")
    progress = serializers.IntegerField(min_value=0, max_value=100, required=False, help_text="outcome progress")
    logs: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=LogEntrySerializer(),
        required=False,
        max_length=MAX_LOG_BATCH,
        help_text="Stored before the outcome, fenced by the same attempt.",
    )

    def validate_result(self, value: Any) -> Any:
        return check_json_size(value, MAX_RESULT_BYTES, "result")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        needs = {"fail": "error", "progress": "progress"}.get(attrs["outcome"])
        if needs and needs not in attrs:
            raise serializers.ValidationError({needs: [f"This field is required when outcome is {attrs['outcome']}."]})
        return attrs


class ReportBatchSerializer(serializers.Serializer):
    reports: serializers.ListSerializer[Any] = serializers.ListSerializer(
        child=ReportSerializer(),
        max_length=settings.TASK_BATCH_MAX,
        help_text="Each item is fenced on its own; a second report for a taskId of the same request is refused in "
        "its item (error code `repeated`). An empty list gets an empty one.",
    )

    def validate_reports(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _within(value, settings.TASK_BATCH_MAX)


class ReportResultSerializer(serializers.Serializer):
    taskId = serializers.IntegerField()
    attempt = serializers.IntegerField()
    status = serializers.CharField(allow_null=True, help_text="null when the item was refused")
    accepted = serializers.BooleanField(help_text="false with no error: a repeat of an accepted report")
    error = serializers.DictField(allow_null=True, help_text="null, or {code, message, details} as a 4xx would say")
