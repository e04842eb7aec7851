from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from taskhub.api.serializers.fields import MAX_ATTEMPT, MAX_ID, NAME_PATTERN
from units import lifecycle
from units.models import DrainedBy, ExecutionUnit, UnitStatus

MAX_METADATA_BYTES = 16_384
MAX_HEARTBEAT_TASKS = 1000


def _metadata(value: dict[str, Any]) -> None:
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > MAX_METADATA_BYTES:
        raise serializers.ValidationError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")


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
    id = serializers.RegexField(NAME_PATTERN, max_length=64)
    unitType = serializers.RegexField(NAME_PATTERN, max_length=64, source="unit_type")
    unitName = serializers.CharField(max_length=255, source="unit_name")
    capacity = serializers.IntegerField(min_value=1, max_value=1000)
    endpoint = EndpointField(max_length=500, required=False, allow_blank=True, default="")
    metadata = serializers.DictField(required=False, default=dict, validators=[_metadata])
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


class HeartbeatTaskSerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT)
    progress = serializers.IntegerField(min_value=0, max_value=100, required=False)


class HeartbeatSerializer(serializers.Serializer):
    currentLoad = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0, source="current_load")
    metadata = serializers.DictField(required=False, validators=[_metadata])
    tasks = HeartbeatTaskSerializer(  # type: ignore[call-arg]
        many=True,
        required=False,
        max_length=MAX_HEARTBEAT_TASKS,
        help_text="The tasks the unit runs. Leased tasks it does not list are failed over at once.",
    )
    instanceId = serializers.RegexField(
        NAME_PATTERN,
        max_length=64,
        required=False,
        source="instance_id",
        help_text="The instance id sent on register: refused with 409 `unit_replaced` once another "
        "instance has registered as this unit.",
    )
    stopping = serializers.BooleanField(
        required=False,
        default=False,
        help_text="The process is exiting (its last heartbeat): the unit goes OFFLINE, so a new process "
        "may register as it at once.",
    )

    def validate_tasks(self, tasks: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        seen: set[int] = set()
        for task in tasks or []:
            if task["id"] in seen:
                raise serializers.ValidationError(f"lists task {task['id']} more than once")
            seen.add(task["id"])
        return tasks


def _bounds(field: Any) -> tuple[int, int]:
    return field.min_value, field.max_value


_LOAD = HeartbeatSerializer._declared_fields["currentLoad"]
_TASK_FIELDS = HeartbeatTaskSerializer._declared_fields
_ID, _ATTEMPT, _PROGRESS = (_bounds(_TASK_FIELDS[name]) for name in ("id", "attempt", "progress"))
_LOAD_RANGE = _bounds(_LOAD)
# NAME_PATTERN's characters, up to the field's length: anything else (whitespace the serializer would
# trim, say) is left to the serializer.
_INSTANCE = HeartbeatSerializer._declared_fields["instanceId"]
assert isinstance(_INSTANCE, serializers.RegexField)
_INSTANCE_ID = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("+$") + f"{{1,{_INSTANCE.max_length}}}")
_STOPPING = HeartbeatSerializer._declared_fields["stopping"].default

# What plain_heartbeat reads, as the serializers declare it: body key -> validated key, and which
# task keys it requires. Checked at import, so a field added to (or renamed in) a serializer and
# not here stops the hub at start-up instead of being dropped by the fast path.
PLAIN_FIELDS = {
    "currentLoad": "current_load",
    "metadata": "metadata",
    "tasks": "tasks",
    "instanceId": "instance_id",
    "stopping": "stopping",
}
PLAIN_TASK_FIELDS = {"id": "id", "attempt": "attempt", "progress": "progress"}
PLAIN_REQUIRED: dict[type[serializers.Serializer], set[str]] = {
    HeartbeatSerializer: set(),
    HeartbeatTaskSerializer: {"id", "attempt"},
}


