"""A schedule's task template: the fields of POST /tasks a fire creates its task with. The one
check of a template, for the API and the console; errors name the field (`template.taskType`)."""

from __future__ import annotations

import re
from typing import Any

from taskhub.base.errors import InvalidInput
from tasks import bounds

NAME_PATTERN = re.compile(bounds.NAME_PATTERN)
# camelCase (as sent and shown) -> the task's field, and the bounds of POST /tasks.
FIELDS = {
    "name": "name",
    "taskType": "task_type",
    "priority": "priority",
    "config": "config",
    "maxRetries": "max_retries",
    "timeoutSeconds": "timeout_seconds",
}
_INT_BOUNDS = {"priority": bounds.PRIORITY, "maxRetries": bounds.MAX_RETRIES, "timeoutSeconds": bounds.TIMEOUT_SECONDS}


def _fail(name: str, message: str) -> InvalidInput:
    return InvalidInput(f"template.{name}", message)


def check_template(raw: Any) -> dict[str, Any]:
    """The template as stored (camelCase, only known fields), or InvalidInput naming the field."""
    if not isinstance(raw, dict):
        raise InvalidInput("template", "an object with the fields of POST /tasks")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise _fail(unknown[0], "unknown field (a template has: " + ", ".join(FIELDS) + ")")
    for name in ("name", "taskType"):
        value = raw.get(name)
        if not isinstance(value, str) or not value.strip():
            raise _fail(name, "required, a non-empty string")
    if len(raw["name"]) > bounds.NAME_LENGTH:
        raise _fail("name", f"at most {bounds.NAME_LENGTH} characters")
    if len(raw["taskType"]) > bounds.TASK_TYPE_LENGTH or not NAME_PATTERN.match(raw["taskType"]):
        raise _fail("taskType", f"at most {bounds.TASK_TYPE_LENGTH} of A-Z a-z 0-9 _ . : -")
    for name, (low, high) in _INT_BOUNDS.items():
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(name, f"an integer from {low} to {high}")
    config = raw.get("config", {})
    if not isinstance(config, dict):
        raise _fail("config", "an object")
    if bounds.json_size(config) > bounds.MAX_CONFIG_BYTES:
        raise _fail("config", f"at most {bounds.MAX_CONFIG_BYTES} bytes")
    return {name: raw[name] for name in FIELDS if name in raw and raw[name] is not None}


def task_fields(template: dict[str, Any]) -> dict[str, Any]:
    """The stored template as the fields of a new task."""
    fields = {FIELDS[name]: value for name, value in template.items()}
    fields.setdefault("priority", 0)
    fields.setdefault("config", {})
    return fields
