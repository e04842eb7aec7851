from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from rest_framework import serializers

from tasks.serializers import MAX_ATTEMPT, MAX_ID, NAME_PATTERN
from units.models import ExecutionUnit, UnitStatus

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
        ]
        read_only_fields = fields

    def get_runningTasks(self, unit: ExecutionUnit) -> int:
        annotated = getattr(unit, "running_tasks", None)
        if annotated is not None:
            return int(annotated)
        return unit.tasks.filter(status="RUNNING").count()


class RegisterSerializer(serializers.Serializer):
    id = serializers.RegexField(NAME_PATTERN, max_length=64)
    unitType = serializers.RegexField(NAME_PATTERN, max_length=64, source="unit_type")
    unitName = serializers.CharField(max_length=255, source="unit_name")
    capacity = serializers.IntegerField(min_value=1, max_value=1000)
    endpoint = EndpointField(max_length=500, required=False, allow_blank=True, default="")
    metadata = serializers.DictField(required=False, default=dict, validators=[_metadata])


class RegisteredSerializer(UnitSerializer):
    token = serializers.CharField(help_text="The unit's own bearer token. Shown once; store it.")
    heartbeatIntervalSeconds = serializers.FloatField()
    heartbeatTimeoutSeconds = serializers.FloatField()

    class Meta(UnitSerializer.Meta):
        fields = [*UnitSerializer.Meta.fields, "token", "heartbeatIntervalSeconds", "heartbeatTimeoutSeconds"]
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


_SERVER_TIME = serializers.DateTimeField()


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
        "serverTime": _SERVER_TIME.to_representation(reply["serverTime"]),
    }


class ClaimSerializer(serializers.Serializer):
    max = serializers.IntegerField(min_value=1, max_value=100, default=1)


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
        from django.conf import settings

        return min(value, settings.API_PAGE_SIZE_MAX)
