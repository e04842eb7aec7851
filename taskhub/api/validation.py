"""Input validation shared by the API views: a body or a query string through its serializer,
with the JSON types the OpenAPI schema states."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from rest_framework import serializers
from rest_framework.request import Request

T = TypeVar("T", bound=serializers.Serializer)


class QueryParams(dict[str, Any]):
    """A query string as a dict: every value is text, so JSON types are not checked on it."""


def validated(serializer_class: type[T], data: Any, **kwargs: Any) -> dict[str, Any]:
    """Validate `data` or raise (400 naming the field). A non-object body is refused as such, and
    so is a JSON value of another type than the schema's (DRF would turn 5 into "5", "1" into 1 and
    "yes" into true; the API takes what the OpenAPI schema says, exactly)."""
    if not isinstance(data, dict) and not hasattr(data, "getlist"):
        raise serializers.ValidationError({"body": [f"Expected a JSON object, got {type(data).__name__}"]})
    serializer = serializer_class(data=data, **kwargs)
    if isinstance(data, dict) and not isinstance(data, QueryParams):
        problems = json_type_errors(serializer, data)
        if problems:
            raise serializers.ValidationError(problems)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def query_params(request: Request) -> QueryParams:
    """Query string as a plain dict (last value wins), for a query serializer."""
    return QueryParams({key: request.query_params.get(key) for key in request.query_params})


_JSON_NAMES: list[tuple[type, str]] = [
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (dict, "an object"),
    (list, "an array"),
]


def _json_name(value: Any) -> str:
    return next((name for kind, name in _JSON_NAMES if isinstance(value, kind)), type(value).__name__)


def _expected(field: serializers.Field) -> tuple[type, ...] | None:
    """The JSON types a field takes, or None for any. Booleans are not integers here."""
    if isinstance(field, serializers.BooleanField):
        return (bool,)
    if isinstance(field, serializers.IntegerField):
        return (int,)
    if isinstance(field, serializers.FloatField | serializers.DecimalField):
        return (int, float)
    if isinstance(field, serializers.JSONField):
        return None
    if isinstance(field, serializers.DictField | serializers.Serializer):
        return (dict,)
    if isinstance(field, serializers.ListField | serializers.ListSerializer):
        return (list,)
    if isinstance(field, serializers.ChoiceField):
        return (str,) if all(isinstance(choice, str) for choice in field.choices) else None
    if isinstance(field, serializers.CharField | serializers.DateTimeField | serializers.DateField):
        return (str,)
    return None


def json_type_errors(serializer: serializers.Serializer, data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{field path: [message]} for every value of the wrong JSON type, nested ones included."""
    errors: dict[str, Any] = {}
    for name, field in serializer.fields.items():
        if field.read_only or name not in data:
            continue
        errors |= _value_errors(field, data[name], f"{prefix}{name}")
    return errors


def _value_errors(field: serializers.Field, value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}  # allow_null is the field's own rule
    expected = _expected(field)
    if expected == (int,) and isinstance(value, float) and value.is_integer():
        return {}  # 5.0 is an integer to JSON Schema, and to DRF
    if expected is not None and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
        wanted = "a number" if float in expected else dict(_JSON_NAMES)[expected[0]]
        return {path: [f"Expected {wanted}, got {_json_name(value)}"]}
    errors: dict[str, Any] = {}
    child = getattr(field, "child", None)
    if isinstance(field, serializers.ListSerializer | serializers.ListField) and child is not None:
        for index, item in enumerate(value):
            if item is None and isinstance(child, serializers.Serializer):
                # DRF hands a list's allow_null down to its items; the schema's items are objects.
                errors[f"{path}[{index}]"] = ["Expected an object, got null"]
                continue
            errors |= _value_errors(child, item, f"{path}[{index}]")
    elif (
        isinstance(field, serializers.DictField) and child is not None and not isinstance(child, serializers.JSONField)
    ):
        for key, item in value.items():
            errors |= _value_errors(child, item, f"{path}.{key}")
    elif isinstance(field, serializers.Serializer):
        errors |= json_type_errors(field, value, f"{path}.")
    return errors
