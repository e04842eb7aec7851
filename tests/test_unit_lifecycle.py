"""A unit id over its processes (I11): who drained it (its own shutdown, cleared when it registers
again, or an operator, kept until resumed) and one live process per id (instance ids: a second
live instance is refused with 409 `unit_in_use`, `replace` takes over, a silent or stopped one is
taken over, requests without an instance id behave as before). Through the API, on SQLite and on
MariaDB (the whole module runs in both passes); the race of two registrations on MariaDB."""

from __future__ import annotations

import importlib
import multiprocessing
from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.db import connections
from django.utils import timezone

from tasks.models import Task, TaskStatusHistory
from tests import factories
from tests.conftest import JsonClient
from units.models import DrainedBy, ExecutionUnit, UnitStatus
from units.sweeper import sweep_heartbeats

pytestmark = pytest.mark.django_db
REGISTER = "/api/v1/execution-units/register"
UNIT = {"id": "u1", "unitType": "DATA_PROCESSING", "unitName": "unit one", "capacity": 5}


def register(client: JsonClient, instance: str | None = None, **extra: Any) -> Any:
    body = {**UNIT, **({"instanceId": instance} if instance else {}), **extra}
    return client.post(REGISTER, body)


def registered(client: JsonClient, instance: str | None = None, **extra: Any) -> tuple[JsonClient, dict[str, Any]]:
    response = register(client, instance, **extra)
    assert response.status_code in (200, 201), response.content
    body = response.json()
    return JsonClient(body["token"]), body


