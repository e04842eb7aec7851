"""The threads of an ASGI web process that run synchronous code: the sync views (through the
WSGI bridge of taskhub.asgi) and the database calls of async views (`run_sync`).

A fixed pool (`WEB_THREADS`, default 4, as gunicorn's gthread worker had) rather than Django's
thread per request under ASGI: its threads live as long as the process, so their database
connections persist (`DB_CONN_MAX_AGE`, as `DB_POOL_CONN_MAX_AGE`: under an ASGI server Django's
own CONN_MAX_AGE is 0, for the threads Django would start itself) and a node uses at most
`WEB_THREADS` connections per web process, however many requests wait. A request waiting in an
async view holds no thread. (Connecting anew for every request was a fifth of an idle fleet's web
CPU: BENCHMARKS.md, "Dispatch".)

`run_kept` is for the reads and claims that follow a doorbell ring (a woken long-poll claim, a held
result read, an event stream's next batch): a second, small pool (KEPT_THREADS per process), tidied
the same way, so the path from a change to whoever waits for it never queues behind the ordinary
requests that fill the main pool.
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
from django.db import close_old_connections
from django.db.backends.signals import connection_created

T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None
_kept: ThreadPoolExecutor | None = None
_kept_lock = threading.Lock()
KEPT_THREADS = 2
# Set by taskhub.asgi for the requests it serves. Elsewhere (Django's test client, WSGI serving an
# async view through async_to_sync) sync code goes back to the caller's thread as Django does it.
SERVED: contextvars.ContextVar[bool] = contextvars.ContextVar("taskhub_served", default=False)


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=settings.WEB_THREADS, thread_name_prefix="taskhub-web")
    return _pool


_pool_thread = threading.local()


def _call_then_tidy(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    _pool_thread.active = True
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()  # closes only a broken or too-old connection, as after a request


def _pool_lifetime(sender: Any, connection: Any, **kwargs: Any) -> None:
    """A connection opened in a pool thread lives DB_POOL_CONN_MAX_AGE: Django set its `close_at`
    from CONN_MAX_AGE (0 under an ASGI server: closed at the end of every request)."""
    if getattr(_pool_thread, "active", False):
        connection.close_at = time.monotonic() + settings.DB_POOL_CONN_MAX_AGE


connection_created.connect(_pool_lifetime, weak=False, dispatch_uid="taskhub.syncpool.lifetime")


async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in the pool, with this task's context variables; afterwards the
    thread's database connection is kept for the next call (or closed if broken or too old)."""
    if not SERVED.get():
        return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)
    context = contextvars.copy_context()
    call = functools.partial(context.run, _call_then_tidy, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool(), call)


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
    call = functools.partial(context.run, _call_then_tidy, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_kept, call)
