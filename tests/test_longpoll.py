"""Long-poll claims (issue 14): the doorbell wakes O(1) waiters per ring, a waiting unit gets a new
task without polling, a unit killed mid-wait loses its tasks within the failover bound, and the
production web server (gunicorn + uvicorn) holds slow clients while units heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from taskhub.base import doorbell
from testkit.hub import QUICK_LIVENESS, call, running_hub, unit_argv, unit_env
from testkit.processes import Process
from testkit.waiting import wait_for


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.new_event_loop().run_until_complete(coro)


async def _no_work(task_type: str):  # type: ignore[no-untyped-def]
    return None


def test_one_ring_wakes_one_of_a_thousand_waiters_and_a_batch_wakes_as_many_as_its_tasks():
    async def scenario() -> tuple[int, int, int]:
        waiters = doorbell.Waiters(_no_work)
        key = doorbell.type_key("t")
        futures = [waiters.enqueue([key, doorbell.unit_key(f"u{i}")]) for i in range(1000)]
        waiters._deliver(json.dumps([key, 1, None]).encode())
        one = sum(f.done() for f in futures)
        waiters._deliver(json.dumps([key, 5, None]).encode())
        six = sum(f.done() for f in futures)
        waiters._deliver(json.dumps([doorbell.unit_key("u999"), doorbell.ALL, None]).encode())
        seven = sum(f.done() for f in futures)
        for task in waiters.tasks:
            task.cancel()
        return one, six, seven

    assert _run(scenario()) == (1, 6, 7)


def test_a_due_time_wakes_a_waiter_when_it_comes_not_before():
    async def scenario() -> tuple[bool, bool]:
        waiters = doorbell.Waiters(_no_work)
        key = doorbell.type_key("t")
        future = waiters.enqueue([key])
        waiters._deliver(json.dumps([key, 1, time.time() + 0.3]).encode())
        early = future.done()
        await asyncio.sleep(0.6)
        for task in waiters.tasks:
            task.cancel()
        return early, future.done()

    assert _run(scenario()) == (False, True)


def test_a_ring_reaches_a_waiting_process_through_the_configured_transport(settings, tmp_path):
    """Unix datagram sockets in the embedded default, Redis pub/sub when REDIS_HOST is set."""

    async def scenario() -> bool:
        waiters = doorbell.Waiters(_no_work)
        key = doorbell.type_key(f"t-{os.getpid()}")
        future = waiters.enqueue([key])
        await asyncio.sleep(0.3)  # the listener subscribes
        await asyncio.get_running_loop().run_in_executor(None, doorbell.ring, key, 1, None)
        woke = await waiters.wait_on(future, 5)
        for task in waiters.tasks:
            task.cancel()
        return woke

    if not settings.REDIS_URL:
        settings.VAR_DIR = tmp_path
    doorbell._transport_instance = None
    try:
        assert _run(scenario())
    finally:
        doorbell._transport_instance = None


def _register(hub, unit_id: str, capacity: int = 1) -> str:  # type: ignore[no-untyped-def]
    body = {"id": unit_id, "unitType": "lp", "unitName": unit_id, "capacity": capacity, "endpoint": ""}
    status, reply = call(hub.base, "POST", "/execution-units/register", hub.key, body)
    assert status == 201, reply
    return str(reply["token"])


def _claims_logged(hub, unit_id: str) -> int:  # type: ignore[no-untyped-def]
    log = Path(hub.env["LOG_DIR"]) / "access.log"
    return sum(f"/execution-units/{unit_id}/claim" in line for line in log.read_text().splitlines())


@pytest.mark.slow
def test_a_waiting_unit_gets_a_new_task_in_its_one_claim_request(hub_backend, tmp_path):
    with running_hub(tmp_path, hub_backend) as hub:
        token = _register(hub, "w1")
        got: dict[str, Any] = {}

        def wait() -> None:
            body = {"max": 1, "waitSeconds": 20}
            got["reply"] = call(hub.base, "POST", "/execution-units/w1/claim", token, body, timeout=30)

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_for(lambda: _claims_logged(hub, "w1") == 0 and waiter.is_alive(), 5, "the claim to be waiting")
        time.sleep(1.0)  # the claim found nothing and waits on the doorbell
        task = hub.api("POST", "/tasks", {"name": "x", "taskType": "lp", "priority": 1, "config": {}})
        waiter.join(30)
        status, reply = got["reply"]
        assert status == 200 and [t["id"] for t in reply["items"]] == [task["id"]]
        assert reply["waitSeconds"] == 20
        assert _claims_logged(hub, "w1") == 1  # one request: no polling
        assert hub.api("GET", f"/tasks/{task['id']}")["status"] == "RUNNING"


WAITERS = 100
WEB_PROCESSES = 2
# Long enough that no waiting unit (they never heartbeat here) goes OFFLINE during the test: a
# sweep that marks a unit OFFLINE rings that unit's own doorbell and would wake its claim.
PATIENT_LIVENESS = {"UNIT_HEARTBEAT_TIMEOUT": "120", "HUB_OUTAGE_GRACE": "120"}


@pytest.mark.slow
@pytest.mark.mariadb
@pytest.mark.redis
def test_one_create_wakes_one_of_a_hundred_waiting_units_across_web_processes(tmp_path):
    """A real hub (runhub: 2 uvicorn web processes) on MariaDB + Redis: 100 units each hold a
    long-poll claim; one task is created. Exactly one unit gets it, the 99 others keep waiting, and
    the claims run for it (taskhub_claims_total on /metrics, all web processes) are a few per web
    process: the ring wakes one waiter per process (and a process's safety re-check at most one
    more), not all 100."""
    from bench.dispatch import METRICS_TOKEN, claims_counted

    extra = PATIENT_LIVENESS | {"WEB_CONCURRENCY": str(WEB_PROCESSES), "METRICS_TOKEN": METRICS_TOKEN}
    with contextlib.ExitStack() as stack:
        hub = stack.enter_context(running_hub(tmp_path, "mariadb", **extra))
        tokens = {f"o1-{i}": _register(hub, f"o1-{i}") for i in range(WAITERS)}
        replies: dict[str, tuple[int, Any]] = {}
        conns = {u: http.client.HTTPConnection("127.0.0.1", hub.port, timeout=40) for u in tokens}
        # Shut at the end (first thing on the way out of the hub): the hub ends the waits of clients
        # gone instead of sitting its stop out until they run out.
        stack.callback(_shut, conns.values())

        def wait(unit_id: str) -> None:
            headers = {"Authorization": f"Bearer {tokens[unit_id]}", "Content-Type": "application/json"}
            body = json.dumps({"max": 1, "waitSeconds": 30})
            try:
                conns[unit_id].request("POST", f"/api/v1/execution-units/{unit_id}/claim", body, headers)
                response = conns[unit_id].getresponse()
                replies[unit_id] = (response.status, json.loads(response.read()))
            except OSError:
                pass  # shut by the test when it is done

        waiters = [threading.Thread(target=wait, args=(u,), daemon=True) for u in tokens]
        for thread in waiters:
            thread.start()
        # Each claim ran once, found nothing and counted itself: now they all wait on the doorbell.
        wait_for(lambda: claims_counted(hub.port) >= WAITERS, 60, "every claim to have run once")
        time.sleep(1.0)  # past a safety re-check: every waiter is queued on its process's doorbell
        before = claims_counted(hub.port)
        assert before == WAITERS and not replies  # nothing claimed twice, nothing answered yet
        task = hub.api("POST", "/tasks", {"name": "one", "taskType": "lp", "priority": 1, "config": {}})
        wait_for(lambda: replies, 20, "a waiting unit to get the task")
        time.sleep(2.5)  # any other claim the create caused (a ring per process, a re-check) has run
        claims = claims_counted(hub.port) - before
        print(f"claims run for one create with {WAITERS} waiters: {claims:g}")
        got = {u: [t["id"] for t in r[1]["items"]] for u, r in replies.items() if r[0] == 200 and r[1]["items"]}
        assert list(got.values()) == [[task["id"]]], replies  # exactly one unit holds it
        assert sum(thread.is_alive() for thread in waiters) == WAITERS - 1  # the others still wait
        assert len(replies) == 1  # and none was woken to an empty answer
        assert 1 <= claims <= 2 * WEB_PROCESSES, claims  # O(1) per web process, not WAITERS
        assert hub.api("GET", f"/tasks/{task['id']}")["status"] == "RUNNING"


def _shut(conns: Iterable[http.client.HTTPConnection]) -> None:
    for conn in conns:
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    """Connections that send half a request line and then nothing (slowloris)."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n")
        socks.append(sock)
    return socks


