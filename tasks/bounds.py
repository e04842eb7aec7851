"""The bounds of the fields a client sets on a task: one place for the API's serializers (and so
the schema), the check of a schedule's task template, and the queues' defaults."""

from __future__ import annotations

import json
from typing import Any

NAME_LENGTH = 255
TASK_TYPE_LENGTH = 64
# Task types, unit types, instance ids: what a URL, a metric label and a log line carry as is.
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
PRIORITY = (-1000, 1000)
MAX_RETRIES = (0, 100)
TIMEOUT_SECONDS = (1, 7 * 24 * 3600)
MAX_CONFIG_BYTES = 65_536


def json_size(value: Any) -> int:
    """Bytes of `value` as JSON (UTF-8), the measure of every size bound on JSON fields."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
