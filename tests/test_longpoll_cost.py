"""What an idle long-poll claim costs the hub (issue 14, the idle fleet): a claim that this process
knows would find nothing skips the claim and waits at once (taskhub.api.views.longpoll), on the
doorbell probe's finding (taskhub.base.doorbell.Waiters.nothing_claimable); Django's own middleware
run in the event loop on the async chain (taskhub.api.middleware.InLoop). Every rule of the claim
still holds: nothing is claimed without the full claim, a queue with settings always claims, a
revoked key or a deregistered unit ends the token at once."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.module_loading import import_string

from taskhub.api import middleware
from taskhub.api.views import longpoll as longpoll_view
from taskhub.apikeys.models import ApiKey
from taskhub.apikeys.services import api_key_revoke
from taskhub.base import doorbell, metrics
from tasks.models import QueueSettings, Task
from units import longpoll
from units.models import ExecutionUnit, UnitStatus

TYPE = "COSTLY"


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.new_event_loop().run_until_complete(coro)


# --- the doorbell's finding ------------------------------------------------------------------------


def _probing(monkeypatch: pytest.MonkeyPatch, result: Any, *, then: Any = None):  # type: ignore[no-untyped-def]
    """A Waiters whose probe returns `result` (a callable: called), rechecking every 10 ms."""
    monkeypatch.setattr(doorbell, "RECHECK_SECONDS", 0.01)

    async def probe(task_type: str) -> Any:
        return result() if callable(result) else result

    return doorbell.Waiters(probe)


async def _probed(waiters: doorbell.Waiters, key: str) -> None:
    before = waiters.stats["rechecks"]
    while waiters.stats["rechecks"] < before + 2:  # one recheck finished (the second began)
        if not waiters.waiting(key):
            waiters.enqueue([key])  # a waiter (again, if a probe that found work woke it): it probes
        await asyncio.sleep(0.005)


def _stop(waiters: doorbell.Waiters) -> None:
    for task in waiters.tasks:
        task.cancel()


def test_a_probe_that_found_nothing_claimable_is_known_until_a_ring_of_the_type(monkeypatch):
    key = doorbell.type_key(TYPE)

    async def scenario() -> list[bool]:
        waiters = _probing(monkeypatch, doorbell.Probed(None, stands_for_claim=True))
        seen = [waiters.nothing_claimable(key)]  # nothing probed yet
        await _probed(waiters, key)
        seen.append(waiters.nothing_claimable(key))
        seen.append(waiters.nothing_claimable(doorbell.type_key("OTHER")))  # never probed
        waiters._deliver(json.dumps([key, 1, None]).encode())  # a task of the type became PENDING
        seen.append(waiters.nothing_claimable(key))
        _stop(waiters)
        return seen

    assert _run(scenario()) == [False, True, False, False]


def test_a_finding_that_cannot_stand_for_a_claim_or_found_work_is_not_kept(monkeypatch):
    key = doorbell.type_key(TYPE)
    now = timezone.now()
    cases = [
        doorbell.Probed(None, stands_for_claim=False),  # a queue with settings
        doorbell.Probed(now - timedelta(seconds=1), stands_for_claim=True),  # a task claimable now
        None,  # a probe of the old kind (a due time only): it says nothing about claims
    ]

    async def scenario(result: Any) -> bool:
        waiters = _probing(monkeypatch, result)
        await _probed(waiters, key)
        known = waiters.nothing_claimable(key)
        _stop(waiters)
        return known

    assert [_run(scenario(result)) for result in cases] == [False, False, False]


def test_a_task_due_later_is_nothing_claimable_until_its_time(monkeypatch):
    key = doorbell.type_key(TYPE)

    async def scenario() -> tuple[bool, bool]:
        due = timezone.now() + timedelta(seconds=0.3)
        waiters = _probing(monkeypatch, doorbell.Probed(due, stands_for_claim=True))
        await _probed(waiters, key)
        before = waiters.nothing_claimable(key)
        while time.time() < due.timestamp() + 0.01:
            await asyncio.sleep(0.01)
        monkeypatch.setattr(doorbell, "RECHECK_SECONDS", 60)  # no new probe: the kept finding decides
        after = waiters.nothing_claimable(key)
        _stop(waiters)
        return before, after

    assert _run(scenario()) == (True, False)


def test_a_finding_older_than_the_limit_is_not_used(monkeypatch):
    key = doorbell.type_key(TYPE)

    async def scenario() -> tuple[bool, bool]:
        waiters = _probing(monkeypatch, doorbell.Probed(None, stands_for_claim=True))
        await _probed(waiters, key)
        fresh = waiters.nothing_claimable(key)
        monkeypatch.setattr(doorbell, "QUIET_MAX_AGE", 0.0)  # the probes stopped (say the DB is slow)
        stale = waiters.nothing_claimable(key)
        _stop(waiters)
        return fresh, stale

    assert _run(scenario()) == (True, False)


def test_a_ring_during_the_probe_voids_its_finding(monkeypatch):
    """The probe began, then a task was created and rang, then the probe answered "none" (it read
    before the commit): the finding is older than the ring, so it is not used."""
    key = doorbell.type_key(TYPE)
    box: dict[str, doorbell.Waiters] = {}

    def ring_then_none() -> doorbell.Probed:
        box["waiters"]._deliver(json.dumps([key, 1, None]).encode())
        return doorbell.Probed(None, stands_for_claim=True)

    async def scenario() -> bool:
        waiters = _probing(monkeypatch, ring_then_none)
        box["waiters"] = waiters
        await _probed(waiters, key)
        known = waiters.nothing_claimable(key)
        _stop(waiters)
        return known

    assert _run(scenario()) is False


@pytest.mark.django_db
def test_the_probe_stands_for_a_claim_only_for_a_queue_without_settings(client_a, register_unit):
    assert longpoll.probe(TYPE) == doorbell.Probed(None, stands_for_claim=True)
    client_a.post("/api/v1/tasks", {"name": "t", "taskType": TYPE, "priority": 1, "config": {}})
    found = longpoll.probe(TYPE)
    assert found.stands_for_claim and found.due is not None and found.due <= timezone.now()
    QueueSettings.objects.create(task_type=TYPE, created_at=timezone.now(), updated_at=timezone.now())
    assert longpoll.probe(TYPE).stands_for_claim is False


# --- the claim that is skipped ---------------------------------------------------------------------


def _claim(unit: Any, unit_id: str, wait: float = 0.05, **extra: Any) -> Any:
    return unit.post(f"/api/v1/execution-units/{unit_id}/claim", {"max": 1, "waitSeconds": wait}, **extra)


@pytest.fixture
def known_empty(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """What the long-poll view's doorbell says of every type (its finding, set by the test); the
    types it was asked about are recorded."""
    state = {"empty": True, "asked": False}

    def nothing_claimable(task_type: str) -> bool:
        state["asked"] = True
        return state["empty"]

    monkeypatch.setattr(longpoll_view, "_nothing_claimable", nothing_claimable)
    monkeypatch.setattr(settings, "UNIT_IDLE_HEARTBEAT_INTERVAL", 0.0)  # no stamps during the wait
    return state


@pytest.mark.django_db
def test_an_idle_long_poll_the_doorbell_knows_empty_costs_its_authentication_only(
    register_unit, known_empty, django_capture_on_commit_callbacks
):
    unit, _ = register_unit("idle-1", unit_type=TYPE)
    counted = metrics.CLAIMS.labels("known_empty")._value.get()
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as skipped:
        reply = _claim(unit, "idle-1")
    assert metrics.CLAIMS.labels("known_empty")._value.get() == counted + 1  # still a claim call counted
    assert reply.status_code == 200, reply.content
    assert reply.json() == {"items": [], "unitStatus": "ONLINE", "waitSeconds": 0.05}
    known_empty["empty"] = False
    with CaptureQueriesContext(connection) as claimed:
        full = _claim(unit, "idle-1")
    assert full.json() == reply.json()  # the same reply as the claim that ran and found nothing
    statements = [q["sql"] for q in skipped.captured_queries]
    assert len(statements) == 1, statements  # the unit token's row (auth.py); no transaction
    assert "FOR UPDATE" not in statements[0].upper()
    assert len(claimed.captured_queries) > len(statements) + 2  # the claim: lock, count, lease, ...


@pytest.mark.django_db
def test_a_claim_that_finds_work_is_the_full_claim_whatever_the_hint(client_a, register_unit, known_empty):
    """The hint only ever comes from the doorbell, which voids it when work rings; if it were wrong
    the worst is a wait. Here: with no hint (a ring came) the created task is claimed at once."""
    unit, _ = register_unit("idle-2", unit_type=TYPE)
    task = client_a.post("/api/v1/tasks", {"name": "t", "taskType": TYPE, "priority": 1, "config": {}}).json()
    known_empty["empty"] = False
    reply = _claim(unit, "idle-2", wait=5)
    assert [item["id"] for item in reply.json()["items"]] == [task["id"]]
    assert Task.objects.get(pk=task["id"]).status == "RUNNING"


@pytest.mark.django_db
@pytest.mark.parametrize("status", [UnitStatus.BUSY, UnitStatus.MAINTENANCE])
def test_a_unit_not_online_always_runs_the_claim(register_unit, known_empty, status):
    unit, _ = register_unit("idle-3", unit_type=TYPE)
    ExecutionUnit.objects.filter(pk="idle-3").update(status=status)
    with CaptureQueriesContext(connection) as queries:
        reply = _claim(unit, "idle-3")
    assert reply.status_code == 200
    assert any("FOR UPDATE" in q["sql"].upper() for q in queries.captured_queries) or connection.vendor == "sqlite"
    assert len(queries.captured_queries) > 1
    # BUSY with room: the claim moves it back to ONLINE; MAINTENANCE claims nothing and does not wait.
    expected = UnitStatus.ONLINE if status == UnitStatus.BUSY else UnitStatus.MAINTENANCE
    assert reply.json()["unitStatus"] == expected
    assert ExecutionUnit.objects.get(pk="idle-3").status == expected


@pytest.mark.django_db
def test_no_wait_no_skip(register_unit, known_empty):
    """A claim without waitSeconds answers with the claim's own result: the hint is not asked."""
    unit, _ = register_unit("idle-4", unit_type=TYPE)
    with CaptureQueriesContext(connection) as queries:
        reply = unit.post("/api/v1/execution-units/idle-4/claim", {"max": 1})
    assert reply.json() == {"items": [], "unitStatus": "ONLINE"}
    assert known_empty["asked"] is False and len(queries.captured_queries) > 1