@pytest.mark.slow
def test_kill_9_mid_wait_fails_over_within_the_bound_while_slow_clients_do_not_stall_heartbeats(hub_backend, tmp_path):
    """One hub (production web server: gunicorn + uvicorn workers): a real taskhub-unit holds a task
    and long-polls for more; 100 slowloris connections are open; its heartbeats keep it and its
    task; kill -9 it mid-wait and the task is PENDING again within timeout + sweep interval."""
    with running_hub(tmp_path) as hub:
        task = hub.api("POST", "/tasks", {"name": "long", "taskType": "lp", "priority": 1, "config": {"seconds": 60}})
        env = unit_env(hub.url, hub.key, "k1", "lp", 2, TASKHUB_CLAIM_WAIT="20")
        unit = Process("unit-k1", unit_argv(), env=env, log_path=tmp_path / "unit.log").start()
        try:
            wait_for(lambda: hub.api("GET", f"/tasks/{task['id']}")["status"] == "RUNNING", 30, "the task to run")
            slow = _slow_clients(hub.port, 100)
            try:
                beats = _claims_logged(hub, "k1")
                # Several heartbeat timeouts pass with the slow clients holding their connections.
                time.sleep(3 * float(QUICK_LIVENESS["UNIT_HEARTBEAT_TIMEOUT"]))
                assert hub.api("GET", f"/tasks/{task['id']}")["status"] == "RUNNING"
                assert hub.api("GET", "/execution-units/k1")["status"] in ("ONLINE", "BUSY")
                # Long polls: a handful of claims in that time, not one per poll interval.
                assert _claims_logged(hub, "k1") - beats <= 3
            finally:
                for sock in slow:
                    sock.close()
            unit.signal(signal.SIGKILL)
            killed = time.monotonic()
            bound = float(QUICK_LIVENESS["UNIT_HEARTBEAT_TIMEOUT"]) + float(QUICK_LIVENESS["SWEEP_INTERVAL"])
            wait_for(lambda: hub.api("GET", f"/tasks/{task['id']}")["status"] == "PENDING", 30, "the failover")
            # The bound plus the sweep's and this poll's own granularity (no speed assertion).
            assert time.monotonic() - killed <= bound + 3.0
        finally:
            unit.stop(2)


