"""`POST /execution-units/{id}/claim` as an async view: the long poll.

The claim itself is the DRF action (taskhub.api.views.units: authentication, permissions,
throttling, validation, the claim of units.claim), run at once in the web process's thread pool.
When it found nothing and the body asked for `waitSeconds`, this view waits on the doorbell for the
unit's task type (or the unit itself), holding no thread and no database connection, and claims
again when it rings; the reply is the claim's (`items`, `unitStatus`), empty when the wait ends.
A client that disconnects ends the wait (Django cancels the view): nothing is claimed for it.
While a claim waits, its unit is heard (units.idle.HeldClaims: stamped alive every
UNIT_HEARTBEAT_INTERVAL if it holds no task), so an idle unit need not heartbeat meanwhile.

The first claim is skipped when this process knows it would find nothing: the doorbell's probe of
the unit's type (every RECHECK_SECONDS while units wait on it) found nothing claimable a moment
ago, the queue has no settings, and no ring of the type came since (`Waiters.nothing_claimable`);
the unit, as the request's authentication read it, is ONLINE. The request then costs its
authentication and throttle only, and waits; a ring (or the probe finding work) runs the claim.

A process that begins to drain (taskhub.base.serving) ends the waits it holds at once, as if each
had run out, and a claim reaching it meanwhile does not wait.

The claim after a ring is the dispatch path (a task created -> a waiting unit holds it): it runs on
the kept-connection threads (`syncpool.run_kept`), not reconnecting to the database for each claim
nor queueing behind the ordinary requests of the main pool.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from taskhub.api.serializers.units import claimed_tasks
from taskhub.api.views.units import UnitViewSet
from taskhub.base import doorbell, serving
from taskhub.base.syncpool import run_kept, run_sync
from units import idle, longpoll
from units.states import CLAIMING

_claim_now = UnitViewSet.as_view({"post": "claim"})


async def _probe(task_type: str) -> Any:
    return await run_sync(longpoll.probe, task_type)


WAITERS = doorbell.Waiters(_probe)


def _end_waits_on_drain() -> None:
    """A draining process ends the long polls it holds at once (each replies as its wait would at
    the end: nothing claimed), so their units claim again from a process that serves, where they
    are stamped alive, instead of sitting out the drain here unheard (units.idle); and the drain
    does not wait for them."""
    loop = WAITERS.loop
    if loop is not None and not loop.is_closed():
        loop.call_soon_threadsafe(WAITERS.wake_everyone)


serving.on_drain(_end_waits_on_drain)


def _nothing_claimable(task_type: str) -> bool:
    """For the claim action (in its thread): may it skip the claim and wait at once."""
    return WAITERS.nothing_claimable(doorbell.type_key(task_type))


async def _stamp(unit_ids: list[str]) -> int:
    return await run_sync(idle.stamp_waiting, unit_ids)  # when idle.stamping(): HeldClaims.flush asks


HELD = idle.HeldClaims(_stamp)


def _claim_rendered(request: HttpRequest, pk: str) -> HttpResponse:
    response = _claim_now(request, pk=pk)
    response.render()  # in this thread: DRF's renderers are sync
    return response


@csrf_exempt
async def claim(request: HttpRequest, pk: str) -> HttpResponse:
    loop = asyncio.get_running_loop()
    started = loop.time()
    request.taskhub_nothing_claimable = _nothing_claimable  # type: ignore[attr-defined]
    response = await run_sync(_claim_rendered, request, pk)
    wait: longpoll.ClaimWait | None = getattr(request, "taskhub_claim_wait", None)
    if wait is None or not serving.serving():
        return response
    HELD.hold(wait.unit_id)
    try:
        return await _wait(wait, json.loads(response.content)["unitStatus"], started)
    finally:
        HELD.release(wait.unit_id)


async def _wait(wait: longpoll.ClaimWait, unit_status: str, started: float) -> HttpResponse:
    loop = asyncio.get_running_loop()
    deadline = started + wait.seconds
    future = WAITERS.enqueue(wait.keys)
    if WAITERS.rang_since(wait.keys[0], started):
        future.set_result(None)  # a ring came while the first claim ran: it may have missed that task
    while True:
        if not await WAITERS.wait_on(future, deadline - loop.time()) or not serving.serving():
            break
        future = WAITERS.enqueue(wait.keys)  # before the claim: a ring during it is not lost
        outcome = await run_kept(longpoll.claim_again, wait, now=timezone.now())
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
