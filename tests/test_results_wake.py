"""Results that come to the client without polling (issue 14): every committed state change rings
the results doorbell (taskhub.base.historybell) for its task, a rolled-back one rings nothing, and a
held `waitFor` read or an event stream reads again on the ring. The real-process tests set the
safety re-check (RESULTS_POLL_INTERVAL) far beyond the wait, so an answer in time can only have
come from a ring sent by another process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import urllib.request
from typing import Any

import pytest
from django.db import transaction

from taskhub.base import doorbell, historybell
from taskhub.base.actors import Actor
from tasks.transitions import verbs
from testkit.hub import PYTHON, ROOT, Hub, call, running_hub
from tests import factories


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_ring_wakes_the_waiters_of_its_tasks_and_of_any_task_only():
    async def scenario() -> tuple[bool, bool, bool, bool, bool]:
        bell = historybell.Bell()
        loop = asyncio.get_running_loop()
        mine = bell._add(historybell.Ticket(frozenset({1, 2}), loop))
        other = bell._add(historybell.Ticket(frozenset({3}), loop))
        anyone = bell._add(historybell.Ticket(None, loop))
        bell.deliver(b"[2,9]")
        first = (mine.rang, other.rang, anyone.rang)
        bell.deliver(b"null")  # too many ids to name: every waiter
        return (*first, other.rang, bell.waiting() == 0)

    assert _run(scenario()) == (True, False, True, True, True)


def test_a_sync_waiter_is_woken_from_another_thread_and_times_out_without_a_ring():
    bell = historybell.Bell()
    bell._thread_listener = lambda: _settled()  # type: ignore[method-assign]  # no transport needed here
    quiet = bell.arm_sync(frozenset({5}))
    assert bell.wait_sync(quiet, 0.05) is False and bell.waiting() == 0
    ticket = bell.arm_sync(frozenset({5}))
    threading.Timer(0.1, bell.deliver, args=(b"[5]",)).start()
    assert bell.wait_sync(ticket, 30) is True


def _settled() -> Any:
    listener = historybell._Listener()
    listener.mark(True)
    return listener


@pytest.mark.django_db(transaction=True)
def test_a_committed_change_rings_after_its_commit_and_a_rolled_back_one_never(monkeypatch):
    rung: list[list[int]] = []
    monkeypatch.setattr(historybell._SENDER, "put", lambda ids: rung.append(list(ids)))
    kept, undone = factories.task(name="kept"), factories.task(name="undone")
    rung.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        verbs.change_status(undone.pk, "CANCELLED", actor=Actor.operator("op"), reason="undone")
        assert rung == []  # not before the commit
        raise RuntimeError("roll back")
    assert rung == []
    with transaction.atomic():
        verbs.change_status(kept.pk, "CANCELLED", actor=Actor.operator("op"), reason="kept")
        assert rung == []
    assert rung == [[kept.pk]]


@pytest.mark.django_db(transaction=True)
def test_a_ring_reaches_a_waiter_through_the_configured_transport(settings, tmp_path):
    """Unix datagram sockets in the embedded default, Redis pub/sub when REDIS_HOST is set: the
    first arm returns once the subscription is confirmed, so the ring that follows is never lost."""
    if not settings.REDIS_URL:
        settings.VAR_DIR = tmp_path
    historybell._transport_instance = None
    bell = historybell.Bell()

    async def scenario() -> bool:
        ticket = await bell.arm(frozenset({424242}))
        await asyncio.get_running_loop().run_in_executor(None, historybell.ring, [424242])
        return await bell.wait(ticket, 30)

    try:
        assert _run(scenario())
        ticket = bell.arm_sync(frozenset({434343}))  # the sync drivers' listener thread
        historybell.ring([434343])
        assert bell.wait_sync(ticket, 30)
    finally:
        historybell._transport_instance = None


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_a_stream_gives_up_a_rolled_back_id_at_the_grace_without_a_ring(client_a, settings):
    """A rolled-back change leaves a missing history id and rings nothing; the stream holding the
    next event behind it wakes when the grace is over (not at the safety re-check, 60 s here)."""
    settings.RESULTS_POLL_INTERVAL = 60
    settings.EVENTS_GAP_GRACE_SECONDS = 0.5
    settings.EVENTS_STREAM_MAX_SECONDS = 4
    settings.EVENTS_HEARTBEAT_SECONDS = 60
    undone = client_a.post("/api/v1/tasks", {"name": "undone", "taskType": "GAP"}).json()
    kept = client_a.post("/api/v1/tasks", {"name": "kept", "taskType": "GAP"}).json()
    after = max(h["id"] for h in client_a.get(f"/api/v1/tasks/{kept['id']}/history").json()["items"])
    with pytest.raises(RuntimeError), transaction.atomic():
        verbs.change_status(undone["id"], "CANCELLED", actor=Actor.operator("op"), reason="undone")
        raise RuntimeError("roll back")
    client_a.put(f"/api/v1/tasks/{kept['id']}/status", {"status": "CANCELLED", "reason": "kept"})
    response = client_a.get(f"/api/v1/events?taskType=GAP&lastEventId={after}")
    text = b"".join(response.streaming_content).decode()
    data = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [(e["taskId"], e["reason"]) for e in data] == [(kept["id"], "kept")]


# --- real processes: runhub on the embedded default, and on MariaDB + Redis --------------------

SLOW_SAFETY_NET = {
    "RESULTS_POLL_INTERVAL": "60",  # far beyond every wait below: only a ring can answer in time
    "EVENTS_HEARTBEAT_SECONDS": "60",
    "EVENTS_STREAM_MAX_SECONDS": "60",
    "EVENTS_GAP_GRACE_SECONDS": "1",
}

CHANGE = """
from taskhub.base.actors import Actor
from tasks.transitions import verbs
verbs.change_status(TASK_ID, "TARGET", actor=Actor.operator("elsewhere"), reason="REASON")
print("changed")
"""


def _change_elsewhere(hub: Hub, task_id: int, target: str, reason: str) -> None:
    """The change made by another process than the hub's (a `manage.py shell`), so only the
    doorbell's transport can tell the hub's web workers about it."""
    script = CHANGE.replace("TASK_ID", str(task_id)).replace("TARGET", target).replace("REASON", reason)
    done = subprocess.run(
        [PYTHON, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=hub.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "changed" in done.stdout, done.stderr


@pytest.mark.slow
def test_a_waiter_and_a_stream_are_woken_by_a_change_in_another_process(hub_backend, tmp_path):
    with running_hub(tmp_path, hub_backend, **SLOW_SAFETY_NET) as hub:
        task = hub.api("POST", "/tasks", {"name": "waited", "taskType": "WAKE", "priority": 1, "config": {}})
        got: dict[str, Any] = {}

        def wait() -> None:
            path = f"/tasks/{task['id']}?waitFor=terminal&waitSeconds=20"
            got["reply"] = call(hub.base, "GET", path, hub.key, timeout=40)
            got["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)  # the read found the task PENDING and waits on its ticket
        assert waiter.is_alive()
        changed_at = time.monotonic()
        _change_elsewhere(hub, task["id"], "CANCELLED", "done elsewhere")
        waiter.join(30)
        status, reply = got["reply"]
        # Answered with the change (a wait that ran out would answer PENDING after 20 s), after it.
        assert status == 200 and reply["status"] == "CANCELLED", reply
        assert got["at"] >= changed_at

        # The stream: its opening line is sent once it is armed; a change made elsewhere after that
        # arrives as an event, and a resumed stream starts exactly after the last id it saw.
        second = hub.api("POST", "/tasks", {"name": "streamed", "taskType": "WAKE", "priority": 1, "config": {}})
        request = urllib.request.Request(
            f"{hub.base}/events?taskIds={second['id']}", headers={"Authorization": f"Bearer {hub.key}"}
        )
        with urllib.request.urlopen(request, timeout=40) as stream:
            assert stream.readline().startswith(b"retry:")
            _change_elsewhere(hub, second["id"], "PAUSED", "paused elsewhere")
            first = _next_event(stream)
        assert (first["taskId"], first["toStatus"], first["reason"]) == (second["id"], "PAUSED", "paused elsewhere")
        _change_elsewhere(hub, second["id"], "CANCELLED", "cancelled elsewhere")
        request.add_header("Last-Event-ID", str(first["historyId"]))
        with urllib.request.urlopen(request, timeout=40) as resumed:
            after = _next_event(resumed)
        history = hub.api("GET", f"/tasks/{second['id']}/history")["items"]
        assert [h["id"] for h in history][-2:] == [first["historyId"], after["historyId"]]  # no gap, no repeat
        assert after["toStatus"] == "CANCELLED"


def _next_event(stream: Any) -> dict[str, Any]:
    while True:
        line = stream.readline()
        assert line, "the stream ended before the event"
        if line.startswith(b"data: "):
            return dict(json.loads(line[6:]))


def test_the_claims_doorbell_and_the_results_doorbell_use_channels_of_their_own(settings, tmp_path):
    if settings.REDIS_URL:
        assert doorbell.make_transport("doorbell").channel != doorbell.make_transport("history").channel  # type: ignore[union-attr]
    else:
        settings.VAR_DIR = tmp_path
        assert doorbell.make_transport("doorbell").directory != doorbell.make_transport("history").directory  # type: ignore[union-attr]


def test_a_short_lived_process_sends_its_rings_before_it_exits(settings):
    """Rings go out from a sender thread; a process that commits and exits at once (a management
    command, a script) waits for them at exit rather than taking them with it."""
    historybell._transport_instance = None
    bell = historybell.Bell()
    ticket = bell.arm_sync(frozenset({454545}))
    script = "from taskhub.base import historybell; historybell.ring_on_commit([454545]); print('queued')"
    env = os.environ | {"VAR_DIR": str(settings.VAR_DIR)}
    try:
        done = subprocess.run(
            [PYTHON, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert "queued" in done.stdout, done.stderr
        assert bell.wait_sync(ticket, 30)
    finally:
        historybell._transport_instance = None


@pytest.mark.django_db(transaction=True)
def test_the_kept_threads_keep_their_database_connection_between_calls(monkeypatch):
    """What follows a ring (a woken claim, a result read) runs on threads that do not reconnect to
    the database for every call, although Django's CONN_MAX_AGE is 0 under an ASGI server; nor do
    the main pool's."""
    from django.db import connection, connections
    from django.db.backends.signals import connection_created

    from taskhub.base import syncpool
    from tasks.models import Task

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)  # as under uvicorn
    monkeypatch.setattr(syncpool, "KEPT_THREADS", 1)
    monkeypatch.setattr(syncpool, "_kept", None)
    monkeypatch.setattr(syncpool, "_pool", None)
    opened: list[str] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened.append(connection.alias)

    def read() -> bool:
        return Task.objects.filter(pk=0).exists()

    async def scenario(run: Any) -> None:
        syncpool.SERVED.set(True)  # as taskhub.asgi marks the requests it serves
        for _ in range(3):
            await run(read)

    connection_created.connect(count)
    try:
        _run(scenario(syncpool.run_kept))
        kept = len(opened)
        opened.clear()
        _run(scenario(syncpool.run_sync))
        pooled = len(opened)
    finally:
        connection_created.disconnect(count)
        for pool in (syncpool._kept, syncpool._pool):
            if pool is not None:
                pool.submit(lambda: connection.close()).result()  # that thread's own connection
                pool.shutdown()
    # One connection for three calls on either pool (DB_POOL_CONN_MAX_AGE outlives Django's 0).
    assert kept <= 1 and pooled <= 1, (kept, pooled)
