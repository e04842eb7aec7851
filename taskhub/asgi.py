"""The ASGI application: what gunicorn's uvicorn worker (taskhub/gunicorn.conf.py) and `make run`
serve.

Django's ASGI handler, with a small router in front: a request whose view is a coroutine function
(the long-poll claim, the health checks, any async view) goes to Django's ASGI handler and waits in
the event loop, holding no thread; every other request (the sync DRF views, the admin) goes to
Django's WSGI handler in the fixed thread pool of taskhub.base.syncpool, as gunicorn's gthread
worker served it: persistent threads, so persistent database connections, and the same
middleware. Request bodies are read in the event loop first, so a slow client holds a coroutine,
never a thread.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import Any

import django
from asgiref.sync import iscoroutinefunction

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskhub.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.urls import Resolver404, get_resolver  # noqa: E402

from taskhub.api.middleware import in_loop_path  # noqa: E402
from taskhub.base.syncpool import SERVED, pool  # noqa: E402

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsyncViewHandler(ASGIHandler):
    """Django's ASGI handler without its per-request ThreadSensitiveContext: that context gives
    each request a thread of its own (for the sync request signals and middleware) which lives
    until the response is sent, i.e. one idle thread per waiting request. Here that sync code runs
    in asgiref's one shared thread per process instead (it is short: the request signals; Django's
    own middleware run in the loop itself, taskhub.api.middleware.InLoop)."""

    def load_middleware(self, is_async: bool = False) -> None:
        # WhiteNoise is sync-only (Django would run each async request in a thread of its own
        # around it) and serves static files, which are never async views: left out here.
        # Django's own sync middleware run in the loop instead of two thread hops each
        # (taskhub.api.middleware.InLoop).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = [in_loop_path(name) for name in full if not name.startswith("whitenoise.")]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}")
        await self.handle(scope, receive, send)  # type: ignore[arg-type]


@lru_cache(maxsize=4096)
def _is_async_path(path: str) -> bool:
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return False
    return iscoroutinefunction(match.func)


def _held(scope: Scope) -> bool:
    """A request the server may hold open while it streams or waits (GET /api/v1/events, a task
    read with `waitFor`): its view is sync (DRF: authentication, one read) but its body is an
    async iterator under ASGI (taskhub.api.streaming), so it goes to the ASGI handler too. Through
    the thread pool its body would be read whole, in a thread, before the first byte is sent."""
    return scope["path"].rstrip("/").endswith("/api/v1/events") or b"waitFor=" in scope.get("query_string", b"")


class _Payload(Exception):
    """The request body is larger than the server buffers before Django sees it."""


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin1"),
        "PATH_INFO": scope["path"].encode().decode("latin1"),
        "QUERY_STRING": scope["query_string"].decode("latin1"),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "REMOTE_ADDR": client[0] if client else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin1").upper().replace("-", "_")
        key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else f"HTTP_{name}"
        value = raw_value.decode("latin1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class Router:
    def __init__(self) -> None:
        self.async_app = AsyncViewHandler()
        self.wsgi_app = WSGIHandler()
        # Bodies past this are refused before any thread is used; Django's own limits (and the
        # API's 413) apply to everything below it.
        self.max_body = max(int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0) * 4, 16 * 1024 * 1024)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        SERVED.set(True)
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] != "http":
            return  # no websockets
        elif _is_async_path(scope["path"]) or _held(scope):
            await self.async_app(scope, receive, send)
        else:
            await self._wsgi(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _Payload
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _wsgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await self._read_body(receive)
        except _Payload:
            await _plain(send, 413, b'{"code":"payload_too_large","message":"Request body too large"}')
            return
        if body is None:
            return  # the client went away before its request was complete
        environ = _environ(scope, body)
        status, headers, content = await asyncio.get_running_loop().run_in_executor(pool(), self._call, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _call(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started[:] = [status, headers]

        result = self.wsgi_app(environ, start_response)  # type: ignore[arg-type]
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()  # request_finished: the thread's connection is kept or closed as after any request
        status, headers = started
        encoded = [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in headers]
        return int(status.split(" ", 1)[0]), encoded, content


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


application = Router()
