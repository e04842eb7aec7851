"""Request and response bodies of the schedules API. The template, cron and zone are checked by
the schedules service (one check for the API and the console; errors name the field)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from taskhub.api.serializers.fields import PartialUpdate
from taskhub.schedules.models import OverlapPolicy, Schedule
from taskhub.schedules.services import MAX_CATCHUP, MIN_CATCHUP, upcoming
from tasks import bounds


class TemplateSerializer(serializers.Serializer):
    """The documented shape of a template (checked by taskhub.schedules.template)."""

    name = serializers.CharField(max_length=bounds.NAME_LENGTH)
    taskType = serializers.CharField(max_length=bounds.TASK_TYPE_LENGTH)
    priority = serializers.IntegerField(min_value=bounds.PRIORITY[0], max_value=bounds.PRIORITY[1], required=False)
    config = serializers.DictField(required=False)
    maxRetries = serializers.IntegerField(
        min_value=bounds.MAX_RETRIES[0], max_value=bounds.MAX_RETRIES[1], required=False
    )
    timeoutSeconds = serializers.IntegerField(
        min_value=bounds.TIMEOUT_SECONDS[0], max_value=bounds.TIMEOUT_SECONDS[1], required=False
    )


class ScheduleWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=255)
    cron = serializers.CharField(
        max_length=120, help_text='Five fields (minute hour day-of-month month day-of-week), e.g. "*/5 * * * *".'
    )
    timezone = serializers.CharField(max_length=64, default="UTC", help_text="IANA name, e.g. Europe/Berlin.")
    template = serializers.DictField(
        help_text="The task each fire creates: name and taskType (required), priority, config, maxRetries, "
        "timeoutSeconds, with the bounds of POST /tasks; another field is a 400 naming template.<field>."
    )
    overlap = serializers.ChoiceField(
        choices=OverlapPolicy.choices,
        default=OverlapPolicy.SKIP,
        help_text="While the previous fire's task is still active: skip this fire, allow a second task, "
        "or cancel the previous one.",
    )
    catchupSeconds = serializers.IntegerField(
        min_value=MIN_CATCHUP,
        max_value=MAX_CATCHUP,
        default=300,
        source="catchup_seconds",
        help_text="After downtime, fire times missed by at most this long still fire (each once); older are skipped.",
    )
    paused = serializers.BooleanField(default=False)


class ScheduleUpdateSerializer(PartialUpdate, ScheduleWriteSerializer):
    pass


class ScheduleSerializer(serializers.ModelSerializer):
    template = TemplateSerializer()
    catchupSeconds = serializers.IntegerField(source="catchup_seconds")
    nextFireAt = serializers.DateTimeField(source="next_fire_at", allow_null=True)
    lastFireAt = serializers.DateTimeField(source="last_fire_at", allow_null=True)
    lastTaskId = serializers.IntegerField(source="last_task_id", allow_null=True)
    nextFireTimes = serializers.SerializerMethodField(help_text="The next five fire times (UTC); empty while paused.")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")

    class Meta:
        model = Schedule
        fields = [
            "id",
            "name",
            "cron",
            "timezone",
            "template",
            "overlap",
            "catchupSeconds",
            "paused",
            "nextFireAt",
            "lastFireAt",
            "lastTaskId",
            "nextFireTimes",
            "createdAt",
            "updatedAt",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.DateTimeField()))
    def get_nextFireTimes(self, schedule: Schedule) -> list[str]:
        field = serializers.DateTimeField()
        return [field.to_representation(at) for at in upcoming(schedule)]
