"""Bodies and query strings of the results that come to the client: waiting on a task, the event
stream, webhooks."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from taskhub.api.serializers.fields import MAX_ID, NAME_PATTERN
from tasks.states import TaskStatus

MAX_EVENT_TASK_IDS = 100


class TaskWaitQuerySerializer(serializers.Serializer):
    waitFor = serializers.ChoiceField(
        choices=["terminal"],
        required=False,
        help_text="`terminal`: hold the request until the task is COMPLETED, CANCELLED, or FAILED with no "
        "automatic retry pending, or until `waitSeconds` pass; then answer the task as it is.",
    )
    waitSeconds = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=300,
        help_text="How long to hold (default and maximum TASK_WAIT_MAX_SECONDS, 30); 0 answers at once.",
    )

    def validate_waitSeconds(self, value: int) -> int:
        if value > settings.TASK_WAIT_MAX_SECONDS:
            raise serializers.ValidationError(
                f"Ensure this value is less than or equal to {settings.TASK_WAIT_MAX_SECONDS}."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "waitSeconds" in attrs and "waitFor" not in attrs:
            raise serializers.ValidationError({"waitFor": ["required with waitSeconds (the only value: terminal)"]})
        return attrs


class TaskIdListField(serializers.CharField):
    """`1,2,3`: task ids, comma-separated."""

    def to_internal_value(self, data: Any) -> frozenset[int]:  # type: ignore[override]
        text = super().to_internal_value(data)
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise serializers.ValidationError("Expected comma-separated task ids")
        if len(parts) > MAX_EVENT_TASK_IDS:
            raise serializers.ValidationError(f"At most {MAX_EVENT_TASK_IDS} task ids")
        ids = set()
        for part in parts:
            if not (part.isascii() and part.isdigit()) or not 0 < int(part) <= MAX_ID:
                raise serializers.ValidationError(f"Not a task id: {part[:32]!r}")
            ids.add(int(part))
        return frozenset(ids)


class EventQuerySerializer(serializers.Serializer):
    taskIds = TaskIdListField(required=False, help_text="Only these tasks (comma-separated ids, at most 100).")
    taskType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False, help_text="Only tasks of this type.")
    mine = serializers.BooleanField(
        required=False, default=False, help_text="Only tasks the caller created (an API key's own tasks)."
    )
    lastEventId = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_ID,
        help_text="Resume after this event id, as the `Last-Event-ID` header does (which wins when both are sent).",
    )


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=TaskStatus.choices),
        required=False,
        default=list,
        max_length=len(TaskStatus.values),
        help_text="The states whose entry is delivered (empty or absent: every change).",
    )
    taskType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False, default="")
    taskId = serializers.IntegerField(
        required=False, min_value=1, max_value=MAX_ID, help_text="Only this task's changes (it must be yours)."
    )


class WebhookSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    url = serializers.CharField()
    events = serializers.ListField(child=serializers.CharField(), source="statuses")
    taskType = serializers.CharField(source="task_type")
    taskId = serializers.IntegerField(source="task_id", allow_null=True)
    isActive = serializers.BooleanField(source="is_active")
    createdAt = serializers.DateTimeField(source="created_at")


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(help_text="Signs every delivery (Taskhub-Signature); shown only in this reply.")


class WebhookDeliverySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    eventId = serializers.IntegerField(source="history_id")
    taskId = serializers.IntegerField(source="task_id")
    status = serializers.CharField()
    attempts = serializers.IntegerField()
    nextAttemptAt = serializers.DateTimeField(source="next_attempt_at")
    lastStatusCode = serializers.IntegerField(source="last_status_code", allow_null=True)
    lastError = serializers.CharField(source="last_error")
    createdAt = serializers.DateTimeField(source="created_at")
    deliveredAt = serializers.DateTimeField(source="delivered_at", allow_null=True)