@pytest.mark.django_db
def test_a_skipped_claim_still_refuses_a_revoked_key_a_deregistered_unit_and_another_unit(
    client_a, register_unit, known_empty
):
    unit, _ = register_unit("idle-5", unit_type=TYPE)
    other, _ = register_unit("idle-6", unit_type=TYPE)
    assert _claim(unit, "idle-5").status_code == 200
    assert _claim(other, "idle-5").status_code == 403  # a token acts only for its own unit
    api_key_revoke(ApiKey.objects.get(name="client-a"))
    assert _claim(unit, "idle-5").status_code == 401  # at once: the key that registered it is revoked
    ExecutionUnit.objects.filter(pk="idle-6").delete()
    assert _claim(other, "idle-6").status_code == 401


@pytest.mark.django_db
def test_a_replaced_instance_is_refused_before_any_skip(register_unit, known_empty):
    unit, _ = register_unit("idle-7", unit_type=TYPE)
    ExecutionUnit.objects.filter(pk="idle-7").update(instance_id="new-process")
    reply = unit.post(
        "/api/v1/execution-units/idle-7/claim", {"max": 1, "waitSeconds": 0.05, "instanceId": "old-process"}
    )
    assert reply.status_code == 409, reply.content


@pytest.mark.django_db
def test_a_queue_with_settings_answers_its_hold_not_a_wait(client_a, register_unit, monkeypatch):
    """Through the real doorbell finding: a paused queue's probe cannot stand for a claim, so the
    claim runs and says the queue is paused (the agent backs off) instead of waiting."""
    unit, _ = register_unit("idle-8", unit_type=TYPE)
    QueueSettings.objects.create(task_type=TYPE, paused=True, created_at=timezone.now(), updated_at=timezone.now())
    assert longpoll.probe(TYPE).stands_for_claim is False
    reply = _claim(unit, "idle-8")
    assert reply.json()["queue"]["paused"] is True


