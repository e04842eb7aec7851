"""`POST /execution-units/{id}/claim` as an async view: the long poll.

The claim itself is the DRF action (taskhub.api.views.units: authentication, permissions,
throttling, validation, the claim of units.claim), run at once in the web process's thread pool.
When it found nothing and the body asked for `waitSeconds`, this view waits on the doorbell for the
unit's task type (or the unit itself), holding no thread and no database connection, and claims
again when it rings; the reply is the claim's (`items`, `unitStatus`), empty when the wait ends.
A client that disconnects ends the wait (Django cancels the view): nothing is claimed for it.

The claim after a ring is the dispatch path (a task created -> a waiting unit holds it), so it runs
on threads of its own (CLAIM_THREADS per process) that keep their database connection between
claims: under an ASGI server the pool's connections are closed after every call (DB_CONN_MAX_AGE
is 0 there), and a reconnect per woken claim was a good part of the dispatch latency. A connection
idle for longer than PING_AFTER is pinged (and replaced if dead) before it is used.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from taskhub.api.serializers.units import claimed_tasks
from taskhub.api.views.units import UnitViewSet
from taskhub.base import doorbell
from taskhub.base.syncpool import SERVED, run_sync
from tasks.models import Task
from units import longpoll
from units.states import CLAIMING

_claim_now = UnitViewSet.as_view({"post": "claim"})


async def _probe(task_type: str) -> Any:
    return await run_sync(longpoll.probe, task_type)


WAITERS = doorbell.Waiters(_probe)
CLAIM_THREADS = 2
PING_AFTER = 5.0  # seconds a claim thread's connection may sit idle before it is checked
_claimers: ThreadPoolExecutor | None = None
_claimers_lock = threading.Lock()
_last_used = threading.local()


def _claim_again_kept(wait: longpoll.ClaimWait, now: datetime) -> tuple[list[Task], str] | None:
    """`claim_again` on this claim thread's own connection, kept for the next one."""
    idle = time.monotonic() - getattr(_last_used, "at", 0.0)
    if connection.connection is not None and idle > PING_AFTER and not connection.is_usable():
        connection.close()
    try:
        return longpoll.claim_again(wait, now=now)
    except Exception:
        connection.close()  # whatever broke, the next claim starts on a fresh connection
        raise
    finally:
        _last_used.at = time.monotonic()


async def _claim_again(wait: longpoll.ClaimWait) -> tuple[list[Task], str] | None:
    global _claimers
    if not SERVED.get():  # Django's test client, WSGI: as any sync call of an async view
        return await run_sync(longpoll.claim_again, wait, now=timezone.now())
    if _claimers is None:
        with _claimers_lock:
            if _claimers is None:
                _claimers = ThreadPoolExecutor(max_workers=CLAIM_THREADS, thread_name_prefix="taskhub-claim")
    call = functools.partial(contextvars.copy_context().run, _claim_again_kept, wait, timezone.now())
    return await asyncio.get_running_loop().run_in_executor(_claimers, call)


def _claim_rendered(request: HttpRequest, pk: str) -> HttpResponse:
    response = _claim_now(request, pk=pk)
    response.render()  # in this thread: DRF's renderers are sync
    return response


@csrf_exempt
async def claim(request: HttpRequest, pk: str) -> HttpResponse:
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await run_sync(_claim_rendered, request, pk)
    wait: longpoll.ClaimWait | None = getattr(request, "taskhub_claim_wait", None)
    if wait is None:
        return response
    unit_status = json.loads(response.content)["unitStatus"]
    deadline = started + wait.seconds
    future = WAITERS.enqueue(wait.keys)
    if WAITERS.rang_since(wait.keys[0], started):
        future.set_result(None)  # a ring came while the first claim ran: it may have missed that task
    while True:
        if not await WAITERS.wait_on(future, deadline - loop.time()):
            break
        future = WAITERS.enqueue(wait.keys)  # before the claim: a ring during it is not lost
        outcome = await _claim_again(wait)
        if outcome is None:
            break
        tasks, unit_status = outcome
        if tasks or unit_status not in CLAIMING:
            future.cancel()
            return _reply(claimed_tasks(tasks), unit_status, wait)
    future.cancel()
    return _reply([], unit_status, wait)


def _reply(items: list[dict[str, Any]], unit_status: str, wait: longpoll.ClaimWait) -> JsonResponse:
    return JsonResponse({"items": items, "unitStatus": str(unit_status), "waitSeconds": wait.seconds})
