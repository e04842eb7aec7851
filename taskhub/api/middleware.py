from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from taskhub.api.errors import json_error

access_log = logging.getLogger("taskhub.access")
Handler = Callable[[HttpRequest], HttpResponse]


class BodyLimitMiddleware:
    """413 for any body over API_MAX_BODY_BYTES, before a parser sees it.

    DRF's parsers read the raw stream and never consult DATA_UPLOAD_MAX_MEMORY_SIZE, so the limit
    is enforced here for every endpoint, JSON included. The body is read once, bounded, and kept
    on the request (`request.body`) for the parser.
    """

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        raw_length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            return json_error(400, "bad_request", f"Content-Length header is invalid: {raw_length[:32]!r}")
        limit = settings.API_MAX_BODY_BYTES
        if length > limit:
            return json_error(
                413, "payload_too_large", f"Request body exceeds the limit of {limit} bytes", {"limitBytes": limit}
            )
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and length:
            try:
                request.body  # noqa: B018 - read it now, bounded by DATA_UPLOAD_MAX_MEMORY_SIZE
            except RequestDataTooBig:
                return json_error(
                    413, "payload_too_large", f"Request body exceeds the limit of {limit} bytes", {"limitBytes": limit}
                )
        return self.get_response(request)


class AccessLogMiddleware:
    """One line per request in logs/access.log: method, path, status, duration, who."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        duration_ms = (time.perf_counter() - started) * 1000
        who = _who(request)
        access_log.info(
            "%s %s %s %.1fms %s",
            request.method,
            request.get_full_path()[:500],
            response.status_code,
            duration_ms,
            who,
            extra={
                "method": request.method,
                "path": request.path[:500],
                "status": response.status_code,
                "duration_ms": round(duration_ms, 2),
                "who": who,
                "remote_addr": request.META.get("REMOTE_ADDR", ""),
            },
        )
        return response


def _who(request: HttpRequest) -> str:
    # DRF sets the principal on the Django request it wraps (request._request.user is not set),
    # so views record it here via `taskhub_principal`.
    principal = getattr(request, "taskhub_principal", None)
    if principal is not None:
        return str(principal.actor.label)
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.get_username()}"
    return "anonymous"
