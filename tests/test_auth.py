"""API keys and unit tokens: hashed, scoped, 401 vs 403, units act only for themselves."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from taskhub.apikeys.models import ApiKey
from taskhub.apikeys.services import api_key_revoke
from taskhub.apikeys.tokens import digest
from tasks.models import Task
from tests import factories
from tests.conftest import JsonClient
from units.models import ExecutionUnit

pytestmark = pytest.mark.django_db
TASK = {"name": "t", "taskType": "DATA_PROCESSING", "priority": 1, "config": {}}


def test_create_api_key_prints_the_key_alone_on_the_last_line_and_stores_a_hash():
    out = io.StringIO()
    call_command("create_api_key", "ci-client", "--scopes", "tasks:read,tasks:write", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    assert key.startswith("thk_") and " " not in key
    row = ApiKey.objects.get(name="ci-client")
    assert row.key_hash == digest(key) and key not in (row.key_hash, row.prefix)
    assert row.scopes == ["tasks:read", "tasks:write"]
    assert JsonClient(key).get("/api/v1/tasks").status_code == 200


def test_create_api_key_rejects_unknown_scopes():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="unknown scope"):
        call_command("create_api_key", "x", "--scopes", "tasks:read,root", stdout=io.StringIO())
    assert not ApiKey.objects.filter(name="x").exists()


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "Bearer thu_unknown"])
def test_missing_or_invalid_credentials_are_401(api, header):
    if header:
        api.credentials(HTTP_AUTHORIZATION=header)
    response = api.get("/api/v1/tasks")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_is_401(make_client):
    client = make_client("soon-revoked")
    api_key_revoke(ApiKey.objects.get(name="soon-revoked"))
    assert client.get("/api/v1/tasks").status_code == 401


def test_missing_scope_is_403_and_changes_nothing(make_client):
    reader = make_client("reader", scopes=("tasks:read",))
    response = reader.post("/api/v1/tasks", TASK)
    assert response.status_code == 403
    assert "tasks:write" in response.json()["message"]
    assert Task.objects.count() == 0
    assert reader.get("/api/v1/tasks").status_code == 200
    assert reader.get("/api/v1/execution-units").status_code == 403
    assert reader.post("/api/v1/execution-units/register", {}).status_code == 403


def test_register_needs_the_registration_scope(make_client):
    writer = make_client("writer", scopes=("units:read", "units:write"))
    response = writer.post(
        "/api/v1/execution-units/register", {"id": "u", "unitType": "X", "unitName": "n", "capacity": 1}
    )
    assert response.status_code == 403 and ExecutionUnit.objects.count() == 0


def test_unit_token_acts_only_for_its_own_unit(register_unit):
    unit_a, _ = register_unit("unit-a")
    _, _ = register_unit("unit-b")
    before = ExecutionUnit.objects.get(pk="unit-b").last_heartbeat_at
    response = unit_a.post("/api/v1/execution-units/unit-b/heartbeat", {"currentLoad": 1})
    assert response.status_code == 403
    assert unit_a.post("/api/v1/execution-units/unit-b/claim", {"max": 1}).status_code == 403
    assert ExecutionUnit.objects.get(pk="unit-b").last_heartbeat_at == before
    assert unit_a.post("/api/v1/execution-units/unit-a/heartbeat", {"currentLoad": 1}).status_code == 200


def test_unit_token_cannot_use_client_operations(register_unit):
    unit_a, _ = register_unit("unit-a")
    assert unit_a.post("/api/v1/tasks", TASK).status_code == 403
    assert unit_a.get("/api/v1/tasks").status_code == 403
    assert unit_a.get("/api/v1/tasks/stats").status_code == 403
    assert unit_a.delete("/api/v1/execution-units/unit-a").status_code == 403
    assert Task.objects.count() == 0


def test_unit_sees_only_tasks_leased_to_it(register_unit, client_a):
    unit_a, _ = register_unit("unit-a")
    unit_b, _ = register_unit("unit-b")
    task = client_a.post("/api/v1/tasks", TASK).json()
    assert unit_a.get(f"/api/v1/tasks/{task['id']}").status_code == 404  # not leased yet
    claimed = unit_a.post("/api/v1/execution-units/unit-a/claim", {"max": 1}).json()["items"]
    assert [t["id"] for t in claimed] == [task["id"]]
    assert unit_a.get(f"/api/v1/tasks/{task['id']}").status_code == 200
    assert unit_b.get(f"/api/v1/tasks/{task['id']}").status_code == 404


def test_api_keys_cannot_heartbeat_or_claim_for_a_unit(register_unit, client_a):
    register_unit("unit-a")
    assert client_a.post("/api/v1/execution-units/unit-a/heartbeat", {"currentLoad": 0}).status_code == 403
    assert client_a.post("/api/v1/execution-units/unit-a/claim", {"max": 1}).status_code == 403


def test_units_are_private_to_the_key_that_registered_them(register_unit, client_a, client_b):
    register_unit("unit-a")
    assert client_b.get("/api/v1/execution-units/unit-a").status_code == 404
    assert client_b.patch("/api/v1/execution-units/unit-a", {"status": "MAINTENANCE"}).status_code == 404
    assert client_b.delete("/api/v1/execution-units/unit-a").status_code == 404
    assert client_b.get("/api/v1/execution-units").json()["total"] == 0
    assert client_b.get("/api/v1/execution-units/stats").json()["total"] == 0
    response = client_b.post(
        "/api/v1/execution-units/register", {"id": "unit-a", "unitType": "X", "unitName": "hijack", "capacity": 1}
    )
    assert response.status_code == 403
    assert ExecutionUnit.objects.get(pk="unit-a").unit_name == "unit unit-a"


def test_reregistration_rotates_the_token(register_unit):
    old_client, first = register_unit("unit-a")
    new_client, second = register_unit("unit-a")
    assert first["token"] != second["token"]
    assert old_client.post("/api/v1/execution-units/unit-a/heartbeat", {"currentLoad": 0}).status_code == 401
    assert new_client.post("/api/v1/execution-units/unit-a/heartbeat", {"currentLoad": 0}).status_code == 200


def test_key_last_used_is_recorded(make_client):
    client = make_client("tracked")
    assert ApiKey.objects.get(name="tracked").last_used_at is None
    client.get("/api/v1/tasks")
    used = ApiKey.objects.get(name="tracked").last_used_at
    assert used is not None and (timezone.now() - used).total_seconds() < 60


def test_health_and_docs_are_public(api):
    assert api.get("/api/v1/health").status_code == 200
    assert api.get("/api/v1/schema").status_code == 200
    assert api.get("/api-docs").status_code == 200


def _staff(django_user_model, name, group=None):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user(name, password="pw-123456", is_staff=True)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


def test_operator_session_can_use_the_api(django_user_model, api):
    api.force_login(_staff(django_user_model, "op", "operators"))
    assert api.get("/api/v1/tasks").status_code == 200
    created = api.post("/api/v1/tasks", {"name": "n", "taskType": "X", "config": {}}, format="json")
    assert created.status_code == 201
    nonstaff = django_user_model.objects.create_user("joe", password="pw-123456")
    api.force_login(nonstaff)
    assert api.get("/api/v1/tasks").status_code == 401


def test_session_scopes_follow_the_console_roles(django_user_model, api):
    task = factories.task()
    api.force_login(_staff(django_user_model, "viewer", "viewers"))
    assert api.get("/api/v1/tasks").status_code == 200
    assert api.put(f"/api/v1/tasks/{task.pk}/status", {"status": "CANCELLED"}, format="json").status_code == 403
    api.force_login(_staff(django_user_model, "nobody"))
    assert api.get("/api/v1/tasks").status_code == 403
    assert Task.objects.get(pk=task.pk).status == "PENDING"


def test_a_unit_may_drain_itself_and_nothing_more(register_unit):
    unit_a, _ = register_unit("unit-a")
    register_unit("unit-b")
    assert unit_a.patch("/api/v1/execution-units/unit-a", {"status": "ONLINE"}).status_code == 403
    assert unit_a.patch("/api/v1/execution-units/unit-a", {"capacity": 100}).status_code == 403
    assert unit_a.patch("/api/v1/execution-units/unit-b", {"status": "MAINTENANCE"}).status_code == 404
    assert ExecutionUnit.objects.get(pk="unit-b").status == "ONLINE"
    response = unit_a.patch("/api/v1/execution-units/unit-a", {"status": "MAINTENANCE"})
    assert response.status_code == 200 and response.json()["status"] == "MAINTENANCE"
    assert ExecutionUnit.objects.get(pk="unit-a").status == "MAINTENANCE"
