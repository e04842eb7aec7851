"""One JSON error shape everywhere:

    {"statusCode": 400, "code": "validation_error", "message": "priority: ...",
     "details": {"fields": {"priority": ["..."]}}}

`message` always names the first offending field; `details.fields` lists all of them.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, serializers
from rest_framework.response import Response

from taskhub.base.errors import DomainError

logger = logging.getLogger("taskhub.api")


class ErrorSerializer(serializers.Serializer):
    """The error body of every non-2xx response."""

    statusCode = serializers.IntegerField()
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField(required=False)


def error_body(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"statusCode": status, "code": code, "message": message}
    if details:
        body["details"] = details
    return body


def json_error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse(error_body(status, code, message, details), status=status)


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail -> {"entries[0].level": ["..."], ...}."""
    out: dict[str, list[str]] = {}

    def add(name: str, value: Any) -> None:
        for k, v in flatten_errors(value, name).items():
            out.setdefault(k, []).extend(v)

    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):  # ListSerializer errors are keyed by index
                add(f"{prefix}[{key}]", value)
            elif key == "non_field_errors":
                add(prefix or "body", value)
            else:
                add(f"{prefix}.{key}" if prefix else str(key), value)
    elif isinstance(detail, list) and any(isinstance(item, dict | list) for item in detail):
        for index, item in enumerate(detail):
            if item:
                add(f"{prefix}[{index}]", item)
    elif isinstance(detail, list):
        out[prefix or "body"] = [str(item) for item in detail]
    else:
        out[prefix or "body"] = [str(detail)]
    return out


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(error_body(exc.status_code, exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, OperationalError | InterfaceError):
        logger.error("database unavailable: %s", exc)
        return Response(
            error_body(503, "service_unavailable", "Database unavailable, try again"),
            status=503,
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, DatabaseError):
        logger.exception("database error")
        return Response(error_body(503, "service_unavailable", "Database error, try again"), status=503)
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: Django's 500 handler renders it (JSON under /api) and logs it

    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]

    status = exc.status_code
    if isinstance(exc, exceptions.ValidationError):
        fields = flatten_errors(exc.detail)
        first = next(iter(fields.items()))
        message = f"{first[0]}: {first[1][0]}"
        return Response(error_body(400, "validation_error", message, {"fields": fields}), status=400, headers=headers)
    if isinstance(exc, exceptions.ParseError):
        return Response(
            error_body(400, "parse_error", f"body: {exc.detail}", {"fields": {"body": [str(exc.detail)]}}), status=400
        )
    code = {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        406: "not_acceptable",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "throttled",
    }.get(status, exc.default_code if isinstance(exc.default_code, str) else "error")
    message = str(exc.detail) if not isinstance(exc.detail, dict | list) else str(exc.default_detail)
    return Response(error_body(status, code, message), status=status, headers=headers)


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


@csrf_exempt  # the catch-all under /api: a POST to an unknown path is a JSON 404, not a CSRF page
def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return json_error(404, "not_found", f"No route for {request.method} {request.path}")


def handler500(request: HttpRequest) -> JsonResponse:
    return json_error(500, "server_error", "Internal server error; it has been logged")
