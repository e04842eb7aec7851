"""Queues' bodies: the PATCH of a queue's settings, the overview reply, and the bulk action by filter."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from taskhub.api.serializers.fields import NAME_PATTERN, BoundedDateTimeField, PartialUpdate
from tasks import bounds
from tasks.models import MAX_RETENTION_SECONDS, MIN_RETENTION_SECONDS
from tasks.queues import LIMIT_MAX, MAX_PERIOD
from tasks.states import TaskStatus


def _limit(name: str, help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1, max_value=LIMIT_MAX[name], required=False, allow_null=True, source=name, help_text=help_text
    )


class QueueUpdateSerializer(PartialUpdate):
    paused = serializers.BooleanField(required=False, help_text="A paused queue's PENDING tasks are not claimed.")
    maxRunning = _limit("max_running", "At most this many RUNNING tasks of the queue at once (null: no limit).")
    perKeyConcurrency = _limit("per_key_concurrency", "At most this many RUNNING per concurrencyKey (null: no limit).")
    rateLimit = _limit("rate_limit", "At most this many starts in any ratePeriodSeconds window.")
    ratePeriodSeconds = _limit("rate_period", "The rate limit's window, in seconds (default 60).")
    keyRateLimit = _limit("key_rate_limit", "At most this many starts per concurrencyKey per keyRatePeriodSeconds.")
    keyRatePeriodSeconds = _limit("key_rate_period", "The per-key rate limit's window, in seconds (default 60).")
    defaultMaxRetries = serializers.IntegerField(
        min_value=bounds.MAX_RETRIES[0],
        max_value=bounds.MAX_RETRIES[1],
        required=False,
        allow_null=True,
        source="default_max_retries",
    )
    defaultTimeoutSeconds = serializers.IntegerField(
        min_value=1, max_value=MAX_PERIOD, required=False, allow_null=True, source="default_timeout_seconds"
    )
    defaultPriority = serializers.IntegerField(
        min_value=bounds.PRIORITY[0],
        max_value=bounds.PRIORITY[1],
        required=False,
        allow_null=True,
        source="default_priority",
    )
    retentionSeconds = serializers.IntegerField(
        min_value=MIN_RETENTION_SECONDS,
        max_value=MAX_RETENTION_SECONDS,
        required=False,
        allow_null=True,
        source="retention_seconds",
        help_text="COMPLETED and CANCELLED tasks of the queue are deleted this long after they finished "
        "(null: TASK_RETENTION_DAYS).",
    )
    deadRetentionSeconds = serializers.IntegerField(
        min_value=MIN_RETENTION_SECONDS,
        max_value=MAX_RETENTION_SECONDS,
        required=False,
        allow_null=True,
        source="dead_retention_seconds",
        help_text="Its dead set (FAILED with no retry due) this long after (null: TASK_DEAD_RETENTION_DAYS).",
    )


class QueueSettingsSerializer(serializers.Serializer):
    paused = serializers.BooleanField()
    pausedAt = serializers.DateTimeField(allow_null=True)
    pausedBy = serializers.CharField(allow_null=True)
    maxRunning = serializers.IntegerField(allow_null=True)
    perKeyConcurrency = serializers.IntegerField(allow_null=True)
    rateLimit = serializers.IntegerField(allow_null=True)
    ratePeriodSeconds = serializers.IntegerField(allow_null=True)
    keyRateLimit = serializers.IntegerField(allow_null=True)
    keyRatePeriodSeconds = serializers.IntegerField(allow_null=True)
    defaultMaxRetries = serializers.IntegerField(allow_null=True)
    defaultTimeoutSeconds = serializers.IntegerField(allow_null=True)
    defaultPriority = serializers.IntegerField(allow_null=True)
    retentionSeconds = serializers.IntegerField(allow_null=True)
    deadRetentionSeconds = serializers.IntegerField(allow_null=True)


class QueueRetentionSerializer(serializers.Serializer):
    finishedSeconds = serializers.IntegerField(help_text="COMPLETED and CANCELLED tasks are kept this long.")
    deadSeconds = serializers.IntegerField(help_text="The dead set is kept this long.")


class QueueUnitsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.CharField(), help_text="The first 50, by id.")


class QueueSerializer(serializers.Serializer):
    taskType = serializers.CharField()
    byStatus = serializers.DictField(child=serializers.IntegerField())
    depth = serializers.IntegerField(help_text="PENDING tasks.")
    running = serializers.IntegerField()
    oldestDueAgeSeconds = serializers.FloatField(
        allow_null=True, help_text="How long the longest-waiting due task has waited."
    )
    units = QueueUnitsSerializer(help_text="Units of the type that claim (ONLINE or BUSY).")
    settings = QueueSettingsSerializer()
    hasSettings = serializers.BooleanField(help_text="False: the queue has never been configured.")
    retention = QueueRetentionSerializer(help_text="The periods in force: the queue's own, else the global ones.")
    nextStartAt = serializers.DateTimeField(
        allow_null=True, help_text="When the rate limit next allows a start (null: no rate limit)."
    )
    owner = serializers.IntegerField(
        allow_null=True, help_text="The API key id that configured it (null: an operator, or nobody)."
    )


class QueueChangeSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    actorType = serializers.CharField()
    actor = serializers.CharField()
    changes = serializers.DictField(child=serializers.ListField(), help_text="field: [old, new]")


class QueueKeyStartSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="A concurrencyKey its rate limit (keyRateLimit) holds now.")
    nextStartAt = serializers.DateTimeField(help_text="When the key may start a task again.")


class QueueDetailSerializer(QueueSerializer):
    changes = QueueChangeSerializer(many=True, help_text="The last 20 changes of its settings, newest first.")
    keyNextStarts = QueueKeyStartSerializer(
        many=True, help_text="Keys at their per-key rate limit, soonest next start first (at most 50)."
    )


class BulkFilterSerializer(serializers.Serializer):
    """The filters of GET /tasks, as an object."""

    status = serializers.ChoiceField(choices=TaskStatus.choices, required=False)
    taskType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False)
    unitId = serializers.CharField(max_length=64, required=False)
    priority = serializers.IntegerField(min_value=bounds.PRIORITY[0], max_value=bounds.PRIORITY[1], required=False)
    search = serializers.CharField(max_length=255, required=False)
    createdAfter = BoundedDateTimeField(required=False)
    createdBefore = BoundedDateTimeField(required=False)
    concurrencyKey = serializers.CharField(max_length=255, required=False)

    def to_internal_value(self, data: Any) -> Any:
        unknown = set(data) - set(self.fields) if isinstance(data, dict) else set()
        if unknown:
            raise serializers.ValidationError({sorted(unknown)[0]: ["Unknown filter"]})
        return super().to_internal_value(data)


BULK_ACTIONS = ("cancel", "retry", "pause", "resume", "reprioritize")


class BulkActionSerializer(serializers.Serializer):
    filter = BulkFilterSerializer(help_text="The filters of GET /tasks; {} is every task you can see.")
    action = serializers.ChoiceField(choices=BULK_ACTIONS)
    priority = serializers.IntegerField(
        min_value=bounds.PRIORITY[0],
        max_value=bounds.PRIORITY[1],
        required=False,
        help_text="Required by reprioritize: the new priority.",
    )
    reason = serializers.CharField(max_length=500, required=False, default="")
    limit = serializers.IntegerField(
        min_value=1, max_value=100_000, default=10_000, help_text="At most this many matching tasks (oldest first)."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["action"] == "reprioritize" and "priority" not in attrs:
            raise serializers.ValidationError({"priority": ["Required by the reprioritize action"]})
        if attrs["action"] != "reprioritize" and "priority" in attrs:
            raise serializers.ValidationError({"priority": ["Only the reprioritize action takes a priority"]})
        return attrs


class BulkResultSerializer(serializers.Serializer):
    action = serializers.CharField()
    matched = serializers.IntegerField(help_text="Tasks the filter matched (up to limit).")
    changed = serializers.IntegerField()
    skipped = serializers.DictField(child=serializers.IntegerField(), help_text="Tasks left as they were, by why.")
    chunks = serializers.IntegerField(help_text="Transactions it took (at most 500 tasks each).")
    truncated = serializers.BooleanField(help_text="More tasks matched than limit; run it again for the rest.")
