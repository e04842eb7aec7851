"""Helpers shared by the API views: input parsing and the caller."""

from __future__ import annotations

from typing import Any, TypeVar

from rest_framework import serializers
from rest_framework.request import Request

from taskhub.api.principals import Principal

T = TypeVar("T", bound=serializers.Serializer)


def principal_of(request: Request) -> Principal:
    principal = request.user
    assert isinstance(principal, Principal)  # guaranteed by HasScope
    return principal


def validated(serializer_class: type[T], data: Any, **kwargs: Any) -> dict[str, Any]:
    """Validate `data` or raise (400 naming the field). A non-object body is refused as such."""
    if not isinstance(data, dict) and not hasattr(data, "getlist"):
        raise serializers.ValidationError({"body": [f"Expected a JSON object, got {type(data).__name__}"]})
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def query_params(request: Request) -> dict[str, Any]:
    """Query string as a plain dict (last value wins), for a query serializer."""
    return {key: request.query_params.get(key) for key in request.query_params}
