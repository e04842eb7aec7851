"""Tasks REST API: create (idempotent), list/filter/page/cursor, get, patch, delete, logs, stats."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from taskhub.apikeys.models import ApiKey
from tasks.models import Task, TaskExecutionLog
from tests import factories

pytestmark = pytest.mark.django_db


def _create(client, **overrides):
    body = {"name": "t", "taskType": "DATA_PROCESSING", "priority": 1, "config": {"a": 1}} | overrides
    response = client.post("/api/v1/tasks", body)
    assert response.status_code == 201, response.content
    return response.json()


def test_create_sets_defaults_from_settings(client_a, settings):
    settings.TASK_MAX_RETRY_COUNT = 7
    body = _create(client_a)
    assert body["maxRetries"] == 7 and body["attempt"] == 0 and body["timeoutSeconds"] is None


def test_idempotency_key_repeat_returns_the_first_task(client_a):
    body = {"name": "once", "taskType": "DATA_PROCESSING", "priority": 1, "config": {}}
    first = client_a.post("/api/v1/tasks", body, HTTP_IDEMPOTENCY_KEY="k-1")
    second = client_a.post("/api/v1/tasks", body, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second["Idempotency-Replayed"] == "true"
    assert Task.objects.filter(name="once").count() == 1


def test_idempotency_key_is_per_client(client_a, client_b):
    body = {"name": "shared-key", "taskType": "X", "priority": 0, "config": {}}
    a = client_a.post("/api/v1/tasks", body, HTTP_IDEMPOTENCY_KEY="same")
    b = client_b.post("/api/v1/tasks", body, HTTP_IDEMPOTENCY_KEY="same")
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_idempotency_key_reused_with_other_body_is_409_and_creates_nothing(client_a):
    client_a.post("/api/v1/tasks", {"name": "a", "taskType": "X", "config": {}}, HTTP_IDEMPOTENCY_KEY="k")
    response = client_a.post("/api/v1/tasks", {"name": "b", "taskType": "X", "config": {}}, HTTP_IDEMPOTENCY_KEY="k")
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["message"]
    assert Task.objects.count() == 1


def test_list_filters_by_type_priority_search_and_dates(client_a):
    old = _create(client_a, name="old report", taskType="REPORT", priority=5)
    Task.objects.filter(pk=old["id"]).update(created_at=timezone.now() - timedelta(days=2))
    _create(client_a, name="fresh report", taskType="REPORT", priority=1)
    _create(client_a, name="etl", taskType="DATA_PROCESSING", priority=5)

    def ids(query):
        response = client_a.get(f"/api/v1/tasks?{query}")
        assert response.status_code == 200, response.content
        return [item["name"] for item in response.json()["items"]]

    assert sorted(ids("taskType=REPORT")) == ["fresh report", "old report"]
    assert sorted(ids("priority=5")) == ["etl", "old report"]
    assert ids("search=fresh") == ["fresh report"]
    since = (timezone.now() - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert sorted(ids(f"createdAfter={since}")) == ["etl", "fresh report"]
    assert ids(f"createdBefore={since}") == ["old report"]
    assert ids("ordering=priority")[0] == "fresh report"
    assert ids(f"search={old['id']}") == ["old report"]


def test_list_limit_is_capped(client_a, settings):
    settings.API_PAGE_SIZE_MAX = 5
    for _ in range(8):
        _create(client_a)
    body = client_a.get("/api/v1/tasks?limit=1000").json()
    assert body["limit"] == 5 and len(body["items"]) == 5 and body["total"] == 8


def test_cursor_mode_walks_every_task_once(client_a):
    created = [_create(client_a)["id"] for _ in range(7)]
    seen, cursor = [], ""
    for _ in range(10):
        body = client_a.get(f"/api/v1/tasks?limit=3&cursor={cursor}").json()
        assert "total" not in body
        seen += [item["id"] for item in body["items"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == sorted(created, reverse=True)


@pytest.mark.parametrize("ordering", ["-id", "id", "priority", "-priority", "createdAt", "-updatedAt"])
def test_cursor_mode_walks_every_task_once_in_any_ordering(client_a, ordering):
    created = [_create(client_a, priority=n % 3)["id"] for n in range(8)]
    expected = [t["id"] for t in client_a.get(f"/api/v1/tasks?limit=100&ordering={ordering}").json()["items"]]
    assert sorted(expected) == sorted(created)
    seen, cursor = [], ""
    for _ in range(10):
        body = client_a.get(f"/api/v1/tasks?limit=3&ordering={ordering}&cursor={cursor}").json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert seen == expected  # the page mode's order, each task once


def test_any_cursor_the_schema_allows_is_a_position(client_a):
    ids = [_create(client_a, priority=1)["id"] for _ in range(4)]
    newest_first = sorted(ids, reverse=True)

    def listed(query):
        response = client_a.get(f"/api/v1/tasks?limit=100&{query}")
        assert response.status_code == 200, response.content
        return [t["id"] for t in response.json()["items"]]

    assert listed(f"cursor={newest_first[1]}") == newest_first[2:]  # after that id
    assert listed(f"cursor={ids[1]}&ordering=id") == ids[2:]
    # <value>.<id>: after that row of the ordering; a value alone: after every row with it.
    assert listed(f"cursor=1.{newest_first[1]}&ordering=-priority") == newest_first[2:]
    assert listed("cursor=1&ordering=-priority") == []
    assert listed("cursor=0&ordering=priority") == ids
    # Far beyond every row, either way, and with a date ordering (microseconds since 1970).
    assert listed("cursor=9999999999999999999.9999999999999999999") == newest_first
    assert listed("cursor=-9999999999999999999&ordering=createdAt") == ids
    assert listed("cursor=9999999999999999999&ordering=createdAt") == []


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "limit=abc",
        "status=DONE",
        "createdAfter=yesterday",
        "createdAfter=1969-12-31T23:00:00Z",
        "createdBefore=2200-01-01T00:00:00Z",
        "cursor=%%%",
        "cursor=aWQ6MTIz",
        "ordering=name",
        "priority=99999",
    ],
)
def test_bad_list_query_is_400_naming_the_parameter(client_a, query):
    response = client_a.get(f"/api/v1/tasks?{query}")
    assert response.status_code == 400
    name = query.split("=")[0]
    assert response.json()["message"].startswith(name)


def test_get_patch_delete(client_a):
    task = _create(client_a)
    assert client_a.get(f"/api/v1/tasks/{task['id']}").json()["name"] == "t"
    patched = client_a.patch(f"/api/v1/tasks/{task['id']}", {"priority": 9, "config": {"b": 2}})
    assert patched.status_code == 200 and patched.json()["priority"] == 9
    assert patched.json()["config"] == {"b": 2}
    assert client_a.delete(f"/api/v1/tasks/{task['id']}").status_code == 204
    assert client_a.get(f"/api/v1/tasks/{task['id']}").status_code == 404


def test_patch_refuses_fields_that_do_not_fit_the_state(client_a):
    task = _create(client_a)
    client_a.put(f"/api/v1/tasks/{task['id']}/status", {"status": "RUNNING"})
    response = client_a.patch(f"/api/v1/tasks/{task['id']}", {"config": {"x": 1}})
    assert response.status_code == 409
    assert "config" in response.json()["message"]
    assert Task.objects.get(pk=task["id"]).config == {"a": 1}
    assert client_a.patch(f"/api/v1/tasks/{task['id']}", {"priority": 3}).status_code == 200


def test_patch_cannot_change_status(client_a):
    task = _create(client_a)
    response = client_a.patch(f"/api/v1/tasks/{task['id']}", {"status": "COMPLETED"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("status")
    assert Task.objects.get(pk=task["id"]).status == "PENDING"


def test_patch_scheduled_at_moves_the_claim_time(client_a):
    task = _create(client_a)
    later = timezone.now() + timedelta(hours=1)
    client_a.patch(f"/api/v1/tasks/{task['id']}", {"scheduledAt": later.isoformat()})
    assert abs((Task.objects.get(pk=task["id"]).available_at - later).total_seconds()) < 1


def test_running_task_cannot_be_deleted(client_a):
    task = _create(client_a)
    client_a.put(f"/api/v1/tasks/{task['id']}/status", {"status": "RUNNING"})
    response = client_a.delete(f"/api/v1/tasks/{task['id']}")
    assert response.status_code == 409
    assert Task.objects.filter(pk=task["id"]).exists()


def test_logs_written_by_client_are_read_back_in_order_and_filtered(client_a):
    task = _create(client_a)
    assert client_a.post(f"/api/v1/tasks/{task['id']}/logs", {"level": "INFO", "message": "one"}).status_code == 201
    response = client_a.post(
        f"/api/v1/tasks/{task['id']}/logs",
        {
            "entries": [
                {"level": "WARN", "message": "two"},
                {"level": "ERROR", "message": "three", "timestamp": "2026-01-01T00:00:00Z"},
            ]
        },
    )
    assert response.status_code == 201 and response.json() == {"stored": 2}
    items = client_a.get(f"/api/v1/tasks/{task['id']}/logs").json()["items"]
    assert [i["message"] for i in items] == ["one", "two", "three"]
    assert items[2]["timestamp"].startswith("2026-01-01")
    errors = client_a.get(f"/api/v1/tasks/{task['id']}/logs?level=ERROR").json()["items"]
    assert [i["message"] for i in errors] == ["three"]
    page = client_a.get(f"/api/v1/tasks/{task['id']}/logs?limit=1&after={items[0]['id']}").json()
    assert [i["message"] for i in page["items"]] == ["two"] and page["nextAfter"] == items[1]["id"]


def test_log_cap_per_task_refuses_more_and_stores_nothing(client_a, settings):
    settings.TASK_MAX_LOG_ENTRIES = 3
    task = _create(client_a)
    client_a.post(f"/api/v1/tasks/{task['id']}/logs", {"entries": [{"message": "a"}, {"message": "b"}]})
    response = client_a.post(f"/api/v1/tasks/{task['id']}/logs", {"entries": [{"message": "c"}, {"message": "d"}]})
    assert response.status_code == 409
    assert TaskExecutionLog.objects.filter(task_id=task["id"]).count() == 2


def test_history_endpoint_lists_the_chain(client_a):
    task = _create(client_a)
    client_a.put(f"/api/v1/tasks/{task['id']}/status", {"status": "PAUSED", "reason": "hold"})
    items = client_a.get(f"/api/v1/tasks/{task['id']}/history").json()["items"]
    assert [(i["fromStatus"], i["toStatus"]) for i in items] == [(None, "PENDING"), ("PENDING", "PAUSED")]
    assert items[1]["reason"] == "hold" and items[1]["actor"] == "key:client-a"


def test_stats_count_by_status_and_type(client_a):
    a = _create(client_a, taskType="A")
    _create(client_a, taskType="A")
    _create(client_a, taskType="B")
    client_a.put(f"/api/v1/tasks/{a['id']}/status", {"status": "CANCELLED"})
    body = client_a.get("/api/v1/tasks/stats").json()
    assert body["total"] == 3
    assert body["byStatus"]["PENDING"] == 2 and body["byStatus"]["CANCELLED"] == 1
    assert body["byType"] == {"A": {"PENDING": 1, "CANCELLED": 1}, "B": {"PENDING": 1}}


def test_clients_see_only_their_own_tasks_everywhere(client_a, client_b):
    mine = _create(client_a)
    _create(client_b)
    assert client_b.get(f"/api/v1/tasks/{mine['id']}").status_code == 404
    assert client_b.put(f"/api/v1/tasks/{mine['id']}/status", {"status": "CANCELLED"}).status_code == 404
    assert client_b.patch(f"/api/v1/tasks/{mine['id']}", {"name": "x"}).status_code == 404
    assert client_b.delete(f"/api/v1/tasks/{mine['id']}").status_code == 404
    assert client_b.get(f"/api/v1/tasks/{mine['id']}/history").status_code == 404
    assert client_b.get(f"/api/v1/tasks/{mine['id']}/logs").status_code == 404
    assert [t["id"] for t in client_b.get("/api/v1/tasks").json()["items"]] != [mine["id"]]
    assert mine["id"] not in [t["id"] for t in client_b.get("/api/v1/tasks").json()["items"]]
    assert client_b.get("/api/v1/tasks/stats").json()["total"] == 1
    assert Task.objects.get(pk=mine["id"]).status == "PENDING"


def test_list_query_count_is_constant(client_a, django_assert_max_num_queries):
    for _ in range(30):
        factories.task(owner=ApiKey.objects.get(name="client-a"))
    with django_assert_max_num_queries(4):
        response = client_a.get("/api/v1/tasks?limit=30")
    assert len(response.json()["items"]) == 30


def test_a_date_time_is_taken_by_the_year_it_is_written_with(client_a):
    # The schema's pattern and the server's check are one rule: a year from 1970 to 2199, any offset.
    for at in ("1970-01-01T00:30:00+01:00", "2199-12-31T23:00:00-05:00"):
        assert _create(client_a, scheduledAt=at)["scheduledAt"] is not None
    for at in ("1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z", "20240101T000000Z", "0999-01-01T00:00:00Z"):
        response = client_a.post("/api/v1/tasks", {"name": "t", "taskType": "T", "scheduledAt": at})
        assert response.status_code == 400 and "scheduledAt" in response.json()["details"]["fields"], at
