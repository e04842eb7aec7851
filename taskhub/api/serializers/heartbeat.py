"""A unit's heartbeat: its body and reply, and the lean paths every heartbeat of every unit takes
(`plain_heartbeat`, `heartbeat_reply`), which give what the serializers give without their cost."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework import serializers

from taskhub.api.serializers.fields import (
    MAX_ATTEMPT,
    MAX_ID,
    NAME_PATTERN,
    check_metadata,
    datetime_or_none,
)
from units.states import DrainedBy, UnitStatus

MAX_HEARTBEAT_TASKS = 1000
_DATETIME = serializers.DateTimeField()


class HeartbeatTaskSerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    attempt = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPT)
    progress = serializers.IntegerField(min_value=0, max_value=100, required=False)


class HeartbeatSerializer(serializers.Serializer):
    currentLoad = serializers.IntegerField(min_value=0, max_value=1_000_000, default=0, source="current_load")
    metadata = serializers.DictField(required=False, validators=[check_metadata])
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
            check_metadata(metadata)
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
    heartbeatIntervalSeconds = serializers.FloatField(
        help_text="Heartbeat this often (always, while the unit holds tasks)."
    )
    idleHeartbeatIntervalSeconds = serializers.FloatField(
        allow_null=True,
        help_text="Offered to an ONLINE unit holding no task (UNIT_IDLE_HEARTBEAT_INTERVAL; null: none): it may "
        "heartbeat this rarely while it holds nothing and a long-poll claim of it waits (the waiting claim keeps it "
        "alive), and goes back to `heartbeatIntervalSeconds` as soon as a claim hands it a task.",
    )
    heartbeatTimeoutSeconds = serializers.FloatField()
    runningTasks = serializers.IntegerField()
    freeCapacity = serializers.IntegerField()
    commands = CommandSerializer(many=True)
    failedOver = serializers.ListField(child=serializers.IntegerField())
    serverTime = serializers.DateTimeField()
    drainedBy = serializers.ChoiceField(choices=DrainedBy.choices, allow_null=True, help_text="As on the unit.")
    drainedByActor = serializers.CharField(allow_null=True)
    drainedAt = serializers.DateTimeField(allow_null=True)


def heartbeat_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """`HeartbeatReplySerializer(reply).data` as a plain dict (the same JSON; a test compares the
    two), without building a serializer per heartbeat."""
    return {
        **reply,
        "status": str(reply["status"]),
        "heartbeatIntervalSeconds": float(reply["heartbeatIntervalSeconds"]),
        "idleHeartbeatIntervalSeconds": _float_or_none(reply.get("idleHeartbeatIntervalSeconds")),
        "heartbeatTimeoutSeconds": float(reply["heartbeatTimeoutSeconds"]),
        "commands": [
            {"taskId": c["taskId"], "attempt": c["attempt"], "command": str(c["command"]), "reason": c["reason"]}
            for c in reply["commands"]
        ],
        "serverTime": _DATETIME.to_representation(reply["serverTime"]),
        "drainedAt": datetime_or_none(reply["drainedAt"]),
    }


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