def check_plain_heartbeat() -> None:
    problems = []
    for serializer, plain in ((HeartbeatSerializer, PLAIN_FIELDS), (HeartbeatTaskSerializer, PLAIN_TASK_FIELDS)):
        declared = serializer._declared_fields
        named = {name: field.source or name for name, field in declared.items()}
        required = {name for name, field in declared.items() if field.required}
        if named != plain or required != PLAIN_REQUIRED[serializer]:
            problems.append(
                f"{serializer.__name__} declares {named} (required: {sorted(required)}); plain_heartbeat "
                f"reads {plain} (required: {sorted(PLAIN_REQUIRED[serializer])})"
            )
    if problems:
        raise ImproperlyConfigured("the lean heartbeat validator drifted from its serializer: " + "; ".join(problems))


check_plain_heartbeat()


def _int_in(value: Any, bounds: tuple[int, int]) -> bool:
    return type(value) is int and bounds[0] <= value <= bounds[1]


def plain_heartbeat(data: Any) -> dict[str, Any] | None:
    """What `validated(HeartbeatSerializer, data)` returns, for a body that is plainly valid:
    JSON integers within the serializer's own bounds, objects and lists where it says so, no task
    listed twice. None for anything else, which then goes through the serializer (and gets its 400
    naming the field). Every heartbeat of every unit comes through here: the serializer and the
    strict JSON-type walk cost more CPU than the heartbeat's SQL."""
    if type(data) is not dict:
        return None
    load = data.get("currentLoad", _LOAD.default)
    if not _int_in(load, _LOAD_RANGE):
        return None
    body: dict[str, Any] = {"current_load": load}
    if "metadata" in data:
        metadata = data["metadata"]
        if type(metadata) is not dict or any(type(key) is not str for key in metadata):
            return None
        try:
            _metadata(metadata)
        except serializers.ValidationError:
            return None
        body["metadata"] = dict(metadata)
    if "tasks" in data:
        tasks = data["tasks"]
        if type(tasks) is not list or len(tasks) > MAX_HEARTBEAT_TASKS:
            return None
        seen: set[int] = set()
        clean: list[dict[str, Any]] = []
        for task in tasks:
            if type(task) is not dict:
                return None
            task_id, attempt = task.get("id"), task.get("attempt")
            if not _int_in(task_id, _ID) or not _int_in(attempt, _ATTEMPT) or task_id in seen:
                return None
            assert isinstance(task_id, int)
            seen.add(task_id)
            item = {"id": task_id, "attempt": attempt}
            if "progress" in task:
                if not _int_in(task["progress"], _PROGRESS):
                    return None
                item["progress"] = task["progress"]
            clean.append(item)
        body["tasks"] = clean
    if "instanceId" in data:
        instance = data["instanceId"]
        if type(instance) is not str or not _INSTANCE_ID.fullmatch(instance):
            return None
        body["instance_id"] = instance
    stopping = data.get("stopping", _STOPPING)
    if type(stopping) is not bool:
        return None
    body["stopping"] = stopping
    return body


class CommandSerializer(serializers.Serializer):
    taskId = serializers.IntegerField()
    attempt = serializers.IntegerField()
    command = serializers.ChoiceField(choices=["cancel", "pause", "abort"])
    reason = serializers.CharField()


class HeartbeatReplySerializer(serializers.Serializer):
    unitId = serializers.CharField()
    status = serializers.ChoiceField(choices=UnitStatus.choices)
    heartbeatIntervalSeconds = serializers.FloatField()
    heartbeatTimeoutSeconds = serializers.FloatField()
    runningTasks = serializers.IntegerField()
    freeCapacity = serializers.IntegerField()
    commands = CommandSerializer(many=True)
    failedOver = serializers.ListField(child=serializers.IntegerField())
    serverTime = serializers.DateTimeField()
    drainedBy = serializers.ChoiceField(choices=DrainedBy.choices, allow_null=True, help_text="As on the unit.")
    drainedByActor = serializers.CharField(allow_null=True)
    drainedAt = serializers.DateTimeField(allow_null=True)


