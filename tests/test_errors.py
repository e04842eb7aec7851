"""Bad input gets a 4xx in the one error shape, naming the field, and changes nothing."""

from __future__ import annotations

import json

import pytest

from tasks.models import Task
from units.models import ExecutionUnit

pytestmark = pytest.mark.django_db

GOOD = {"name": "t", "taskType": "DATA_PROCESSING", "priority": 1, "config": {}}


def _assert_error(response, status, field=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"statusCode", "code", "message"}
    assert body["statusCode"] == status
    if field is not None:
        assert body["message"].startswith(f"{field}:"), body
        assert field in body["details"]["fields"]
    return body


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"priority": "high"}, "priority"),
        ({"priority": 10**30}, "priority"),
        ({"priority": 1001}, "priority"),
        ({"name": ""}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": None}, "name"),
        ({"name": "bad\x00name"}, "name"),
        ({"taskType": "has space"}, "taskType"),
        ({"taskType": "T" * 65}, "taskType"),
        ({"config": [1, 2]}, "config"),
        ({"config": "text"}, "config"),
        ({"config": {"big": "x" * 70_000}}, "config"),
        ({"maxRetries": -1}, "maxRetries"),
        ({"timeoutSeconds": 0}, "timeoutSeconds"),
        ({"scheduledAt": "tomorrow"}, "scheduledAt"),
        ({"scheduledAt": "0001-01-01T00:00:00Z"}, "scheduledAt"),
        ({"scheduledAt": "9999-12-31T23:59:59-05:00"}, "scheduledAt"),
    ],
)
def test_bad_task_fields_are_400_naming_the_field_and_create_nothing(client_a, changes, field):
    _assert_error(client_a.post("/api/v1/tasks", GOOD | changes), 400, field)
    assert Task.objects.count() == 0


def test_missing_required_fields_are_named(client_a):
    body = _assert_error(client_a.post("/api/v1/tasks", {"priority": 1}), 400)
    assert set(body["details"]["fields"]) == {"name", "taskType"}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("{bad json", "body"),
        ("[1, 2, 3]", "body"),
        ('"just a string"', "body"),
        ("null", "body"),
        ('{"name": NaN}', "body"),
        ('{"name": "\\ud800", "taskType": "X", "config": {}}', "body"),
        ("[" * 5000 + "]" * 5000, "body"),
        ('{"name": "n", "taskType": "X", "config": {"big": 1e400}}', "body"),
        ('{"config": ' + '{"a": ' * 40 + "1" + "}" * 40 + ', "name": "n", "taskType": "X"}', "body"),
    ],
)
def test_malformed_bodies_are_400_not_500(client_a, raw, field):
    _assert_error(client_a.post("/api/v1/tasks", raw), 400, field)
    assert Task.objects.count() == 0


def test_invalid_utf8_is_400(client_a):
    response = client_a.client.post("/api/v1/tasks", data=b'{"name": "\xff"}', content_type="application/json")
    _assert_error(response, 400, "body")


def test_non_json_content_type_is_415(client_a):
    response = client_a.client.post("/api/v1/tasks", data="name=x", content_type="application/x-www-form-urlencoded")
    _assert_error(response, 415)


def test_json_bodies_over_the_limit_are_413_and_never_parsed(client_a, settings, monkeypatch):
    settings.API_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    from taskhub.api import parsers

    parsed: list[int] = []

    def spy(*args, **kwargs):
        parsed.append(1)
        return {}

    monkeypatch.setattr(parsers.StrictJSONParser, "parse", spy)
    big = json.dumps(GOOD | {"config": {"blob": "x" * 4096}})
    body = _assert_error(client_a.post("/api/v1/tasks", big), 413)
    assert body["code"] == "payload_too_large"
    assert parsed == [] and Task.objects.count() == 0


@pytest.mark.parametrize(
    "path", ["/api/v1/execution-units/register", "/api/v1/tasks/1/logs", "/api/v1/execution-units/x/heartbeat"]
)
def test_body_limit_holds_on_every_endpoint(client_a, settings, path):
    settings.API_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    _assert_error(client_a.post(path, {"pad": "x" * 2000}), 413)


