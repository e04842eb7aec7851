from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
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


# --- Django's own middleware in the event loop (the async chain of taskhub.asgi) --------------------


class InLoop:
    """Django's MiddlewareMixin in an async chain runs each hook through `sync_to_async`: two thread
    hops per middleware per request (seven of Django's own are in MIDDLEWARE, some twelve hops for
    every long-poll claim, each costing more CPU than the hook). Their hooks do no I/O for these
    requests (headers, cookies, lazy objects), so here they run in the event loop itself. A hook
    that may do I/O says so (`response_needs_thread`: the session middleware about to save a
    session) and that one goes through a thread as before. Used by taskhub.asgi only; the WSGI
    chain keeps Django's classes as they are."""

    get_response: Any

    def response_needs_thread(self, request: HttpRequest) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            response = process_request(request)
        response = response or await self.get_response(request)
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request):
                response = await sync_to_async(process_response, thread_sensitive=True)(request, response)
            else:
                response = process_response(request, response)
        return response


@functools.cache
def _in_loop_classes() -> dict[str, type]:
    from django.contrib.auth.middleware import AuthenticationMiddleware
    from django.contrib.messages.middleware import MessageMiddleware
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.middleware.clickjacking import XFrameOptionsMiddleware
    from django.middleware.common import CommonMiddleware
    from django.middleware.csrf import CsrfViewMiddleware
    from django.middleware.security import SecurityMiddleware

    class InLoopSessionMiddleware(InLoop, SessionMiddleware):
        def response_needs_thread(self, request: HttpRequest) -> bool:
            session = getattr(request, "session", None)
            return bool(settings.SESSION_SAVE_EVERY_REQUEST or (session is not None and session.modified))

    class InLoopCsrfViewMiddleware(InLoop, CsrfViewMiddleware):
        # Django adapts a sync process_view with sync_to_async: one more hop. Without
        # CSRF_USE_SESSIONS (see in_loop_path) it reads the cookie and the in-memory body only.
        async def process_view(self, request: HttpRequest, callback: Any, args: Any, kwargs: Any) -> Any:  # type: ignore[override]
            return super().process_view(request, callback, args, kwargs)

    def make(base: type) -> type:
        return type(f"InLoop{base.__name__}", (InLoop, base), {})

    return {
        "django.middleware.security.SecurityMiddleware": make(SecurityMiddleware),
        "django.contrib.sessions.middleware.SessionMiddleware": InLoopSessionMiddleware,
        "django.middleware.common.CommonMiddleware": make(CommonMiddleware),
        "django.middleware.csrf.CsrfViewMiddleware": InLoopCsrfViewMiddleware,
        "django.contrib.auth.middleware.AuthenticationMiddleware": make(AuthenticationMiddleware),
        "django.contrib.messages.middleware.MessageMiddleware": make(MessageMiddleware),
        "django.middleware.clickjacking.XFrameOptionsMiddleware": make(XFrameOptionsMiddleware),
    }


def __getattr__(name: str) -> type:
    """`taskhub.api.middleware.InLoop<Name>`: what taskhub.asgi puts in MIDDLEWARE for its async
    chain (Django imports middleware by dotted path)."""
    for cls in _in_loop_classes().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(name)


def in_loop_path(path: str) -> str:
    """The dotted path of `path`'s in-loop version, or `path` itself (kept as it is)."""
    if path == "django.middleware.csrf.CsrfViewMiddleware" and settings.CSRF_USE_SESSIONS:
        return path  # its hooks read the session from the database
    cls = _in_loop_classes().get(path)
    return f"{__name__}.{cls.__name__}" if cls is not None else path
