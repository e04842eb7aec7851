"""Claim: type, priority then age, due time, free capacity, unit status; attempt increments."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from tasks.models import Task, TaskStatusHistory
from tests import factories
from units.claim import claim_tasks
from units.models import ExecutionUnit

pytestmark = pytest.mark.django_db


def test_claim_takes_highest_priority_then_oldest_of_its_type_only():
    low = factories.task(priority=1)
    high_old = factories.task(priority=9)
    high_new = factories.task(priority=9)
    factories.task(priority=99, task_type="OTHER")
    unit = factories.unit(capacity=10)
    claimed = claim_tasks(unit.pk, 3, now=timezone.now())
    assert [t.pk for t in claimed] == [high_old.pk, high_new.pk, low.pk]
    for task in claimed:
        assert task.status == "RUNNING" and task.unit_id == unit.pk and task.attempt == 1


def test_claim_respects_free_capacity_counted_by_the_server(client_a, register_unit):
    unit, _ = register_unit("u1", capacity=2)
    for _ in range(5):
        client_a.post("/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "config": {}})
    first = unit.post("/api/v1/execution-units/u1/claim", {"max": 10}).json()
    assert len(first["items"]) == 2 and first["unitStatus"] == "BUSY"
    assert unit.post("/api/v1/execution-units/u1/claim", {"max": 10}).json()["items"] == []
    t = first["items"][0]
    unit.post(f"/api/v1/tasks/{t['id']}/complete", {"attempt": t["attempt"], "result": {}})
    again = unit.post("/api/v1/execution-units/u1/claim", {"max": 10}).json()
    assert len(again["items"]) == 1


def test_claim_reply_carries_the_contract_fields(client_a, register_unit):
    unit, _ = register_unit("u1")
    client_a.post(
        "/api/v1/tasks",
        {"name": "t", "taskType": "DATA_PROCESSING", "priority": 2, "config": {"k": "v"}, "timeoutSeconds": 30},
    )
    task = unit.post("/api/v1/execution-units/u1/claim", {"max": 1}).json()["items"][0]
    assert set(task) == {"id", "name", "taskType", "priority", "config", "attempt", "timeoutSeconds", "traceparent"}
    assert task["config"] == {"k": "v"} and task["attempt"] == 1 and task["timeoutSeconds"] == 30


def test_claim_skips_tasks_not_yet_due():
    now = timezone.now()
    later = factories.task(scheduled_at=now + timedelta(minutes=5))
    unit = factories.unit()
    assert claim_tasks(unit.pk, 5, now=now) == []
    assert [t.pk for t in claim_tasks(unit.pk, 5, now=now + timedelta(minutes=6))] == [later.pk]


@pytest.mark.parametrize("status", ["OFFLINE", "MAINTENANCE"])
def test_offline_and_maintenance_units_claim_nothing(status):
    factories.task()
    unit = factories.unit(status=status)
    assert claim_tasks(unit.pk, 5, now=timezone.now()) == []
    assert Task.objects.get().status == "PENDING"


def test_each_claim_increments_attempt_and_writes_history():
    task = factories.task()
    unit = factories.unit()
    claim_tasks(unit.pk, 1, now=timezone.now())
    row = TaskStatusHistory.objects.filter(task=task).latest("id")
    assert (row.from_status, row.to_status, row.unit_id, row.attempt) == ("PENDING", "RUNNING", unit.pk, 1)


def test_claim_sets_the_timeout_deadline():
    with time_machine.travel("2026-01-01 00:00:00Z", tick=False):
        now = timezone.now()
        task = factories.task(timeout_seconds=90)
        claim_tasks(factories.unit().pk, 1, now=now)
    task.refresh_from_db()
    assert task.timeout_at == now + timedelta(seconds=90)


def test_claim_query_count_does_not_grow_with_max(django_assert_max_num_queries):
    for _ in range(25):
        factories.task()
    unit = factories.unit(capacity=100)
    with django_assert_max_num_queries(9):
        assert len(claim_tasks(unit.pk, 25, now=timezone.now())) == 25


def test_unknown_unit_claim_is_404(register_unit):
    ExecutionUnit.objects.all().delete()
    with pytest.raises(Exception, match="not found"):
        claim_tasks("ghost", 1, now=timezone.now())