def test_invalid_content_length_is_400(client_a):
    response = client_a.client.generic(
        "POST", "/api/v1/tasks", "{}", content_type="application/json", CONTENT_LENGTH="abc"
    )
    _assert_error(response, 400)


def test_unknown_api_route_is_json_404(client_a):
    body = _assert_error(client_a.get("/api/v1/does-not-exist"), 404)
    assert body["code"] == "not_found"


def test_missing_task_is_404_in_the_error_shape(client_a):
    _assert_error(client_a.get("/api/v1/tasks/999999"), 404)
    _assert_error(client_a.put("/api/v1/tasks/999999/status", {"status": "CANCELLED"}), 404)


def test_non_numeric_task_id_is_404_not_500(client_a):
    _assert_error(client_a.get("/api/v1/tasks/abc"), 404)
    _assert_error(client_a.get("/api/v1/tasks/99999999999999999999999"), 404)


def test_method_not_allowed_is_405_json(client_a):
    _assert_error(client_a.put("/api/v1/tasks", {}), 405)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "bad id", "unitType": "X", "unitName": "n", "capacity": 1}, "id"),
        ({"id": "u1", "unitType": "X", "unitName": "n", "capacity": 0}, "capacity"),
        ({"id": "u1", "unitType": "X", "unitName": "n", "capacity": 5, "endpoint": "ftp://x"}, "endpoint"),
        ({"id": "u1", "unitType": "X", "unitName": "n", "capacity": 5, "endpoint": "http://h:99999"}, "endpoint"),
        ({"id": "u1", "unitType": "X", "unitName": "n", "capacity": 5, "metadata": [1]}, "metadata"),
        ({"id": "u1", "unitType": "X", "unitName": "n", "capacity": "five"}, "capacity"),
    ],
)
def test_bad_register_input_is_400_and_registers_nothing(client_a, body, field):
    _assert_error(client_a.post("/api/v1/execution-units/register", body), 400, field)
    assert ExecutionUnit.objects.count() == 0


def test_bad_heartbeat_is_400_and_changes_nothing(register_unit):
    unit, body = register_unit()
    before = ExecutionUnit.objects.get(pk=body["id"]).last_heartbeat_at
    _assert_error(unit.post(f"/api/v1/execution-units/{body['id']}/heartbeat", {"currentLoad": -1}), 400, "currentLoad")
    twice = {"currentLoad": 1, "tasks": [{"id": 5, "attempt": 1}, {"id": 5, "attempt": 2}]}
    _assert_error(unit.post(f"/api/v1/execution-units/{body['id']}/heartbeat", twice), 400, "tasks")
    _assert_error(
        unit.post(
            f"/api/v1/execution-units/{body['id']}/heartbeat", {"currentLoad": 1, "tasks": [{"id": "x", "attempt": 1}]}
        ),
        400,
        "tasks[0].id",
    )
    assert ExecutionUnit.objects.get(pk=body["id"]).last_heartbeat_at == before


def test_nested_log_entry_errors_name_the_entry(client_a):
    task = client_a.post("/api/v1/tasks", GOOD).json()
    body = _assert_error(
        client_a.post(
            f"/api/v1/tasks/{task['id']}/logs", {"entries": [{"message": "ok"}, {"level": "LOUD", "message": "x"}]}
        ),
        400,
    )
    assert "entries[1].level" in body["details"]["fields"]


@pytest.mark.parametrize(
    "query",
    ["search=99999999999999999999999999", "limit=99999999999999999999999", "page=99999999999999999999"],
)
def test_huge_numbers_in_queries_are_not_500(client_a, query):
    assert client_a.get(f"/api/v1/tasks?{query}").status_code in (200, 400)


def test_huge_ids_in_bodies_are_400(client_a, register_unit):
    unit, body = register_unit()
    response = unit.post(
        f"/api/v1/execution-units/{body['id']}/heartbeat", {"currentLoad": 0, "tasks": [{"id": 10**30, "attempt": 1}]}
    )
    _assert_error(response, 400, "tasks[0].id")
    _assert_error(client_a.post("/api/v1/tasks/redrive", {"ids": [10**30]}), 400, "ids[0]")
    task = client_a.post("/api/v1/tasks", GOOD).json()
    _assert_error(client_a.get(f"/api/v1/tasks/{task['id']}/logs?after={10**30}"), 400, "after")
