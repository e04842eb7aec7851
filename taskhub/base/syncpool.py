"""The threads of an ASGI web process that run synchronous code: the sync views (through the
WSGI bridge of taskhub.asgi) and the database calls of async views (`run_sync`).

A fixed pool (`WEB_THREADS`, default 4, as gunicorn's gthread worker had) rather than Django's
thread per request under ASGI: its threads live as long as the process, so their database
connections persist (`DB_CONN_MAX_AGE`) and a node uses at most `WEB_THREADS` connections per web
process, however many requests wait. A request waiting in an async view holds no thread.

`run_kept` is for the reads and claims that follow a doorbell ring (a woken long-poll claim, a held
result read, an event stream's next batch): a second, small pool (KEPT_THREADS per process) whose
threads keep their database connection between calls. Under an ASGI server DB_CONN_MAX_AGE is 0,
so the main pool reconnects for every call, a cost paid on the path from a change to whoever
waits for it. A connection idle longer than PING_AFTER is pinged (and replaced if dead) first.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connections

T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None
_kept: ThreadPoolExecutor | None = None
_kept_lock = threading.Lock()
_kept_used = threading.local()
KEPT_THREADS = 2
PING_AFTER = 5.0  # seconds a kept connection may sit idle before it is checked
# Set by taskhub.asgi for the requests it serves. Elsewhere (Django's test client, WSGI serving an
# async view through async_to_sync) sync code goes back to the caller's thread as Django does it.
SERVED: contextvars.ContextVar[bool] = contextvars.ContextVar("taskhub_served", default=False)


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=settings.WEB_THREADS, thread_name_prefix="taskhub-web")
    return _pool


def _call_then_tidy(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()  # closes only a broken or too-old connection, as after a request


async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in the pool, with this task's context variables; afterwards the
    thread's database connection is kept for the next call (or closed if broken or too old)."""
    if not SERVED.get():
        return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)
    context = contextvars.copy_context()
    call = functools.partial(context.run, _call_then_tidy, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool(), call)


def _call_kept(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    idle = time.monotonic() - getattr(_kept_used, "at", 0.0)
    if idle > PING_AFTER:
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and not conn.is_usable():
                conn.close()
    try:
        return fn(*args, **kwargs)
    except Exception:
        connections.close_all()  # whatever broke, the next call starts on fresh connections
        raise
    finally:
        _kept_used.at = time.monotonic()


async def run_kept(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`run_sync` on the kept-connection pool (see the module's docstring)."""
    global _kept
    if not SERVED.get():
        return await run_sync(fn, *args, **kwargs)
    if _kept is None:
        with _kept_lock:
            if _kept is None:
                _kept = ThreadPoolExecutor(max_workers=KEPT_THREADS, thread_name_prefix="taskhub-kept")
    context = contextvars.copy_context()
    call = functools.partial(context.run, _call_kept, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_kept, call)
