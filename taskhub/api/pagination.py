"""Page mode (`page`, `limit`, with total) and cursor mode (keyset on id, no count) for lists."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from django.db.models import Model, QuerySet
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from taskhub.errors import InvalidInput


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int | None:
    if cursor == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "id":
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "is not a cursor this API returned") from None


def paginate(queryset: QuerySet[Any], query: dict[str, Any], render: Callable[[list[Model]], Any]) -> dict[str, Any]:
    limit = query["limit"]
    if "cursor" in query:
        if query.get("ordering", "-id") != "-id":
            raise InvalidInput("ordering", "cursor mode lists by -id only")
        after = decode_cursor(query["cursor"])
        if after is not None:
            queryset = queryset.filter(pk__lt=after)
        rows = list(queryset.order_by("-pk")[: limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "items": render(rows),
            "limit": limit,
            "nextCursor": encode_cursor(rows[-1].pk) if more and rows else None,
        }
    page = query["page"]
    total = queryset.count()
    rows = list(queryset[(page - 1) * limit : page * limit])
    return {
        "items": render(rows),
        "total": total,
        "page": page,
        "limit": limit,
        "totalPages": (total + limit - 1) // limit,
    }


def page_serializer(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The schema of a paginated list of `item` (both modes share it)."""
    attrs = {
        "items": item(many=True),
        "total": serializers.IntegerField(required=False, help_text="Page mode only."),
        "page": serializers.IntegerField(required=False),
        "limit": serializers.IntegerField(),
        "totalPages": serializers.IntegerField(required=False),
        "nextCursor": serializers.CharField(required=False, allow_null=True, help_text="Cursor mode only."),
    }
    page = type(name, (serializers.Serializer,), attrs)
    # A list action answers with one page object; without this the schema would say "array of pages".
    return extend_schema_serializer(many=False)(page)