_DATETIME = serializers.DateTimeField()


def datetime_or_none(value: datetime | None) -> str | None:
    """A datetime as the API writes it everywhere else (DRF's DateTimeField), or None."""
    return None if value is None else str(_DATETIME.to_representation(value))


def heartbeat_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """`HeartbeatReplySerializer(reply).data` as a plain dict (the same JSON; a test compares the
    two), without building a serializer per heartbeat."""
    return {
        **reply,
        "status": str(reply["status"]),
        "heartbeatIntervalSeconds": float(reply["heartbeatIntervalSeconds"]),
        "heartbeatTimeoutSeconds": float(reply["heartbeatTimeoutSeconds"]),
        "commands": [
            {"taskId": c["taskId"], "attempt": c["attempt"], "command": str(c["command"]), "reason": c["reason"]}
            for c in reply["commands"]
        ],
        "serverTime": _DATETIME.to_representation(reply["serverTime"]),
        "drainedAt": datetime_or_none(reply["drainedAt"]),
    }


class ClaimSerializer(serializers.Serializer):
    max = serializers.IntegerField(min_value=1, max_value=100, default=1)
    instanceId = serializers.RegexField(
        NAME_PATTERN,
        max_length=64,
        required=False,
        source="instance_id",
        help_text="As on heartbeat: refused with 409 `unit_replaced` once another instance has registered.",
    )


class ClaimedTaskSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    taskType = serializers.CharField(source="task_type")
    priority = serializers.IntegerField()
    config = serializers.JSONField()
    attempt = serializers.IntegerField()
    timeoutSeconds = serializers.IntegerField(source="timeout_seconds", allow_null=True)


def claimed_tasks(tasks: list[Any]) -> list[dict[str, Any]]:
    """`ClaimedTaskSerializer(tasks, many=True).data` as plain dicts (the same JSON; a test compares
    the two): up to 100 tasks per claim, and DRF's per-field machinery cost more than the claim's
    SQL."""
    return [
        {
            "id": int(t.id),
            "name": str(t.name),
            "taskType": str(t.task_type),
            "priority": int(t.priority),
            "config": t.config,
            "attempt": int(t.attempt),
            "timeoutSeconds": None if t.timeout_seconds is None else int(t.timeout_seconds),
        }
        for t in tasks
    ]


class ClaimReplySerializer(serializers.Serializer):
    # `items`, as in every other collection of the API (lists, batches); hubs before 0.1 said `tasks`.
    items = ClaimedTaskSerializer(many=True)
    unitStatus = serializers.ChoiceField(choices=UnitStatus.choices)


class UnitUpdateSerializer(serializers.Serializer):
    unitName = serializers.CharField(max_length=255, source="unit_name", required=False)
    capacity = serializers.IntegerField(min_value=1, max_value=1000, required=False)
    endpoint = EndpointField(max_length=500, required=False, allow_blank=True)
    metadata = serializers.DictField(required=False, validators=[_metadata])
    status = serializers.ChoiceField(
        choices=[UnitStatus.MAINTENANCE, UnitStatus.ONLINE],
        required=False,
        help_text="MAINTENANCE drains the unit (it claims nothing, keeps its tasks); ONLINE resumes it.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            raise serializers.ValidationError({sorted(unknown)[0]: ["Unknown or read-only field"]})
        if not attrs:
            raise serializers.ValidationError({"body": ["Nothing to update"]})
        return attrs


class UnitListQuerySerializer(serializers.Serializer):
    page = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_ID, default=20)
    status = serializers.ChoiceField(choices=UnitStatus.choices, required=False)
    unitType = serializers.RegexField(NAME_PATTERN, max_length=64, required=False)

    def validate_limit(self, value: int) -> int:
        return min(value, settings.API_PAGE_SIZE_MAX)
