"""Liveness of idle units (issue 14 item 3, units.idle): the hub offers an ONLINE unit holding
nothing a long heartbeat interval; its waiting long-poll claim keeps it alive meanwhile; a unit that
holds tasks heartbeats and fails over as before."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from taskhub.api.serializers.heartbeat import HeartbeatReplySerializer, heartbeat_reply
from taskhub.api.views import longpoll as longpoll_view
from taskhub.base import doorbell, serving
from taskhub.base.sql import db_now
from tasks.transitions.reports import complete_attempt
from testkit.hub import (
    QUICK_LIVENESS,
    call,
    create_api_key,
    embedded_env,
    gunicorn_argv,
    migrate,
    running_hub,
    unit_argv,
    unit_env,
    wait_healthy,
)
from testkit.ports import free_port
from testkit.processes import Process
from testkit.waiting import wait_for
from tests import factories
from units import idle, longpoll
from units.claim import claim_tasks
from units.lifecycle import UnitInUse, refuse_another_live_instance
from units.models import ExecutionUnit
from units.services import unit_heartbeat
from units.sweeper import sweep_heartbeats


def _beat(unit: ExecutionUnit, tasks: list[dict[str, Any]] | None = None, **kwargs: Any) -> dict[str, Any]:
    return unit_heartbeat(unit.pk, current_load=0, metadata=None, tasks=tasks, **kwargs)


# --- the interval in the heartbeat reply ------------------------------------------------------------


@pytest.mark.django_db
def test_an_online_unit_holding_nothing_is_offered_the_idle_interval(settings):
    settings.UNIT_IDLE_HEARTBEAT_INTERVAL = 60.0
    unit = factories.unit(capacity=2)
    reply = _beat(unit, [])
    assert reply["heartbeatIntervalSeconds"] == settings.UNIT_HEARTBEAT_INTERVAL
    assert reply["idleHeartbeatIntervalSeconds"] == 60.0
    assert heartbeat_reply(reply) == dict(HeartbeatReplySerializer(reply).data)


@pytest.mark.django_db
def test_the_idle_interval_ends_when_a_claim_hands_the_unit_a_task_and_comes_back_once_it_holds_none(settings):
    settings.UNIT_IDLE_HEARTBEAT_INTERVAL = 60.0
    unit = factories.unit(capacity=2)
    task = factories.task(task_type=unit.unit_type)
    assert _beat(unit, [])["idleHeartbeatIntervalSeconds"] == 60.0
    [claimed] = claim_tasks(unit.pk, 1, now=timezone.now())
    listed = [{"id": claimed.pk, "attempt": claimed.attempt}]
    assert _beat(unit, listed)["idleHeartbeatIntervalSeconds"] is None
    assert _beat(unit, None)["idleHeartbeatIntervalSeconds"] is None  # no list: its lease still counts
    complete_attempt(task.pk, unit_id=unit.pk, attempt=claimed.attempt, result={})  # the task leaves RUNNING
    assert _beat(unit, [])["idleHeartbeatIntervalSeconds"] == 60.0


@pytest.mark.django_db
def test_a_draining_stopping_or_disabled_unit_is_offered_no_idle_interval(settings):
    settings.UNIT_IDLE_HEARTBEAT_INTERVAL = 60.0
    drained = factories.unit(status="MAINTENANCE")
    assert _beat(drained, [])["idleHeartbeatIntervalSeconds"] is None
    stopping = factories.unit()
    assert _beat(stopping, [], stopping=True)["idleHeartbeatIntervalSeconds"] is None
    settings.UNIT_IDLE_HEARTBEAT_INTERVAL = 0.0
    assert _beat(factories.unit(), [])["idleHeartbeatIntervalSeconds"] is None


# --- the stamp of held claims -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_waiting_idle_unit_stamped_past_the_timeout_stays_online_while_one_holding_a_task_fails_over(
    settings, django_assert_num_queries
):
    """Both silent (by heartbeats) for twice the timeout, both with a claim waiting: the stamp of held
    claims keeps the idle one ONLINE; the one holding a task is not stamped, goes OFFLINE and its
    task fails over (I5 unchanged); an OFFLINE unit is not brought back by a stamp."""
    idle_unit = factories.unit(capacity=1)
    busy = factories.unit(capacity=2, unit_type="busy")
    gone = factories.unit(status="OFFLINE")
    task = factories.task(task_type="busy")
    claim_tasks(busy.pk, 1, now=timezone.now())
    long_ago = db_now() - timedelta(seconds=2 * settings.UNIT_HEARTBEAT_TIMEOUT)
    ExecutionUnit.objects.update(last_heartbeat_at=long_ago)
    with django_assert_num_queries(1):
        stamped = idle.stamp_waiting([idle_unit.pk, busy.pk, gone.pk])
    assert stamped == 1
    counts = sweep_heartbeats(db_now())
    states = dict(ExecutionUnit.objects.values_list("id", "status"))
    assert (states[idle_unit.pk], states[busy.pk], states[gone.pk]) == ("ONLINE", "OFFLINE", "OFFLINE")
    assert counts["failedOver"] == 1
    task.refresh_from_db()
    assert task.status == "PENDING"


@pytest.mark.django_db
def test_one_statement_stamps_many_waiting_units(django_assert_num_queries):
    units = [factories.unit(capacity=1) for _ in range(30)]
    with django_assert_num_queries(1):
        assert idle.stamp_waiting([u.pk for u in units]) == 30


def test_held_claims_stamp_each_waiting_unit_once_per_interval_in_one_statement_per_chunk(settings):
    settings.UNIT_HEARTBEAT_INTERVAL = 10.0
    calls: list[list[str]] = []

    async def stamp(ids: list[str]) -> int:
        calls.append(list(ids))
        return len(ids)

    async def scenario() -> None:
        held = idle.HeldClaims(stamp)
        ids = [f"u{i:04d}" for i in range(1200)]
        for unit_id in ids:
            held.hold(unit_id)
        held.hold("u0000")  # a second claim of one unit waits too
        assert held.due(0.0) == ids  # new waiters are due at once
        assert await held.flush() == 1200
        assert [len(c) for c in calls] == [500, 500, 200]
        now = held.loop.time()  # type: ignore[union-attr]
        assert held.due(now + 5) == []  # stamped: not again within the interval
        assert held.due(now + 9.5) == ids  # within a tick of it: due (never more than 10 s unheard)
        held.release("u0000")
        assert "u0000" in held.due(now + 9.5)  # one of its claims still waits
        for unit_id in ids:
            held.release(unit_id)
        assert held.due(now + 20) == []
        assert held.stamped == {}  # forgotten once they wait here no more
        assert held.task is not None
        held.task.cancel()

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_claim_that_waits_stamps_its_idle_unit(settings, register_unit):
    """Through the async claim view: an idle unit silent past the timeout but waiting in a claim is
    heard (the stamp of held claims, every UNIT_HEARTBEAT_INTERVAL, on by default): `last_waited_at`,
    not its heartbeat, which stays what it was."""
    settings.UNIT_HEARTBEAT_INTERVAL = 0.2
    client, _ = register_unit("idle-w")
    long_ago = db_now() - timedelta(seconds=10 * settings.UNIT_HEARTBEAT_TIMEOUT)
    ExecutionUnit.objects.filter(pk="idle-w").update(last_heartbeat_at=long_ago)
    reply = client.post("/api/v1/execution-units/idle-w/claim", {"max": 1, "waitSeconds": 1.0})
    assert reply.status_code == 200 and reply.json()["items"] == []
    unit = ExecutionUnit.objects.get(pk="idle-w")
    assert unit.last_heartbeat_at == long_ago
    assert unit.last_waited_at is not None and unit.last_waited_at > long_ago + timedelta(
        seconds=5 * settings.UNIT_HEARTBEAT_TIMEOUT
    )
    assert unit.last_heard_at == unit.last_waited_at


def test_a_draining_process_and_a_hub_without_idle_liveness_stamp_nothing(settings):
    """From the signal that begins the drain (taskhub.uvicorn_worker), the claims this process still
    holds are not stamped: it can no longer take a heartbeat, so nothing it writes may look like the
    hub hearing. With UNIT_IDLE_HEARTBEAT_INTERVAL 0, no stamps either."""
    calls: list[list[str]] = []

    async def stamp(ids: list[str]) -> int:
        calls.append(list(ids))
        return len(ids)

    async def scenario() -> tuple[int, int, int]:
        held = idle.HeldClaims(stamp)
        held.hold("u1")
        serving_flush = await held.flush()
        held.stamped.clear()  # due again
        serving.begin_drain()
        draining_flush = await held.flush()
        serving.reset()
        settings.UNIT_IDLE_HEARTBEAT_INTERVAL = 0.0
        off_flush = await held.flush()
        assert held.task is not None
        held.task.cancel()
        return serving_flush, draining_flush, off_flush

    try:
        assert asyncio.run(scenario()) == (1, 0, 0)
    finally:
        serving.reset()
    assert calls == [["u1"]]


def test_the_server_marks_the_process_draining_at_its_exit_signal():
    from uvicorn.config import Config

    from taskhub.uvicorn_worker import DrainingServer

    server = DrainingServer(Config(app=lambda *a: None))
    try:
        assert serving.serving()
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit and not serving.serving()
    finally:
        serving.reset()


@pytest.mark.django_db
def test_a_unit_stamped_waiting_is_live_for_id_takeover(settings):
    """units.lifecycle.is_live reads the later of the heartbeat and the stamp: a second process under
    the id of an idle unit whose claim waits is refused; once neither is recent, it takes over."""
    unit = factories.unit(capacity=1)
    ExecutionUnit.objects.filter(pk=unit.pk).update(instance_id="first")
    long_ago = db_now() - timedelta(seconds=2 * settings.UNIT_HEARTBEAT_TIMEOUT)
    ExecutionUnit.objects.filter(pk=unit.pk).update(last_heartbeat_at=long_ago, last_waited_at=db_now())
    unit.refresh_from_db()
    with pytest.raises(UnitInUse) as refused:
        refuse_another_live_instance(unit, "second", replace=False, now=db_now())
    assert refused.value.details["lastHeardSecondsAgo"] < settings.UNIT_HEARTBEAT_TIMEOUT
    ExecutionUnit.objects.filter(pk=unit.pk).update(last_waited_at=long_ago)
    unit.refresh_from_db()
    refuse_another_live_instance(unit, "second", replace=False, now=db_now())  # not live: no error


# --- real processes: hub (gunicorn + uvicorn workers) and taskhub-unit --------------------------------


def _requests_logged(hub: Any, unit_id: str, action: str) -> int:
    log = Path(hub.env["LOG_DIR"]) / "access.log"
    return sum(f"/execution-units/{unit_id}/{action}" in line for line in log.read_text().splitlines())


@pytest.mark.slow
def test_an_idle_long_polling_unit_heartbeats_rarely_stays_online_gets_commands_and_its_tasks_fail_over_when_killed(
    hub_backend, tmp_path
):
    """QUICK_LIVENESS (timeout 2 s, interval 0.5 s, sweep 1 s) and the default idle interval (60 s).
    Idle: a real taskhub-unit heartbeats about once in three timeouts and stays ONLINE (not once
    OFFLINE). A drain reaches it at once through its waiting claim, and then it heartbeats at the
    normal interval (it stays MAINTENANCE, never OFFLINE). Resumed, it claims a task, heartbeats
    and keeps it; kill -9 mid-wait: the task is PENDING again within timeout + sweep interval, and a
    second, idle unit killed with it is OFFLINE within the same bound."""
    timeout = float(QUICK_LIVENESS["UNIT_HEARTBEAT_TIMEOUT"])
    bound = timeout + float(QUICK_LIVENESS["SWEEP_INTERVAL"])
    with running_hub(tmp_path, hub_backend, UNIT_IDLE_HEARTBEAT_INTERVAL="60") as hub:
        units = {
            uid: Process(
                f"unit-{uid}",
                unit_argv(),
                env=unit_env(hub.url, hub.key, uid, "lp", 2, TASKHUB_CLAIM_WAIT="20"),
                log_path=tmp_path / f"{uid}.log",
            ).start()
            for uid in ("i1", "i2")
        }

        def status(uid: str) -> str:
            return str(hub.api("GET", f"/execution-units/{uid}")["status"])

        try:
            for uid in units:
                wait_for(partial(_requests_logged, hub, uid, "heartbeat"), 30, f"{uid}'s first heartbeat")
            time.sleep(1.0)  # its reply offered the idle interval; the claims wait
            beats = _requests_logged(hub, "i1", "heartbeat")
            seen = set()
            for _ in range(int(3 * timeout / 0.25)):  # three heartbeat timeouts
                seen.add(status("i1"))
                time.sleep(0.25)
            assert seen == {"ONLINE"}
            # At the normal interval (0.5 s) that would be 12 heartbeats.
            assert _requests_logged(hub, "i1", "heartbeat") - beats <= 2

            # A drain reaches the idle unit through its waiting claim, and it heartbeats again.
            claims = _requests_logged(hub, "i1", "claim")
            hub.api("PATCH", "/execution-units/i1", {"status": "MAINTENANCE"})
            # The waiting claim (20 s) ends at once with the drain in its reply (logged as it ends).
            wait_for(lambda: _requests_logged(hub, "i1", "claim") > claims, 5, "the waiting claim to end")
            beats = _requests_logged(hub, "i1", "heartbeat")
            seen = set()
            for _ in range(int(3 * timeout / 0.25)):
                seen.add(status("i1"))
                time.sleep(0.25)
            assert seen == {"MAINTENANCE"}
            assert _requests_logged(hub, "i1", "heartbeat") - beats >= 4  # the normal interval again
            hub.api("PATCH", "/execution-units/i1", {"status": "ONLINE"})
            wait_for(lambda: status("i1") == "ONLINE", 10, "the resume")

            # i2 idles; i1 gets a task (the long poll) and keeps it by heartbeating.
            hub.api("PATCH", "/execution-units/i2", {"status": "MAINTENANCE"})
            wait_for(lambda: status("i2") == "MAINTENANCE", 10, "i2 drained")
            task = hub.api("POST", "/tasks", {"name": "t", "taskType": "lp", "priority": 1, "config": {"seconds": 60}})
            wait_for(lambda: hub.api("GET", f"/tasks/{task['id']}")["unitId"] == "i1", 15, "i1 to run the task")
            hub.api("PATCH", "/execution-units/i2", {"status": "ONLINE"})
            time.sleep(3 * timeout)
            assert hub.api("GET", f"/tasks/{task['id']}")["status"] == "RUNNING"  # I6
            assert status("i2") == "ONLINE"

            for process in units.values():
                process.signal(signal.SIGKILL)
            killed = time.monotonic()
            wait_for(lambda: hub.api("GET", f"/tasks/{task['id']}")["status"] == "PENDING", 30, "the failover")
            failed_over = time.monotonic() - killed
            wait_for(lambda: status("i2") == "OFFLINE", 30, "the idle unit OFFLINE")
            offline = time.monotonic() - killed
            # The bound plus the sweep's, the stamp's and this poll's own granularity (no speed assertion).
            assert failed_over <= bound + 3.0
            assert offline <= bound + 3.0
        finally:
            for process in units.values():
                process.stop(2)


# Beat's sweep, every 0.25 s for `seconds` (the web may be down meanwhile): what it failed over.
_SWEEPS = """
import json, time
from taskhub.base.sql import db_now
from tasks.models import Task
from units import hearing
from units.models import ExecutionUnit
from units.sweeper import sweep_job
moved, end, log = 0, time.monotonic() + {seconds}, []
while time.monotonic() < end:
    now = db_now()
    counts = sweep_job(now)
    moved += counts["failedOver"]
    beats = dict(ExecutionUnit.objects.values_list("id", "last_heartbeat_at"))
    waits = dict(ExecutionUnit.objects.values_list("id", "last_waited_at"))
    log.append([time.time(), counts["failedOver"], str(now), str(hearing.newest_heard()), str(beats), str(waits)])
    time.sleep(0.25)