def submit(client: JsonClient, n: int = 1) -> None:
    for _ in range(n):
        created = client.post("/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "config": {}})
        assert created.status_code == 201


def claim(unit: JsonClient, instance: str | None = None) -> Any:
    return unit.post("/api/v1/execution-units/u1/claim", {"max": 5, **({"instanceId": instance} if instance else {})})


def heartbeat(unit: JsonClient, instance: str | None = None, **extra: Any) -> Any:
    body = {"currentLoad": 0, **({"instanceId": instance} if instance else {}), **extra}
    return unit.post("/api/v1/execution-units/u1/heartbeat", body)


def drain(client: JsonClient) -> dict[str, Any]:
    response = client.patch("/api/v1/execution-units/u1", {"status": "MAINTENANCE"})
    assert response.status_code == 200, response.content
    return dict(response.json())


def shut_down(unit: JsonClient, instance: str) -> dict[str, Any]:
    """What taskhub-unit does on SIGTERM: drain itself, finish, send its last heartbeat."""
    body = drain(unit)
    assert heartbeat(unit, instance, tasks=[], stopping=True).json()["status"] == "OFFLINE"
    return body


# --- who drained it ----------------------------------------------------------------------------


def test_a_units_own_drain_is_cleared_when_it_registers_again_and_it_claims(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    body = shut_down(unit, "first")
    assert (body["status"], body["drainedBy"], body["drainedByActor"]) == ("MAINTENANCE", "self", "unit:u1")
    drained_at = body["drainedAt"]
    assert drained_at is not None
    unit, again = registered(client_a, "second")  # the same --id, started again
    assert (again["status"], again["drainedBy"], again["drainedAt"]) == ("ONLINE", None, None)
    assert again["clearedDrainAt"] == drained_at
    submit(client_a)
    assert len(claim(unit, "second").json()["items"]) == 1


def test_an_operators_drain_is_kept_across_registrations_until_resumed(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    body = drain(client_a)
    assert (body["drainedBy"], body["drainedByActor"]) == ("operator", "key:client-a")
    shut_down(unit, "first")  # the unit shutting down does not turn it into its own drain
    unit, again = registered(client_a, "second")
    assert (again["status"], again["drainedBy"], again["drainedByActor"]) == ("MAINTENANCE", "operator", "key:client-a")
    assert again["clearedDrainAt"] is None
    submit(client_a)
    assert claim(unit, "second").json()["items"] == []
    resumed = client_a.patch("/api/v1/execution-units/u1", {"status": "ONLINE"}).json()
    assert (resumed["status"], resumed["drainedBy"], resumed["drainedAt"]) == ("ONLINE", None, None)
    assert len(claim(unit, "second").json()["items"]) == 1


def test_an_operator_draining_a_unit_that_drains_itself_makes_the_drain_theirs(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    drain(unit)
    assert drain(client_a)["drainedBy"] == "operator"
    assert heartbeat(unit, "first", tasks=[], stopping=True).status_code == 200
    assert registered(client_a, "second")[1]["status"] == "MAINTENANCE"


def test_an_operators_drain_outlives_an_offline_spell(client_a: JsonClient, settings: Any) -> None:
    unit, _ = registered(client_a, "first")
    drain(client_a)
    sweep_heartbeats(timezone.now() + timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT + 1))
    assert ExecutionUnit.objects.get(pk="u1").status == UnitStatus.OFFLINE
    reply = heartbeat(unit, "first").json()  # the process was only frozen
    assert (reply["status"], reply["freeCapacity"], reply["drainedBy"]) == ("MAINTENANCE", 0, "operator")
    assert reply["drainedByActor"] == "key:client-a" and reply["drainedAt"] is not None


def test_a_unit_token_may_only_drain_its_own_unit(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    drain(client_a)
    refused = unit.patch("/api/v1/execution-units/u1", {"status": "ONLINE"})
    assert refused.status_code == 403
    assert ExecutionUnit.objects.get(pk="u1").drained_by == DrainedBy.OPERATOR


def test_drains_recorded_before_this_migration_count_as_an_operators() -> None:
    legacy = factories.unit("legacy", status=UnitStatus.MAINTENANCE)
    fine = factories.unit("fine")
    migration = importlib.import_module("units.migrations.0002_unit_drain_and_instance")
    migration.attribute_existing_drains(apps, None)
    legacy.refresh_from_db()
    fine.refresh_from_db()
    assert (legacy.drained_by, legacy.drained_at) == (DrainedBy.OPERATOR, legacy.updated_at)
    assert fine.drained_by == ""


# --- one live process per unit id --------------------------------------------------------------


def test_a_second_live_instance_is_refused_and_nothing_changes(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    submit(client_a)
    (held,) = claim(unit, "first").json()["items"]
    before = ExecutionUnit.objects.get(pk="u1")
    refused = register(client_a, "second")
    assert refused.status_code == 409
    body = refused.json()
    assert body["code"] == "unit_in_use"
    assert body["message"].startswith("Execution unit u1 is in use by another process (instance first, last heard")
    assert 'register with "replace": true (taskhub-unit --replace)' in body["message"]
    assert body["details"]["instanceId"] == "first" and body["details"]["heartbeatTimeoutSeconds"] > 0
    after = ExecutionUnit.objects.get(pk="u1")
    assert (after.token_hash, after.instance_id, after.last_heartbeat_at) == (
        before.token_hash,
        "first",
        before.last_heartbeat_at,
    )
    assert Task.objects.get(pk=held["id"]).status == "RUNNING"  # nothing failed over
    assert heartbeat(unit, "first").status_code == 200  # the first process goes on


def test_the_same_instance_registers_again_freely(client_a: JsonClient) -> None:
    registered(client_a, "first")
    assert register(client_a, "first").status_code == 200  # e.g. its reply was lost and it retried


def test_replace_takes_over_at_once_and_the_old_process_is_refused(client_a: JsonClient) -> None:
    old, _ = registered(client_a, "first")
    submit(client_a)
    (held,) = claim(old, "first").json()["items"]
    new, body = registered(client_a, "second", replace=True)
    assert body["instanceId"] == "second"
    task = Task.objects.get(pk=held["id"])
    assert (task.status, task.attempt) == ("PENDING", 1)
    assert TaskStatusHistory.objects.filter(task_id=task.pk, reason="unit u1 re-registered (restarted)").exists()
    assert heartbeat(old, "first").status_code == 401  # its token died with the takeover
    assert register(client_a, "first").json()["code"] == "unit_in_use"  # and it cannot win the id back
    assert heartbeat(new, "second").status_code == 200


def test_a_process_silent_past_the_timeout_is_taken_over_without_replace(client_a: JsonClient, settings: Any) -> None:
    # Registration stamps liveness with the database's clock (units.hearing): age the stamp instead.
    registered(client_a, "first")
    stamp = ExecutionUnit.objects.get(pk="u1").last_heartbeat_at
    timeout = timedelta(seconds=settings.UNIT_HEARTBEAT_TIMEOUT)
    ExecutionUnit.objects.filter(pk="u1").update(last_heartbeat_at=stamp - timeout + timedelta(seconds=5))
    assert register(client_a, "second").status_code == 409
    ExecutionUnit.objects.filter(pk="u1").update(last_heartbeat_at=stamp - timeout - timedelta(seconds=1))
    assert register(client_a, "second").status_code == 200
    assert ExecutionUnit.objects.get(pk="u1").instance_id == "second"


def test_a_process_that_stopped_cleanly_is_taken_over_at_once(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    assert register(client_a, "second").status_code == 409
    drain(unit)
    reply = heartbeat(unit, "first", tasks=[], stopping=True).json()
    assert reply["status"] == "OFFLINE" and reply["freeCapacity"] == 0
    again = register(client_a, "second")
    assert again.status_code == 200 and again.json()["status"] == "ONLINE"


def test_requests_without_an_instance_id_behave_as_before(client_a: JsonClient) -> None:
    registered(client_a, "first")
    unit, body = registered(client_a)  # the seed's example: no instanceId, takes the unit
    assert body["instanceId"] is None
    assert heartbeat(unit).status_code == 200 and claim(unit).status_code == 200
    assert register(client_a, "later").status_code == 200  # nothing to compare against


def test_a_replaced_instance_is_refused_on_heartbeat_and_claim_and_nothing_changes(client_a: JsonClient) -> None:
    unit, _ = registered(client_a, "first")
    ExecutionUnit.objects.filter(pk="u1").update(instance_id="second")  # as a racing replacement leaves it
    submit(client_a)
    before = ExecutionUnit.objects.get(pk="u1").last_heartbeat_at
    for response in (heartbeat(unit, "first"), claim(unit, "first")):
        assert response.status_code == 409
        assert response.json()["code"] == "unit_replaced"
        assert "instance second" in response.json()["message"]
    assert ExecutionUnit.objects.get(pk="u1").last_heartbeat_at == before
    assert not Task.objects.filter(status="RUNNING").exists()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (REGISTER, {**UNIT, "instanceId": "has space"}),
        (REGISTER, {**UNIT, "instanceId": "x" * 65}),
        (REGISTER, {**UNIT, "replace": "yes"}),
        ("/api/v1/execution-units/u1/heartbeat", {"instanceId": 5}),
        ("/api/v1/execution-units/u1/heartbeat", {"stopping": "true"}),
        ("/api/v1/execution-units/u1/claim", {"max": 1, "instanceId": ""}),
    ],
)
def test_bad_instance_fields_are_refused_naming_the_field(client_a: JsonClient, path: str, body: Any) -> None:
    unit, _ = registered(client_a, "first")
    response = (client_a if path == REGISTER else unit).post(path, body)
    assert response.status_code == 400, response.content
    field = next(name for name in ("instanceId", "replace", "stopping") if name in body)
    assert field in response.json()["details"]["fields"]
    assert ExecutionUnit.objects.get(pk="u1").instance_id == "first"


def test_the_schema_documents_drains_instances_and_the_409(api: Any) -> None:
    schema = api.get("/api/v1/schema?format=json").json()
    unit = schema["components"]["schemas"]["Unit"]["properties"]
    assert {"instanceId", "drainedBy", "drainedByActor", "drainedAt"} <= set(unit)
    assert unit["drainedBy"].get("enum") or unit["drainedBy"].get("oneOf") or unit["drainedBy"].get("allOf")
    register_op = schema["paths"]["/api/v1/execution-units/register"]["post"]
    assert "unit_in_use" in register_op["responses"]["409"]["description"]
    request = schema["components"]["schemas"]["RegisterRequest"]["properties"]
    assert {"instanceId", "replace"} <= set(request)
    assert {"instanceId", "stopping"} <= set(schema["components"]["schemas"]["HeartbeatRequest"]["properties"])
    assert "clearedDrainAt" in schema["components"]["schemas"]["Registered"]["properties"]


# --- the race, on MariaDB ------------------------------------------------------------------------


def _register_as(instance: str, key_id: int, out: Any) -> None:
    from taskhub.apikeys.models import ApiKey
    from units.lifecycle import UnitInUse
    from units.services import unit_register

    data = {"id": "raced", "unit_type": "T", "unit_name": "r", "capacity": 1, "instance_id": instance}
    try:
        unit_register(owner=ApiKey.objects.get(pk=key_id), data=data)
        out.put((instance, "registered"))
    except UnitInUse:
        out.put((instance, "refused"))
    except Exception as exc:  # any other error fails the test
        out.put((instance, repr(exc)))
    finally:
        connections.close_all()


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("existing", [False, True])
def test_instances_registering_one_id_at_once_leave_exactly_one_holder(existing: bool) -> None:
    """First registrations race on the insert (the loser retries as a re-registration), later ones
    on the unit row lock: either way the first to commit holds the id and every other is refused."""
    key, _ = factories.api_key(name="racers")
    if existing:  # a stopped unit everybody may take over
        factories.unit("raced", unit_type="T", status=UnitStatus.OFFLINE, owner=key)
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_register_as, args=(f"i{n}", key.pk, out)) for n in range(6)]
    for proc in procs:
        proc.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(60)
    winners = [instance for instance, outcome in results.items() if outcome == "registered"]
    assert len(winners) == 1 and sorted(results.values()) == ["refused"] * 5 + ["registered"], results
    assert ExecutionUnit.objects.get(pk="raced").instance_id == winners[0]
