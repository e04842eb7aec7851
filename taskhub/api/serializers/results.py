"""Bodies and query strings of the results that come to the client: waiting on a task, the event
stream, webhooks."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from taskhub.api.serializers.fields import MAX_ID, NAME_PATTERN
from tasks.states import TaskStatus


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
        max_value=settings.TASK_WAIT_MAX_SECONDS,
        help_text="How long to hold, with waitFor (default and maximum TASK_WAIT_MAX_SECONDS, 30); 0 answers at "
        "once. Without waitFor it is ignored.",
    )


TASK_IDS = r"^[0-9]{1,18}(,[0-9]{1,18})*$"
MAX_TASK_IDS_CHARS = 2000


class TaskIdListField(serializers.RegexField):
    """`1,2,3`: task ids, comma-separated (the pattern is the schema's: a valid string is accepted)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(TASK_IDS, max_length=MAX_TASK_IDS_CHARS, **kwargs)

    def run_validation(self, data: Any = serializers.empty) -> Any:
        text = super().run_validation(data)  # the pattern checks the text, before it becomes ids
        return frozenset(int(part) for part in text.split(","))


class EventQuerySerializer(serializers.Serializer):
    taskIds = TaskIdListField(
        required=False, help_text="Only these tasks (comma-separated ids, up to 2,000 characters)."
    )
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


@extend_schema_serializer(many=False)  # the list action answers one object, not an array of them
class WebhookListSerializer(serializers.Serializer):
    items = WebhookSerializer(many=True)


class DeliveryListSerializer(serializers.Serializer):
    items = WebhookDeliverySerializer(many=True)


class ServerSentEventSerializer(serializers.Serializer):
    """One event of the stream, as an SSE parser hands it over."""

    id = serializers.CharField(help_text="The history row id: send it as Last-Event-ID to resume after it.")
    event = serializers.CharField(help_text="`task.status`")
    data = serializers.CharField(  # type: ignore[assignment]
        help_text="JSON: {type, historyId, taskId, taskType, fromStatus, toStatus, reason, reasonCode, actorType, "
        "actor, unitId, attempt, createdAt}"
    )