print(json.dumps({{"log": log}}))
print(json.dumps({{"failedOver": moved, "status": Task.objects.get(pk={task}).status}}))
"""


@pytest.mark.slow
def test_a_draining_web_process_holding_an_idle_units_claim_fails_no_live_work_over(tmp_path):
    """The chaos outage-web failure (2026-12-01), on real processes: the web gets SIGTERM and drains
    (gunicorn's graceful timeout, 5 s here) holding an idle unit's 20 s claim, and stays down. It
    takes no heartbeat from then on; before the fix it kept stamping the idle unit, the sweeper
    believed it heard, and the busy unit's task was failed over 2 s (the timeout) into the drain.
    Now the draining process stamps nothing: the hub knows it is deaf and fails nothing over."""
    # A silence of every unit is believed to be the hub's outage for a minute (QUICK_LIVENESS: 2 s).
    env = embedded_env(tmp_path, **(QUICK_LIVENESS | {"HUB_OUTAGE_GRACE": "60"}), UNIT_IDLE_HEARTBEAT_INTERVAL="60")
    migrate(env, beat=False)
    key = create_api_key(env, "drain")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v1"
    web = Process("web", gunicorn_argv(port), env=env, log_path=tmp_path / "web.log").start()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        wait_healthy(f"{base}/health/database", web)
        tokens = {}
        for uid, utype in (("busy", "b"), ("idle", "i")):
            body = {"id": uid, "unitType": utype, "unitName": uid, "capacity": 1, "endpoint": ""}
            status, reply = call(base, "POST", "/execution-units/register", key, body)
            assert status == 201, reply
            tokens[uid] = str(reply["token"])
        status, task = call(base, "POST", "/tasks", key, {"name": "t", "taskType": "b", "priority": 1, "config": {}})
        assert status == 201, task
        status, claimed = call(base, "POST", "/execution-units/busy/claim", tokens["busy"], {"max": 1})
        assert status == 200 and [t["id"] for t in claimed["items"]] == [task["id"]], claimed
        lease = [{"id": task["id"], "attempt": claimed["items"][0]["attempt"]}]

        def heartbeats() -> None:  # a live busy unit: every interval, through the outage too
            while not stop.wait(float(QUICK_LIVENESS["UNIT_HEARTBEAT_INTERVAL"])):
                call(
                    base,
                    "POST",
                    "/execution-units/busy/heartbeat",
                    tokens["busy"],
                    {"currentLoad": 1, "tasks": lease},
                    timeout=2,
                )

        def idle_claim() -> None:
            call(base, "POST", "/execution-units/idle/claim", tokens["idle"], {"max": 1, "waitSeconds": 20}, timeout=30)

        threads = [threading.Thread(target=f, daemon=True) for f in (heartbeats, idle_claim)]
        for thread in threads:
            thread.start()
        sweeps = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", _SWEEPS.format(seconds=14, task=task["id"])],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(5)  # the sweeper hears both (the idle one by its held claim) for a while
        web.signal_group(signal.SIGTERM)  # the drain begins; nothing is accepted any more
        drained_at = time.time()
        out, _ = sweeps.communicate(timeout=120)
        *_, timeline, last = out.strip().splitlines()
        result = json.loads(last)
        (tmp_path / "sweeps.json").write_text(json.dumps({"drainedAt": drained_at, **json.loads(timeline)}))
        assert result == {"failedOver": 0, "status": "RUNNING"}, f"see {tmp_path / 'sweeps.json'}"  # I6
    finally:
        stop.set()
        web.stop(5)


@pytest.mark.mariadb  # Django never closes SQLite's in-memory test database: nothing to see there
@pytest.mark.django_db(transaction=True)
def test_the_web_pools_threads_keep_their_database_connections_under_an_asgi_server(monkeypatch, settings):
    """Under an ASGI server Django's CONN_MAX_AGE is 0; taskhub.asgi's fixed pool keeps its threads'
    connections (DB_POOL_CONN_MAX_AGE) instead of connecting anew for every request (a fifth of an
    idle fleet's web CPU went to connecting)."""
    from django.db import connection, connections
    from django.db.backends.signals import connection_created

    from taskhub.base import syncpool

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    monkeypatch.setattr(syncpool, "_pool", None)  # new threads: new connection wrappers, max age 0
    settings.WEB_THREADS, settings.DB_POOL_CONN_MAX_AGE = 2, 60
    opened: list[Any] = []

    def count(sender: Any, connection: Any, **kwargs: Any) -> None:
        opened.append(connection)

    def query() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    async def requests() -> None:
        for _ in range(8):
            await syncpool.run_sync(query)

    connection_created.connect(count)
    served = syncpool.SERVED.set(True)
    try:
        asyncio.run(requests())
    finally:
        syncpool.SERVED.reset(served)
        connection_created.disconnect(count)
        assert syncpool._pool is not None
        syncpool._pool.submit(connections.close_all).result()
        syncpool._pool.shutdown()
    assert 1 <= len(opened) <= 2  # one per pool thread, not one per request (8)


def test_a_draining_process_ends_its_held_long_polls_at_once(monkeypatch, settings, tmp_path):
    """The drain's signal wakes every long poll this process holds: each replies as at the end of
    its wait (nothing claimed, no claim run), so its unit claims again from a process that serves
    (and is stamped there) and the drain does not sit out a 30 s wait; a claim arriving while
    draining does not wait at all."""
    settings.VAR_DIR = str(tmp_path)  # the embedded doorbell's sockets

    async def probe(task_type: str) -> None:
        return None

    waiters = doorbell.Waiters(probe)
    monkeypatch.setattr(longpoll_view, "WAITERS", waiters)
    claimed: list[object] = []
    monkeypatch.setattr(longpoll_view.longpoll, "claim_again", lambda *a, **k: claimed.append(a))
    wait = longpoll.ClaimWait("u1", "t", 1, 30.0, "hash", "instance")

    async def scenario() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        held = asyncio.ensure_future(longpoll_view._wait(wait, "ONLINE", loop.time()))
        await asyncio.sleep(0.2)
        assert not held.done() and waiters.waiting("type:t") == 1  # it waits
        serving.begin_drain()
        response = await asyncio.wait_for(held, 10)  # long before its 30 s
        return response.content, waiters.waiting("type:t")

    try:
        content, still_waiting = asyncio.run(scenario())
    finally:
        serving.reset()
    assert json.loads(content) == {"items": [], "unitStatus": "ONLINE", "waitSeconds": 30.0}
    assert still_waiting == 0 and claimed == []
