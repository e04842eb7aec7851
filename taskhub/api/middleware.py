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


LOOPBACK = ("127.", "::1", "::ffff:127.")


def is_loopback(request: HttpRequest) -> bool:
    return str(request.META.get("REMOTE_ADDR") or "").startswith(LOOPBACK)


class LocalDebugMiddleware:
    """Django's technical pages (DEBUG: the 400 of a foreign Host header with the settings and the
    environment, the 404 listing every URL pattern, the 500 traceback) only for callers on this
    machine. For anyone else an error is the API's JSON shape, whatever DEBUG says.

    Outermost: Django turns an exception inside the stack into its response before this sees it,
    so every technical page passes here. It reads REMOTE_ADDR only (never the Host header, which
    raises for a foreign host)."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if not settings.DEBUG or response.status_code < 400 or is_loopback(request):
            return response
        if str(response.get("Content-Type", "")).startswith("application/json"):
            return response
        status = response.status_code
        code = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        return json_error(status, code.get(status, "server_error" if status >= 500 else "error"), _reason(status))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


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
