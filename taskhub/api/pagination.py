"""Page mode (`page`, `limit`, with total) and cursor mode (keyset on the ordering, no count) for lists."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import DateTimeField, Model, Q, QuerySet
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from taskhub.base.errors import InvalidInput

# A cursor is the position of the last row listed, as text the schema states: `<id>` under an
# id ordering, `<value>.<id>` under another (the ordering's value, a date-time as microseconds
# since 1970). So any cursor the pattern allows is a position, with any ordering: the rows after
# it. An empty cursor starts at the beginning.
CURSOR_PATTERN = r"^-?[0-9]{1,19}(\.[0-9]{1,19})?$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Positions outside these lie before or after every row; clamped so every backend can compare them.
_MAX_INT = 2**63 - 1
_DATETIMES = (datetime(1000, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC))


class PageQuery(serializers.Serializer):
    """`page` and `limit` of a list (tasks, units, schedules): a `limit` above API_PAGE_SIZE_MAX
    is capped, not refused. Subclasses set DEFAULT_LIMIT and add their filters."""

    DEFAULT_LIMIT = 20

    page = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    limit = serializers.IntegerField(
        min_value=1, max_value=2**63 - 1, required=False, help_text="Capped at API_PAGE_SIZE_MAX."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["limit"].default = self.DEFAULT_LIMIT

    def validate_limit(self, value: int) -> int:
        return min(value, settings.API_PAGE_SIZE_MAX)


def encode_cursor(row: Model, field: str) -> str:
    if field in ("id", "pk"):
        return str(row.pk)
    value = getattr(row, field)
    number = (value - _EPOCH) // _MICROSECOND if isinstance(value, datetime) else int(value)
    return f"{number}.{row.pk}"


def decode_cursor(cursor: str) -> tuple[int, int | None] | None:
    """(value, id or None) of a cursor, None for the empty one; a 400 naming `cursor` otherwise."""
    if cursor == "":
        return None
    if not _CURSOR.match(cursor):
        raise InvalidInput("cursor", "is not a cursor: <id> or <value>.<id>, as nextCursor gives")
    value, _, last_id = cursor.partition(".")
    return int(value), int(last_id) if last_id else None


def _position(model: type[Model], field: str, value: int) -> Any:
    if isinstance(model._meta.get_field(field), DateTimeField):
        low, high = _DATETIMES
        micros = max((low - _EPOCH) // _MICROSECOND, min(value, (high - _EPOCH) // _MICROSECOND))
        return _EPOCH + micros * _MICROSECOND
    return max(-_MAX_INT, min(value, _MAX_INT))


def _after(queryset: QuerySet[Any], order: tuple[str, ...], cursor: tuple[int, int | None]) -> QuerySet[Any]:
    """The rows after the cursor's position under `order` (the value's field, then id, one direction)."""
    desc = order[0].startswith("-")
    field = order[0].lstrip("-")
    field = "pk" if field == "id" else field
    value, last_id = cursor
    after = "lt" if desc else "gt"
    if field == "pk":
        # `<v>.<i>` under an id ordering: after row v, or from v on when i lies beyond it.
        beyond = last_id is not None and (last_id > value if desc else last_id < value)
        return queryset.filter(**{f"pk__{after}{'e' if beyond else ''}": _position(queryset.model, "id", value)})
    position = _position(queryset.model, field, value)
    keyset = Q(**{f"{field}__{after}": position})
    if last_id is not None:
        keyset |= Q(**{field: position, f"pk__{after}": max(0, min(last_id, _MAX_INT))})
    return queryset.filter(keyset)


def paginate(
    queryset: QuerySet[Any],
    query: dict[str, Any],
    render: Callable[[list[Model]], Any],
    order: tuple[str, ...] = ("-id",),
) -> dict[str, Any]:
    """A page of `queryset` ordered by `order` (a field, then id in the same direction): page mode,
    or cursor mode when the query has `cursor`."""
    limit = query["limit"]
    queryset = queryset.order_by(*order)
    if "cursor" in query:
        position = decode_cursor(query["cursor"])
        if position is not None:
            queryset = _after(queryset, order, position)
        rows = list(queryset[: limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        field = order[0].lstrip("-")
        return {
            "items": render(rows),
            "limit": limit,
            "nextCursor": encode_cursor(rows[-1], field) if more and rows else None,
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
