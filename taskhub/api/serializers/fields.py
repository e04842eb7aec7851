"""Field types and bounds shared by the tasks' and the units' bodies."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from rest_framework import serializers

from tasks.bounds import MAX_CONFIG_BYTES, NAME_PATTERN, json_size

MAX_RESULT_BYTES = 262_144
MAX_LOG_MESSAGE = 10_000
MAX_LOG_BATCH = 500
# A unit id is a URL path segment (/execution-units/{id}/heartbeat): "." and ".." (any id of dots
# only) are normalised away by URL handling and would leave the unit unreachable.
UNIT_ID_PATTERN = r"^(?!\.+$)[A-Za-z0-9_.:\-]+$"
UNIT_ID_INVALID = (
    "must be letters, digits and _ . : - only, and not only dots "
    "('.' and '..' are path segments that URLs normalise away)"
)
MAX_ID = 2**63 - 1
MAX_ATTEMPT = 2**31 - 1
# A date-time the API takes is written with a year from 1970 to 2199 (the schema's `pattern`, and
# the check below: one regular expression). Whatever its offset, it is then a time every backend
# can store and compare (MySQL DATETIME starts at year 1000, Python's datetime ends at 9999).
DATETIME_PATTERN = r"^(19[7-9][0-9]|2[01][0-9][0-9])-"
DATETIME_INVALID = "must be a date-time with a year from 1970 to 2199 (YYYY-MM-DDThh:mm:ss, ISO 8601)"
_DATETIME_YEARS = re.compile(DATETIME_PATTERN)


class BoundedDateTimeField(serializers.DateTimeField):
    """A date-time whose text starts with a year from 1970 to 2199 (see DATETIME_PATTERN)."""

    def to_internal_value(self, value: Any) -> datetime:
        if isinstance(value, str) and not _DATETIME_YEARS.match(value):
            raise serializers.ValidationError(DATETIME_INVALID)
        return super().to_internal_value(value)


__all__ = ["MAX_CONFIG_BYTES", "NAME_PATTERN"]  # re-exported: the serializers' names for the bounds


def check_json_size(value: Any, limit: int, what: str) -> Any:
    if json_size(value) > limit:
        raise serializers.ValidationError(f"{what} must be at most {limit} bytes as JSON")
    return value


MAX_METADATA_BYTES = 16_384


def check_metadata(value: dict[str, Any]) -> None:
    """A unit's metadata: at most MAX_METADATA_BYTES as JSON (register, heartbeat, edit)."""
    if json_size(value) > MAX_METADATA_BYTES:
        raise serializers.ValidationError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")


class PartialUpdate(serializers.Serializer):
    """A PATCH body (tasks, units, queues, schedules): every field optional, at least one sent, and
    none the resource does not have (a 400 naming it). The schema says the same (schema.py:
    minProperties 1, additionalProperties false)."""

    # A field clients may expect to PATCH, and where it is changed instead.
    ELSEWHERE: dict[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("partial", True)
        super().__init__(*args, **kwargs)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(self.initial_data) - set(self.fields) if isinstance(self.initial_data, dict) else set()
        if unknown:
            field = sorted(unknown, key=lambda name: (name not in self.ELSEWHERE, name))[0]
            raise serializers.ValidationError({field: [self.ELSEWHERE.get(field, "Unknown or read-only field")]})
        if not attrs:
            raise serializers.ValidationError({"body": ["Nothing to update"]})
        return attrs


_DATETIME = serializers.DateTimeField()


def datetime_or_none(value: datetime | None) -> str | None:
    """A datetime as the API writes it everywhere else (DRF's DateTimeField), or None."""
    return None if value is None else str(_DATETIME.to_representation(value))
