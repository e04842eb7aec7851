"""Execution units' bodies: the unit, register, edit, list, claim (the heartbeat's: heartbeat.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from taskhub.api.pagination import PageQuery
from taskhub.api.serializers.fields import (
    NAME_PATTERN,
    UNIT_ID_INVALID,
    UNIT_ID_PATTERN,
    PartialUpdate,
    check_metadata,
    datetime_or_none,
)
from taskhub.base import tracing
from units import lifecycle
from units.models import DrainedBy, ExecutionUnit, UnitStatus


class EndpointField(serializers.CharField):
    """http(s) URL; hosts without a dot (`http://worker-001:8080`) are fine, as in the seed."""

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        if value:
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                raise serializers.ValidationError("must be an http(s) URL") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise serializers.ValidationError("must be an http(s) URL")
        return value


class UnitSerializer(serializers.ModelSerializer):
    unitType = serializers.CharField(source="unit_type")
    unitName = serializers.CharField(source="unit_name")
    currentLoad = serializers.IntegerField(source="current_load")
    runningTasks = serializers.SerializerMethodField()
    lastHeartbeatAt = serializers.DateTimeField(source="last_heartbeat_at")
    registeredAt = serializers.DateTimeField(source="registered_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    metadata = serializers.JSONField()
    instanceId = serializers.SerializerMethodField(
        help_text="The process registered as this unit (its agent's random instance id); null if it sent none."
    )
    drainedBy = serializers.SerializerMethodField(
        help_text="Who put the unit in MAINTENANCE: `self` (its process shutting down; ends when it "
        "registers again) or `operator` (a user or an API key; lasts until an operator resumes it). "
        "Null when it is not drained."
    )
    drainedByActor = serializers.SerializerMethodField(help_text="Who drained it: user:NAME, key:NAME or unit:ID.")
    drainedAt = serializers.SerializerMethodField()

    class Meta:
        model = ExecutionUnit
        fields = [
            "id",
            "unitType",
            "unitName",
            "capacity",
            "endpoint",
            "metadata",
            "status",
            "currentLoad",
            "runningTasks",
            "lastHeartbeatAt",
            "registeredAt",
            "updatedAt",
            "instanceId",
            "drainedBy",
            "drainedByActor",
            "drainedAt",
        ]
        read_only_fields = fields

    def get_runningTasks(self, unit: ExecutionUnit) -> int:
        annotated = getattr(unit, "running_tasks", None)
        if annotated is not None:
            return int(annotated)
        return unit.tasks.filter(status="RUNNING").count()

    def _drain(self, unit: ExecutionUnit) -> dict[str, Any]:
        return lifecycle.drain_fields(unit.status, unit.drained_by, unit.drained_by_actor, unit.drained_at)

    def get_instanceId(self, unit: ExecutionUnit) -> str | None:
        return unit.instance_id or None

    @extend_schema_field(serializers.ChoiceField(choices=DrainedBy.choices, allow_null=True))
    def get_drainedBy(self, unit: ExecutionUnit) -> str | None:
        return self._drain(unit)["drainedBy"]  # type: ignore[no-any-return]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_drainedByActor(self, unit: ExecutionUnit) -> str | None:
        return self._drain(unit)["drainedByActor"]  # type: ignore[no-any-return]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_drainedAt(self, unit: ExecutionUnit) -> str | None:
        return datetime_or_none(self._drain(unit)["drainedAt"])


class RegisterSerializer(serializers.Serializer):
    id = serializers.RegexField(UNIT_ID_PATTERN, max_length=64, error_messages={"invalid": UNIT_ID_INVALID})
    unitType = serializers.RegexField(NAME_PATTERN, max_length=64, source="unit_type")
    unitName = serializers.CharField(max_length=255, source="unit_name")
    capacity = serializers.IntegerField(min_value=1, max_value=1000)
    endpoint = EndpointField(max_length=500, required=False, allow_blank=True, default="")
    metadata = serializers.DictField(required=False, default=dict, validators=[check_metadata])
    instanceId = serializers.RegexField(
        NAME_PATTERN,
        max_length=64,
        required=False,
        source="instance_id",
        help_text="A random id the registering process makes at its start and sends on every heartbeat "
        "and claim. While another instance registered as this unit is live (it heartbeated within "
        "UNIT_HEARTBEAT_TIMEOUT and the unit is not OFFLINE), the register is refused with 409 "
        "`unit_in_use`. Without it, nothing is checked.",
    )
    replace = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Take the unit over from a live instance at once (its leases fail over, its token dies).",
    )


class RegisteredSerializer(UnitSerializer):
    token = serializers.CharField(help_text="The unit's own bearer token. Shown once; store it.")
    heartbeatIntervalSeconds = serializers.FloatField()
    heartbeatTimeoutSeconds = serializers.FloatField()
    clearedDrainAt = serializers.DateTimeField(
        allow_null=True,
        help_text="This registration ended the unit's own drain (from its last shutdown), begun at this "
        "time. Null when there was none; an operator's drain is kept (see drainedBy).",
    )

    class Meta(UnitSerializer.Meta):
        fields = [
            *UnitSerializer.Meta.fields,
            "token",
            "heartbeatIntervalSeconds",
            "heartbeatTimeoutSeconds",
            "clearedDrainAt",
        ]
        read_only_fields = fields


class ClaimSerializer(serializers.Serializer):
    max = serializers.IntegerField(min_value=1, max_value=100, default=1)
    instanceId = serializers.RegexField(
        NAME_PATTERN,
        max_length=64,
        required=False,
        source="instance_id",
        help_text="As on heartbeat: refused with 409 `unit_replaced` once another instance has registered.",
    )
    waitSeconds = serializers.FloatField(
        min_value=0,
        max_value=30,
        default=0,
        source="wait_seconds",
        help_text="Long poll: when nothing is claimable, hold the request up to this many seconds until a "
        "task of the unit's type is (then claim it, with every rule of the claim), else reply with no "
        "items. 0 (the default): reply at once, as a plain claim. The hub may wait less (CLAIM_WAIT_MAX); "
        "the reply's `waitSeconds` says how long it did.",
    )


class ClaimedTaskSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    taskType = serializers.CharField(source="task_type")
    priority = serializers.IntegerField()
    config = serializers.JSONField()
    attempt = serializers.IntegerField()
    timeoutSeconds = serializers.IntegerField(source="timeout_seconds", allow_null=True)
    traceparent = serializers.CharField(
        allow_null=True,
        help_text="The task's W3C trace context (with the hub's OpenTelemetry tracing on: its claim span's); "
        "send it back as the `traceparent` header of this attempt's reports. Null without one.",
    )


def claimed_tasks(tasks: list[Any]) -> list[dict[str, Any]]:
    """`ClaimedTaskSerializer(tasks, many=True).data` as plain dicts (the same JSON; a test compares
    the two): up to 100 tasks per claim, and DRF's per-field machinery cost more than the claim's
    SQL. Each task's `traceparent` is the one it is handed with (taskhub.base.tracing: the claim's
    span is recorded there while tracing)."""
    return [
        {
            "id": int(t.id),
            "name": str(t.name),
            "taskType": str(t.task_type),
            "priority": int(t.priority),
            "config": t.config,
            "attempt": int(t.attempt),
            "timeoutSeconds": None if t.timeout_seconds is None else int(t.timeout_seconds),
            "traceparent": tracing.claim_traceparent(
                t.traceparent,
                task_id=int(t.id),
                task_type=str(t.task_type),
                attempt=int(t.attempt),
                unit_id=t.unit_id,
                claimed_at=t.started_at,
            ),
        }
        for t in tasks
    ]


class ClaimQueueSerializer(serializers.Serializer):
    taskType = serializers.CharField()
    paused = serializers.BooleanField(help_text="The queue is paused: nothing is claimed until it is resumed.")
    heldBy = serializers.ListField(
        child=serializers.ChoiceField(choices=["paused", "maxRunning", "rateLimit", "keyLimits"]),
        help_text="What held the claim back.",
    )
    nextStartAt = serializers.DateTimeField(
        allow_null=True, help_text="When the queue's rate limit next allows a start."
    )
    keyNextStartAt = serializers.DateTimeField(
        allow_null=True,
        help_text="When the soonest concurrency key held back by its rate limit (keyRateLimit) may start again.",
    )
    retryAfterSeconds = serializers.FloatField(
        allow_null=True,
        help_text="Claim again no sooner than this (paused, or the rate limits left nothing to start).",
    )


class ClaimReplySerializer(serializers.Serializer):
    # `items`, as in every other collection of the API (lists, batches); hubs before 0.1 said `tasks`.
    items = ClaimedTaskSerializer(many=True)
    unitStatus = serializers.ChoiceField(choices=UnitStatus.choices)
    queue = ClaimQueueSerializer(
        required=False, help_text="Only when the queue's settings (pause, limits) held this claim back."
    )
    waitSeconds = serializers.FloatField(
        required=False,
        help_text="The wait applied to a long poll (the request's `waitSeconds`, at most CLAIM_WAIT_MAX); "
        "present when one was asked for.",
    )


class UnitUpdateSerializer(PartialUpdate):
    unitName = serializers.CharField(max_length=255, source="unit_name", required=False)
    capacity = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    endpoint = EndpointField(max_length=500, required=False, allow_blank=True)
    metadata = serializers.DictField(required=False, validators=[check_metadata])
    status = serializers.ChoiceField(
        choices=[UnitStatus.MAINTENANCE, UnitStatus.ONLINE],
        required=False,
        help_text="MAINTENANCE drains the unit (it claims nothing, keeps its tasks); ONLINE resumes it.",
    )


class UnitListQuerySerializer(PageQuery):
    status = serializers.ChoiceField(choices=UnitStatus.choices, required=False)
    unitType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False)
