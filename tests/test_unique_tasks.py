"""Unique tasks (uniqueKey on create): one task per client and key while the holder is not terminal,
or for uniqueFor seconds; a repeat returns the holder (200 + Taskhub-Unique-Existing) or 409; racing
creates from several processes on MariaDB make exactly one task (the UNIQUE slot column)."""

from __future__ import annotations

import multiprocessing
import traceback
from collections import Counter
from typing import Any

import pytest
import time_machine
from django.db import connection, connections

from taskhub.base.actors import Actor
from tasks.models import Task
from tasks.states import TaskStatus
from tasks.transitions import verbs
from tests.conftest import JsonClient

S = TaskStatus
pytestmark = pytest.mark.django_db
BODY = {"name": "export", "taskType": "EXPORT", "config": {"customer": 7}}
HEADER = "Taskhub-Unique-Existing"


def _create(client: JsonClient, **extra: Any) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": extra.pop("idempotency")} if "idempotency" in extra else {}
    return client.post("/api/v1/tasks", {**BODY, **extra}, **headers)


def test_a_second_create_with_a_held_key_returns_the_holder(client_a: JsonClient) -> None:
    first = _create(client_a, uniqueKey="export:7")
    assert first.status_code == 201 and HEADER not in first
    assert first.json()["uniqueKey"] == "export:7"
    again = _create(client_a, uniqueKey="export:7", name="another name")
    assert again.status_code == 200, again.json()
    assert again[HEADER] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert Task.objects.count() == 1


def test_on_conflict_error_is_a_409_naming_the_holder_and_creates_nothing(client_a: JsonClient) -> None:
    first = _create(client_a, uniqueKey="k").json()
    refused = _create(client_a, uniqueKey="k", onConflict="error")
    assert refused.status_code == 409
    assert refused.json()["details"]["taskId"] == first["id"]
    assert refused.json()["details"]["field"] == "uniqueKey"
    assert Task.objects.count() == 1


@pytest.mark.parametrize("target", [S.COMPLETED, S.CANCELLED])
def test_a_terminal_holder_frees_its_key(client_a: JsonClient, target: str) -> None:
    first = _create(client_a, uniqueKey="k").json()
    if target == S.CANCELLED:
        assert client_a.put(f"/api/v1/tasks/{first['id']}/status", {"status": "CANCELLED"}).status_code == 200
    else:
        client_a.put(f"/api/v1/tasks/{first['id']}/status", {"status": "RUNNING"})
        assert client_a.put(f"/api/v1/tasks/{first['id']}/status", {"status": "COMPLETED"}).status_code == 200
    assert Task.objects.get(pk=first["id"]).unique_slot is None
    second = _create(client_a, uniqueKey="k")
    assert second.status_code == 201
    assert second.json()["id"] != first["id"]


def test_a_failed_holder_keeps_its_key_until_cancelled(client_a: JsonClient) -> None:
    first = _create(client_a, uniqueKey="k").json()
    client_a.put(f"/api/v1/tasks/{first['id']}/status", {"status": "RUNNING"})
    client_a.put(f"/api/v1/tasks/{first['id']}/status", {"status": "FAILED"})
    assert _create(client_a, uniqueKey="k").json()["id"] == first["id"]  # FAILED can be retried: not terminal


def test_keys_compare_byte_exact_and_per_client(client_a: JsonClient, client_b: JsonClient) -> None:
    ids = {_create(client_a, uniqueKey=key).json()["id"] for key in ("Key", "key", "KEY", "ke\u0301y", "k\u00e9y")}
    assert len(ids) == 5
    assert _create(client_b, uniqueKey="Key").status_code == 201  # another client's key never meets this one


def test_unique_for_holds_the_key_for_the_period_whatever_the_state(client_a: JsonClient) -> None:
    with time_machine.travel("2030-01-01 00:00:00Z", tick=False) as clock:
        first = _create(client_a, uniqueKey="daily", uniqueFor=3600).json()
        assert first["uniqueUntil"].startswith("2030-01-01T01:00:00")
        verbs.change_status(first["id"], S.CANCELLED, actor=Actor.system("test"))
        clock.shift(3599)
        assert _create(client_a, uniqueKey="daily", uniqueFor=3600).json()["id"] == first["id"]
        clock.shift(1)
        second = _create(client_a, uniqueKey="daily", uniqueFor=3600)
        assert second.status_code == 201
        assert Task.objects.get(pk=first["id"]).unique_slot is None  # released by the create that found it expired


