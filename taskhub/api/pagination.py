"""Page mode (`page`, `limit`, with total) and cursor mode (keyset on id, no count) for lists."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db.models import Model, QuerySet
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from taskhub.base.errors import InvalidInput


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
    offset = (page - 1) * limit
    rows = list(queryset[offset : offset + limit])
    total, exact = count_capped(queryset, settings.API_LIST_COUNT_CAP, offset=offset, rows=len(rows), limit=limit)
    return {
        "items": render(rows),
        "total": total,
        "totalRelation": "eq" if exact else "gte",
        "page": page,
        "limit": limit,
        "totalPages": (total + limit - 1) // limit,
    }


def count_capped(queryset: QuerySet[Any], cap: int, *, offset: int, rows: int, limit: int) -> tuple[int, bool]:
    """(total, exact): the number of rows `queryset` matches, counting at most `cap` + 1 of them
    (`SELECT COUNT(*) FROM (SELECT id ... LIMIT cap + 1)`), so a count costs at most `cap` index
    entries however many rows match; above `cap` the total is a lower bound, as Elasticsearch's
    `track_total_hits` answers `relation: "gte"`. A page that ends the list (shorter than `limit`)
    already tells the exact total, and no count runs."""
    if rows < limit and (rows or offset == 0):
        return offset + rows, True
    counted = queryset.order_by()[: cap + 1].count()
    if counted <= cap:
        return counted, True
    # A deep page that read rows past the cap: the total is at least what it reached.
    return max(cap, offset + rows) if rows else cap, False


def page_serializer(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The schema of a paginated list of `item` (both modes share it)."""
    attrs = {
        "items": item(many=True),
        "total": serializers.IntegerField(
            required=False,
            help_text="Page mode only. The number of matching rows, counted up to API_LIST_COUNT_CAP (default "
            "10,000): with `totalRelation` `eq` it is exact; with `gte` at least this many match (the count stopped "
            "at the cap, as Elasticsearch's `track_total_hits`). Pages past it still work.",
        ),
        "totalRelation": serializers.ChoiceField(
            choices=["eq", "gte"],
            required=False,
            help_text="Page mode only. `eq`: `total` is exact; `gte`: `total` is a lower bound.",
        ),
        "page": serializers.IntegerField(required=False),
        "limit": serializers.IntegerField(),
        "totalPages": serializers.IntegerField(
            required=False, help_text="Page mode only. From `total`: a lower bound when `totalRelation` is `gte`."
        ),
        "nextCursor": serializers.CharField(required=False, allow_null=True, help_text="Cursor mode only."),
        "searchWindow": serializers.IntegerField(
            required=False,
            help_text="Present only when a name search was cut: it looked at the newest this-many rows matching the "
            "other filters, and older rows were not searched (API_SEARCH_WINDOW).",
        ),
    }
    page = type(name, (serializers.Serializer,), attrs)
    # A list action answers with one page object; without this the schema would say "array of pages".
    return extend_schema_serializer(many=False)(page)