# --- Django's middleware in the loop ---------------------------------------------------------------


def test_every_sync_only_middleware_has_an_in_loop_version():
    """A Django middleware added to MIDDLEWARE without one would cost two thread hops on every
    long-poll claim again (MiddlewareMixin's __acall__): add it to taskhub.api.middleware."""
    for path in settings.MIDDLEWARE:
        if path.startswith("whitenoise."):
            continue  # left out of the async chain (taskhub.asgi)
        cls = import_string(middleware.in_loop_path(path))
        assert issubclass(cls, middleware.BothModes | middleware.InLoop), path


def test_the_async_chain_adds_the_headers_of_djangos_middleware_without_a_thread(monkeypatch):
    """The async handler of taskhub.asgi serves an async view (the health check) through the
    in-loop middleware: their headers are there, and no hook went through sync_to_async."""
    import taskhub.asgi

    hops: list[Any] = []
    real = middleware.sync_to_async

    def counted(*args: Any, **kwargs: Any) -> Any:
        hops.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(middleware, "sync_to_async", counted)
    from django.contrib.messages.middleware import MessageMiddleware
    from django.middleware.security import SecurityMiddleware

    calls: list[str] = []
    for base in (SecurityMiddleware, MessageMiddleware):
        original = base.__acall__

        async def spy(self: Any, request: Any, original: Any = original) -> Any:
            calls.append(type(self).__name__)
            return await original(self, request)

        monkeypatch.setattr(base, "__acall__", spy)  # Django's hopping version: must not run
    handler = taskhub.asgi.AsyncViewHandler()
    sent: list[dict[str, Any]] = []

    messages: list[dict[str, Any]] = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/v1/health",
        "query_string": b"",
        "headers": [(b"host", b"localhost")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("localhost", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }
    asyncio.run(handler(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    assert headers.get("x-frame-options") == "DENY"  # XFrameOptionsMiddleware
    assert headers.get("x-content-type-options") == "nosniff"  # SecurityMiddleware
    assert calls == [] and hops == []