def test_idempotency_key_is_looked_at_before_the_unique_key(client_a: JsonClient) -> None:
    first = _create(client_a, uniqueKey="k", idempotency="req-1")
    assert first.status_code == 201
    verbs.change_status(first.json()["id"], S.CANCELLED, actor=Actor.system("test"))
    second = _create(client_a, uniqueKey="k", idempotency="req-2")
    assert second.status_code == 201  # the key was free again
    replay = _create(client_a, uniqueKey="k", idempotency="req-1")
    assert replay.status_code == 200 and replay["Idempotency-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]  # the replay is of the first request, whoever holds the key
    held = _create(client_a, uniqueKey="k", idempotency="req-3")
    assert held.status_code == 200 and held[HEADER] == "true" and held.json()["id"] == second.json()["id"]
    assert Task.objects.filter(idempotency_key="req-3").count() == 0  # no task: the key is not stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"uniqueFor": 60}, "uniqueFor"),
        ({"uniqueKey": "k", "uniqueFor": 0}, "uniqueFor"),
        ({"uniqueKey": "x" * 256}, "uniqueKey"),
        ({"uniqueKey": "k", "onConflict": "replace"}, "onConflict"),
    ],
)
def test_bad_unique_fields_are_a_400_naming_the_field(client_a: JsonClient, body: dict[str, Any], field: str) -> None:
    response = _create(client_a, **body)
    assert response.status_code == 400
    assert field in str(response.json())
    assert Task.objects.count() == 0


def test_patch_cannot_set_a_unique_key(client_a: JsonClient) -> None:
    task = _create(client_a).json()
    response = client_a.patch(f"/api/v1/tasks/{task['id']}", {"uniqueKey": "k"})
    assert response.status_code == 400 and "uniqueKey" in str(response.json())


def test_batch_items_with_held_keys_return_the_holders(client_a: JsonClient) -> None:
    held = _create(client_a, uniqueKey="a").json()
    response = client_a.post(
        "/api/v1/tasks/batch", {"tasks": [{**BODY, "uniqueKey": "a"}, {**BODY, "uniqueKey": "b"}, BODY]}
    )
    assert response.status_code == 201
    items = response.json()["items"]
    assert [(i["created"], i["uniqueExisting"]) for i in items] == [(False, True), (True, False), (True, False)]
    assert items[0]["id"] == held["id"]
    assert Task.objects.count() == 3


def test_a_batch_with_on_conflict_error_is_refused_whole(client_a: JsonClient) -> None:
    _create(client_a, uniqueKey="a")
    response = client_a.post(
        "/api/v1/tasks/batch",
        {"tasks": [{**BODY, "uniqueKey": "new"}, {**BODY, "uniqueKey": "a", "onConflict": "error"}]},
    )
    assert response.status_code == 409
    assert response.json()["details"]["field"] == "tasks[1].uniqueKey"
    assert Task.objects.count() == 1


def test_a_batch_repeating_a_unique_key_holds_one_task_as_creates_one_by_one_would(client_a: JsonClient) -> None:
    # The repeat is answered with the first item's task (tests/test_batch.py has the variants).
    response = client_a.post("/api/v1/tasks/batch", {"tasks": [{**BODY, "uniqueKey": "a"}, {**BODY, "uniqueKey": "a"}]})
    assert response.status_code == 201, response.json()
    first, second = response.json()["items"]
    assert second["id"] == first["id"] and second["uniqueExisting"] is True
    assert Task.objects.count() == 1


# --- racing creates on MariaDB, several processes ---------------------------------------------

PROCESSES = 6
KEYS = 40


def _race(owner_id: int, barrier: Any, out: Any) -> None:
    from tasks import services

    outcomes: list[tuple[str, int, str]] = []
    errors: list[str] = []
    try:
        owner = services.Task._meta.get_field("owner").related_model.objects.get(pk=owner_id)  # type: ignore[union-attr]
        barrier.wait(timeout=60)
        for i in range(KEYS):
            key = f"race-{i}"
            data = {"name": key, "task_type": "EXPORT", "priority": 0, "config": {}, "unique_key": key}
            task, outcome = services.task_submit(
                owner=owner, actor=Actor.system("race"), data=data, idempotency_key=None, fingerprint=""
            )
            outcomes.append((key, task.pk, outcome))
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        connections.close_all()
    out.put((outcomes, errors))


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_racing_creates_from_several_processes_make_exactly_one_task_per_key() -> None:
    from tests import factories

    assert connection.vendor == "mysql"
    owner, _ = factories.api_key("racer")
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(owner.pk, barrier, queue)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not [e for _, errors in results for e in errors], [e for _, errors in results for e in errors]
    per_key: dict[str, set[int]] = {}
    outcomes: Counter[str] = Counter()
    for rows, _ in results:
        for key, task_id, outcome in rows:
            per_key.setdefault(key, set()).add(task_id)
            outcomes[outcome] += 1
    assert all(len(ids) == 1 for ids in per_key.values()), per_key  # every process got the same task
    assert Task.objects.filter(owner=owner).count() == KEYS
    assert outcomes["created"] == KEYS and outcomes["unique_existing"] == KEYS * (PROCESSES - 1)
