"""Reports carry the attempt: stale ones are refused with 409 and change nothing; repeats of an
accepted report leave one result."""

from __future__ import annotations

import pytest

from tasks.models import Task, TaskExecutionLog, TaskStatusHistory

pytestmark = pytest.mark.django_db
TASK = {"name": "t", "taskType": "DATA_PROCESSING", "priority": 1, "config": {}}


@pytest.fixture
def leased(leased):
    """One task leased to unit u1 (conftest's `leased`, narrowed): (unit client, the task)."""
    unit, (task,) = leased(1, "u1")
    return unit, task


def _snapshot(task_id):
    task = Task.objects.get(pk=task_id)
    return (
        task.status,
        task.attempt,
        task.progress,
        task.result,
        task.error,
        TaskStatusHistory.objects.filter(task_id=task_id).count(),
        TaskExecutionLog.objects.filter(task_id=task_id).count(),
    )


def test_live_attempt_reports_are_accepted(leased):
    unit, task = leased
    tid, attempt = task["id"], task["attempt"]
    assert unit.post(f"/api/v1/tasks/{tid}/progress", {"attempt": attempt, "progress": 40}).status_code == 200
    assert (
        unit.post(
            f"/api/v1/tasks/{tid}/logs", {"attempt": attempt, "entries": [{"level": "INFO", "message": "half"}]}
        ).status_code
        == 201
    )
    response = unit.post(f"/api/v1/tasks/{tid}/complete", {"attempt": attempt, "result": {"rows": 3}})
    assert response.status_code == 200 and response.json()["accepted"] is True
    row = Task.objects.get(pk=tid)
    assert (row.status, row.result, row.progress) == ("COMPLETED", {"rows": 3}, 100)
    assert TaskExecutionLog.objects.get(task_id=tid).unit_id == "u1"


@pytest.mark.parametrize("report", ["progress", "logs", "complete", "fail"])
def test_stale_attempt_report_is_refused_and_changes_nothing(leased, report):
    unit, task = leased
    tid = task["id"]
    before = _snapshot(tid)
    body = {
        "attempt": task["attempt"] + 1,
        "progress": 10,
        "result": {},
        "error": "x",
        "retryable": True,
        "entries": [{"message": "late"}],
    }
    response = unit.post(f"/api/v1/tasks/{tid}/{report}", body)
    assert response.status_code == 409
    assert response.json()["code"] == "stale_attempt"
    assert response.json()["details"]["command"] == "abort"
    assert _snapshot(tid) == before


def test_report_from_a_unit_that_does_not_hold_the_task_is_refused(leased, register_unit):
    _, task = leased
    other, _ = register_unit("u2")
    before = _snapshot(task["id"])
    response = other.post(f"/api/v1/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": {}})
    assert response.status_code == 409
    assert "liveAttempt" not in response.json()["details"]  # nothing about another unit's work
    assert _snapshot(task["id"]) == before


def test_duplicate_complete_leaves_one_result(leased):
    unit, task = leased
    first = unit.post(f"/api/v1/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": {"v": 1}})
    second = unit.post(f"/api/v1/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": {"v": 2}})
    assert first.status_code == second.status_code == 200
    assert first.json()["accepted"] is True and second.json()["accepted"] is False
    assert Task.objects.get(pk=task["id"]).result == {"v": 1}
    assert TaskStatusHistory.objects.filter(task_id=task["id"], to_status="COMPLETED").count() == 1


def test_duplicate_fail_leaves_one_failure(leased):
    unit, task = leased
    body = {"attempt": task["attempt"], "error": "boom", "retryable": True}
    assert unit.post(f"/api/v1/tasks/{task['id']}/fail", body).json()["accepted"] is True
    assert unit.post(f"/api/v1/tasks/{task['id']}/fail", body).json()["accepted"] is False
    assert TaskStatusHistory.objects.filter(task_id=task["id"], to_status="FAILED").count() == 1
    assert Task.objects.get(pk=task["id"]).retry_count == 1


def test_complete_after_fail_of_same_attempt_is_refused(leased):
    unit, task = leased
    unit.post(f"/api/v1/tasks/{task['id']}/fail", {"attempt": task["attempt"], "error": "boom"})
    response = unit.post(f"/api/v1/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": {}})
    assert response.status_code == 409
    assert Task.objects.get(pk=task["id"]).status == "FAILED"


def test_cancelled_running_task_refuses_the_late_result_and_tells_the_unit(leased, client_a):
    unit, task = leased
    assert (
        client_a.put(f"/api/v1/tasks/{task['id']}/status", {"status": "CANCELLED", "reason": "stop"}).status_code == 200
    )
    beat = unit.post(
        "/api/v1/execution-units/u1/heartbeat",
        {"currentLoad": 1, "tasks": [{"id": task["id"], "attempt": task["attempt"]}]},
    ).json()
    assert beat["commands"] == [
        {"taskId": task["id"], "attempt": task["attempt"], "command": "cancel", "reason": "task was cancelled"}
    ]
    late = unit.post(f"/api/v1/tasks/{task['id']}/complete", {"attempt": task["attempt"], "result": {}})
    assert late.status_code == 409
    assert Task.objects.get(pk=task["id"]).status == "CANCELLED"


def test_pause_of_running_task_is_delivered_without_a_task_list(leased, client_a):
    unit, task = leased
    client_a.put(f"/api/v1/tasks/{task['id']}/status", {"status": "PAUSED"})
    beat = unit.post("/api/v1/execution-units/u1/heartbeat", {"currentLoad": 1}).json()
    assert [(c["taskId"], c["command"]) for c in beat["commands"]] == [(task["id"], "pause")]
    # Once the unit stops listing the task, the command is acknowledged and not repeated.
    unit.post("/api/v1/execution-units/u1/heartbeat", {"currentLoad": 0, "tasks": []})
    assert unit.post("/api/v1/execution-units/u1/heartbeat", {"currentLoad": 0}).json()["commands"] == []


def test_the_fencing_rule_is_one_mapping_and_its_sql_form_selects_what_its_filter_form_does():
    from django.db import connection

    from taskhub.base.sql import qn
    from tasks.fencing import lease_sql, live_lease
    from tests import factories

    first, second = factories.unit("fence-a"), factories.unit("fence-b")
    leased = [factories.leased_task(first), factories.leased_task(second)]
    factories.task()  # PENDING, no unit
    Task.objects.filter(pk=leased[1].pk).update(attempt=2)
    for unit_id, attempt in (("fence-a", None), ("fence-a", 1), ("fence-a", 2), ("fence-b", 2), ("nobody", None)):
        condition, params = lease_sql(unit_id, attempt)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {qn('id')} FROM {qn(Task._meta.db_table)} WHERE {condition}", params)
            by_sql = sorted(row[0] for row in cursor.fetchall())
        by_filter = sorted(Task.objects.filter(**live_lease(unit_id, attempt)).values_list("id", flat=True))
        assert by_sql == by_filter, (unit_id, attempt)
    assert sorted(Task.objects.filter(**live_lease("fence-a")).values_list("id", flat=True)) == [leased[0].pk]
