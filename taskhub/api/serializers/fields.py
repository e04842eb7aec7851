"""Field types and bounds shared by the tasks' and the units' bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from rest_framework import serializers

MAX_CONFIG_BYTES = 65_536
MAX_RESULT_BYTES = 262_144
MAX_LOG_MESSAGE = 10_000
MAX_LOG_BATCH = 500
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]+$"
# A unit id is a URL path segment (/execution-units/{id}/heartbeat): "." and ".." (any id of dots
# only) are normalised away by URL handling and would leave the unit unreachable.
UNIT_ID_PATTERN = r"^(?!\.+$)[A-Za-z0-9_.:\-]+$"
UNIT_ID_INVALID = (
    "must be letters, digits and _ . : - only, and not only dots "
    "('.' and '..' are path segments that URLs normalise away)"
)
MAX_ID = 2**63 - 1
MAX_ATTEMPT = 2**31 - 1
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class BoundedDateTimeField(serializers.DateTimeField):
    """A datetime every backend can store and compare (MySQL DATETIME starts at year 1000)."""

    def to_internal_value(self, value: Any) -> datetime:
        parsed = super().to_internal_value(value)
        if not EARLIEST <= parsed < LATEST:
            raise serializers.ValidationError("must be between 1970 and 2200")
        return parsed


def check_json_size(value: Any, limit: int, what: str) -> Any:
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > limit:
        raise serializers.ValidationError(f"{what} must be at most {limit} bytes as JSON")
    return value


MAX_METADATA_BYTES = 16_384


def check_metadata(value: dict[str, Any]) -> None:
    """A unit's metadata: at most MAX_METADATA_BYTES as JSON (register, heartbeat, edit)."""
    if len(json.dumps(value, ensure_ascii=False).encode("utf-8")) > MAX_METADATA_BYTES:
        raise serializers.ValidationError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")


_DATETIME = serializers.DateTimeField()


def datetime_or_none(value: datetime | None) -> str | None:
    """A datetime as the API writes it everywhere else (DRF's DateTimeField), or None."""
    return None if value is None else str(_DATETIME.to_representation(value))
