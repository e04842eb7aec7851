"""A schedule's task template: the fields of POST /tasks a fire creates its task with. The one
check of a template, for the API and the console; errors name the field (`template.taskType`)."""

from __future__ import annotations

import json
import re
from typing import Any

from taskhub.base.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]+$")
MAX_CONFIG_BYTES = 65_536
# camelCase (as sent and shown) -> the task's field, and the bounds of POST /tasks.
FIELDS = {
    "name": "name",
    "taskType": "task_type",
    "priority": "priority",
    "config": "config",
    "maxRetries": "max_retries",
    "timeoutSeconds": "timeout_seconds",
}
_INT_BOUNDS = {"priority": (-1000, 1000), "maxRetries": (0, 100), "timeoutSeconds": (1, 7 * 24 * 3600)}


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
    if len(raw["name"]) > 255:
        raise _fail("name", "at most 255 characters")
    if len(raw["taskType"]) > 64 or not NAME_PATTERN.match(raw["taskType"]):
        raise _fail("taskType", "at most 64 of A-Z a-z 0-9 _ . : -")
    for name, (low, high) in _INT_BOUNDS.items():
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(name, f"an integer from {low} to {high}")
    config = raw.get("config", {})
    if not isinstance(config, dict):
        raise _fail("config", "an object")
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise _fail("config", f"at most {MAX_CONFIG_BYTES} bytes")
    return {name: raw[name] for name in FIELDS if name in raw and raw[name] is not None}


def task_fields(template: dict[str, Any]) -> dict[str, Any]:
    """The stored template as the fields of a new task."""
    fields = {FIELDS[name]: value for name, value in template.items()}
    fields.setdefault("priority", 0)
    fields.setdefault("config", {})
    return fields
