"""Every example request of the seed README, verbatim (plus an auth header)."""

from __future__ import annotations

import pytest

from tasks.models import Task, TaskStatusHistory
from units.models import ExecutionUnit

pytestmark = pytest.mark.django_db

CREATE_BODY = """{
  "name": "示例任务",
  "taskType": "DATA_PROCESSING",
  "priority": 1,
  "config": {
    "inputFile": "data.csv",
    "outputFormat": "json"
  }
}"""
STATUS_BODY = """{
  "status": "RUNNING",
  "reason": "任务开始执行"
}"""
REGISTER_BODY = """{
  "id": "worker-001",
  "unitType": "DATA_PROCESSING",
  "unitName": "数据处理单元",
  "capacity": 5,
  "endpoint": "http://worker-001:8080"
}"""
HEARTBEAT_BODY = """{
  "currentLoad": 2,
  "metadata": {
    "cpuUsage": 45.2,
    "memoryUsage": 67.8
  }
}"""


def test_create_task_example_creates_a_pending_task(client_a):
    response = client_a.post("/api/v1/tasks", CREATE_BODY)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "示例任务"
    assert body["taskType"] == "DATA_PROCESSING"
    assert body["priority"] == 1
    assert body["config"] == {"inputFile": "data.csv", "outputFormat": "json"}
    assert body["status"] == "PENDING"
    task = Task.objects.get(pk=body["id"])
    assert task.name == "示例任务" and task.config["inputFile"] == "data.csv"


def test_list_tasks_example_pages_and_filters_by_status(client_a):
    for _ in range(12):
        client_a.post("/api/v1/tasks", CREATE_BODY)
    first = client_a.post("/api/v1/tasks", CREATE_BODY).json()
    client_a.put(f"/api/v1/tasks/{first['id']}/status", {"status": "CANCELLED"})
    response = client_a.get("/api/v1/tasks?page=1&limit=10&status=PENDING")
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 12
    assert body["page"] == 1 and body["limit"] == 10 and body["totalPages"] == 2
    assert len(body["items"]) == 10
    assert {item["status"] for item in body["items"]} == {"PENDING"}


def test_update_status_example_starts_task_1_and_records_the_reason(client_a):
    created = client_a.post("/api/v1/tasks", CREATE_BODY).json()
    assert created["id"] == Task.objects.earliest("id").pk
    response = client_a.put(f"/api/v1/tasks/{created['id']}/status", STATUS_BODY)
    assert response.status_code == 200
    assert response.json()["status"] == "RUNNING"
    last = TaskStatusHistory.objects.filter(task_id=created["id"]).latest("id")
    assert (last.from_status, last.to_status, last.reason) == ("PENDING", "RUNNING", "任务开始执行")


def test_put_status_on_literal_path_tasks_1(client_a, django_db_reset_sequences):
    """The seed writes `PUT /api/v1/tasks/1/status`: on a fresh database the first task is 1."""
    client_a.post("/api/v1/tasks", CREATE_BODY)
    response = client_a.put("/api/v1/tasks/1/status", STATUS_BODY)
    assert response.status_code == 200, response.content
    assert response.json()["id"] == 1


def test_register_example_returns_the_unit_and_its_token(client_a):
    response = client_a.post("/api/v1/execution-units/register", REGISTER_BODY)
    assert response.status_code == 201
    body = response.json()
    assert body["id"] == "worker-001"
    assert body["unitName"] == "数据处理单元"
    assert body["capacity"] == 5 and body["endpoint"] == "http://worker-001:8080"
    assert body["token"].startswith("thu_")
    unit = ExecutionUnit.objects.get(pk="worker-001")
    assert unit.token_hash != body["token"] and body["token"] not in unit.token_hash


def test_heartbeat_example_records_load_and_metadata(client_a):
    from tests.conftest import JsonClient

    token = client_a.post("/api/v1/execution-units/register", REGISTER_BODY).json()["token"]
    unit_client = JsonClient(token)
    response = unit_client.post("/api/v1/execution-units/worker-001/heartbeat", HEARTBEAT_BODY)
    assert response.status_code == 200
    body = response.json()
    assert body["unitId"] == "worker-001" and body["status"] == "ONLINE"
    assert body["heartbeatIntervalSeconds"] > 0 and body["commands"] == []
    unit = ExecutionUnit.objects.get(pk="worker-001")
    assert unit.current_load == 2
    assert unit.metadata == {"cpuUsage": 45.2, "memoryUsage": 67.8}


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/health/database", "/api/v1/health/redis"])
def test_health_examples_answer_json_without_a_key(api, path):
    response = api.get(path)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