def test_every_middleware_of_the_async_path_is_async_capable_so_no_waiter_holds_a_thread():
    """A sync-only middleware in an async view's chain makes Django run the request inside a
    thread (asgiref's one shared thread without a ThreadSensitiveContext: waits would queue)."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    from taskhub.asgi import AsyncViewHandler

    AsyncViewHandler()  # loads its chain (a sync-only middleware would still load, adapted)
    for path in settings.MIDDLEWARE:
        if path.startswith("whitenoise."):
            continue  # left out of the async path (static files are never async views)
        assert getattr(import_string(path), "async_capable", False), path


@pytest.mark.slow
def test_sigterm_mid_wait_stops_the_unit_without_sitting_out_its_long_poll(tmp_path):
    """The agent drains on SIGTERM: its drain (PATCH MAINTENANCE) rings the unit's doorbell, the
    hub ends the waiting claim, and the process exits long before the 25 s wait would end."""
    with running_hub(tmp_path) as hub:
        env = unit_env(hub.url, hub.key, "t1", "lp", 1, TASKHUB_CLAIM_WAIT="25")
        unit = Process("unit-t1", unit_argv(), env=env, log_path=tmp_path / "unit.log").start()
        try:
            wait_for(lambda: _claims_logged(hub, "t1") == 0 and "registered" in unit.output(), 30, "registration")
            time.sleep(1.0)  # its first long-poll claim is waiting
            unit.signal(signal.SIGTERM)
            assert unit.wait(timeout=10) == 0  # a bound well under the wait, not a speed
            assert _claims_logged(hub, "t1") == 1  # the waiting claim ended (and nothing polled)
        finally:
            unit.stop(2)


@pytest.mark.slow
def test_the_hubs_own_server_streams_each_event_as_it_happens_and_holds_waits_in_the_loop(tmp_path):
    """Through runhub's ASGI server (not Django's test client): GET /events answers at once and sends
    an event while the stream is still open, and a `waitFor` read answers when the task ends. Sent
    through the sync thread pool instead (taskhub.asgi), a held response is read whole (here: 60 s)
    before its first byte, so the stream's headers would not arrive within the timeout."""
    import urllib.request

    with running_hub(tmp_path, EVENTS_STREAM_MAX_SECONDS="60", EVENTS_HEARTBEAT_SECONDS="30") as hub:
        request = urllib.request.Request(f"{hub.base}/events?mine=true", headers={"Authorization": f"Bearer {hub.key}"})
        with urllib.request.urlopen(request, timeout=20) as stream:
            task = hub.api("POST", "/tasks", {"name": "sse", "taskType": "lp", "priority": 1, "config": {}})
            data = ""
            while not data:
                line = stream.readline().decode()
                assert line, "the stream ended before its first event"
                data = line[len("data:") :] if line.startswith("data:") else ""
        event = json.loads(data)
        assert (event["taskId"], event["toStatus"]) == (task["id"], "PENDING")

        got: dict[str, Any] = {}

        def wait() -> None:
            got["reply"] = call(hub.base, "GET", f"/tasks/{task['id']}?waitFor=terminal&waitSeconds=20", hub.key, None)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # held: the task is not terminal yet
        hub.api("PUT", f"/tasks/{task['id']}/status", {"status": "CANCELLED", "reason": "done waiting"})
        waiter.join(15)
        status, reply = got["reply"]
        assert status == 200 and reply["status"] == "CANCELLED"


@pytest.mark.django_db
def test_a_threaded_wsgi_server_answers_a_long_poll_at_once_so_waiting_units_never_hold_its_threads(register_unit):
    """Under gunicorn's gthread worker (WEB_WORKER=wsgi) or runserver, a waiting claim would hold a
    request thread for its whole wait: four idle long-polling units took all four threads of a
    worker in a chaos run and starved the heartbeats (a live unit's task failed over). There the
    claim answers at once with `waitSeconds: 0`; the agent then polls."""
    unit, _ = register_unit("u-wsgi")
    threaded = unit.post(
        "/api/v1/execution-units/u-wsgi/claim", {"max": 1, "waitSeconds": 20}, **{"wsgi.multithread": True}
    )
    assert threaded.status_code == 200
    assert threaded.json() == {"items": [], "unitStatus": "ONLINE", "waitSeconds": 0}
    assert getattr(threaded.wsgi_request, "taskhub_claim_wait", None) is None  # nothing waits
    # Django's test client (not multithreaded) keeps the wait, as taskhub.asgi does.
    plain = unit.post("/api/v1/execution-units/u-wsgi/claim", {"max": 1, "waitSeconds": 0.2})
    assert plain.json()["waitSeconds"] == 0.2
