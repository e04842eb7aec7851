from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse

from taskhub.api.errors import json_error

access_log = logging.getLogger("taskhub.access")
Handler = Callable[[HttpRequest], HttpResponse]


class BothModes:
    """A middleware that runs in its caller's mode: sync under WSGI, async under ASGI. A sync-only
    middleware in the chain of an async view makes Django run the rest of the request inside a
    thread of its own, so every waiting long-poll claim would hold one. Subclasses say what to do
    before the view (`before`: a response ends the request there) and after it (`after`)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> tuple[HttpResponse | None, Any]:
        return None, None

    def after(self, request: HttpRequest, response: HttpResponse, state: Any) -> HttpResponse:
        return response

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        early, state = self.before(request)
        if early is not None:
            return early
        return self.after(request, self.get_response(request), state)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        early, state = self.before(request)
        if early is not None:
            return early
        return self.after(request, await self.get_response(request), state)


LOOPBACK = ("127.", "::1", "::ffff:127.")


def is_loopback(request: HttpRequest) -> bool:
    return str(request.META.get("REMOTE_ADDR") or "").startswith(LOOPBACK)


class LocalDebugMiddleware(BothModes):
    """Django's technical pages (DEBUG: the 400 of a foreign Host header with the settings and the
    environment, the 404 listing every URL pattern, the 500 traceback) only for callers on this
    machine. For anyone else an error is the API's JSON shape, whatever DEBUG says.

    Outermost: Django turns an exception inside the stack into its response before this sees it,
    so every technical page passes here. It reads REMOTE_ADDR only (never the Host header, which
    raises for a foreign host)."""

    def after(self, request: HttpRequest, response: HttpResponse, state: Any) -> HttpResponse:
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


class BodyLimitMiddleware(BothModes):
    """413 for any body over API_MAX_BODY_BYTES, before a parser sees it.

    DRF's parsers read the raw stream and never consult DATA_UPLOAD_MAX_MEMORY_SIZE, so the limit
    is enforced here for every endpoint, JSON included. The body is read once, bounded, and kept
    on the request (`request.body`) for the parser.
    """

    def before(self, request: HttpRequest) -> tuple[HttpResponse | None, Any]:
        raw_length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            return json_error(400, "bad_request", f"Content-Length header is invalid: {raw_length[:32]!r}"), None
        limit = settings.API_MAX_BODY_BYTES
        too_big = f"Request body exceeds the limit of {limit} bytes"
        if length > limit:
            return json_error(413, "payload_too_large", too_big, {"limitBytes": limit}), None
        if request.method in ("POST", "PUT", "PATCH", "DELETE") and length:
            try:
                request.body  # noqa: B018 - read it now, bounded by DATA_UPLOAD_MAX_MEMORY_SIZE
            except RequestDataTooBig:
                return json_error(413, "payload_too_large", too_big, {"limitBytes": limit}), None
        return None, None


class AccessLogMiddleware(BothModes):
    """One line per request in logs/access.log: method, path, status, duration, who."""

    def before(self, request: HttpRequest) -> tuple[HttpResponse | None, Any]:
        return None, time.perf_counter()

    def after(self, request: HttpRequest, response: HttpResponse, started: Any) -> HttpResponse:
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
