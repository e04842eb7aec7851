"""Heartbeats, the sweeper and failover (I5, I6), the failover cap (poison), MAINTENANCE drain."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone

from tasks.models import Task, TaskStatusHistory
from tests import factories
from units.claim import claim_tasks
from units.models import ExecutionUnit
from units.services import unit_heartbeat
from units.sweeper import sweep_heartbeats

pytestmark = pytest.mark.django_db


@pytest.fixture
def t0():
    return timezone.now()


def test_silent_unit_goes_offline_and_its_tasks_fail_over_with_history(t0, settings):
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    (task,) = factories.leased_tasks("u1", now=t0)
    assert sweep_heartbeats(t0 + timedelta(seconds=29))["unitsOffline"] == 0
    result = sweep_heartbeats(t0 + timedelta(seconds=31))
    assert result == {"unitsOffline": 1, "failedOver": 1, "poisoned": 0, "orphans": 0}
    assert ExecutionUnit.objects.get(pk="u1").status == "OFFLINE"
    task.refresh_from_db()
    assert (task.status, task.failover_count, task.retry_count) == ("PENDING", 1, 0)
    row = TaskStatusHistory.objects.filter(task=task).latest("id")
    assert (row.from_status, row.to_status, row.unit_id, row.actor) == (
        "RUNNING",
        "PENDING",
        "u1",
        "job:sweep_heartbeats",
    )
    assert "heartbeat timeout" in row.reason


def test_failed_over_task_is_reclaimable_within_timeout_plus_sweep_interval(t0, settings):
    """I5: the sweeper runs every SWEEP_INTERVAL; at the first run after the timeout the task is free."""
    settings.UNIT_HEARTBEAT_TIMEOUT, settings.SWEEP_INTERVAL = 30, 5
    factories.leased_tasks("u1", now=t0)
    other = factories.unit("u2", now=t0)
    sweep_at = t0 + timedelta(seconds=30 + 5)
    unit_heartbeat("u2", current_load=0, metadata=None, tasks=[], now=sweep_at)
    sweep_heartbeats(sweep_at)
    assert [t.unit_id for t in claim_tasks(other.pk, 1, now=sweep_at)] == ["u2"]


def test_heartbeating_unit_keeps_its_task_forever(t0, settings):
    """I6."""
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    (task,) = factories.leased_tasks("u1", now=t0)
    for minute in range(1, 11):
        now = t0 + timedelta(seconds=20 * minute)
        unit_heartbeat("u1", current_load=1, metadata=None, tasks=[{"id": task.pk, "attempt": 1}], now=now)
        sweep_heartbeats(now + timedelta(seconds=15))
    task.refresh_from_db()
    assert (task.status, task.unit_id, task.attempt) == ("RUNNING", "u1", 1)


def test_task_the_unit_stops_listing_fails_over_at_once(t0, settings):
    settings.UNIT_HEARTBEAT_INTERVAL = 2
    kept, dropped = factories.leased_tasks("u1", 2, now=t0)
    reply = unit_heartbeat(
        "u1",
        current_load=1,
        metadata=None,
        tasks=[{"id": kept.pk, "attempt": 1, "progress": 50}],
        now=t0 + timedelta(seconds=2.5),
    )
    assert reply["failedOver"] == [dropped.pk]
    dropped.refresh_from_db()
    kept.refresh_from_db()
    assert dropped.status == "PENDING" and kept.status == "RUNNING" and kept.progress == 50
    row = TaskStatusHistory.objects.filter(task=dropped).latest("id")
    assert (row.from_status, row.to_status, row.actor) == ("RUNNING", "PENDING", "job:heartbeat")


def test_a_lease_younger_than_the_grace_survives_a_list_sent_before_the_claim_reply(t0, settings):
    """The unit's heartbeat thread may send its list while a claim reply is still in flight."""
    settings.UNIT_HEARTBEAT_INTERVAL = 2
    (task,) = factories.leased_tasks("u1", now=t0)
    reply = unit_heartbeat("u1", current_load=0, metadata=None, tasks=[], now=t0 + timedelta(seconds=1))
    assert reply["failedOver"] == [] and reply["runningTasks"] == 1
    assert Task.objects.get(pk=task.pk).status == "RUNNING"
    later = unit_heartbeat("u1", current_load=0, metadata=None, tasks=[], now=t0 + timedelta(seconds=3))
    assert later["failedOver"] == [task.pk]


def test_heartbeat_records_progress_of_many_tasks_in_one_update(t0, django_assert_max_num_queries):
    tasks = factories.leased_tasks("u1", 5, now=t0)
    listed = [{"id": t.pk, "attempt": 1, "progress": 10 * i} for i, t in enumerate(tasks)]
    with django_assert_max_num_queries(8):
        unit_heartbeat("u1", current_load=5, metadata={"cpu": 1}, tasks=listed, now=t0 + timedelta(seconds=1))
    assert [Task.objects.get(pk=t.pk).progress for t in tasks] == [0, 10, 20, 30, 40]


def test_listed_stale_attempt_gets_an_abort_command(t0, settings):
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    (task,) = factories.leased_tasks("u1", now=t0)
    sweep_heartbeats(t0 + timedelta(seconds=31))  # u1 lost it
    factories.unit("u2", now=t0 + timedelta(seconds=31))
    claim_tasks("u2", 1, now=t0 + timedelta(seconds=31))  # attempt 2 on u2
    reply = unit_heartbeat(
        "u1", current_load=1, metadata=None, tasks=[{"id": task.pk, "attempt": 1}], now=t0 + timedelta(seconds=32)
    )
    assert reply["commands"] == [
        {
            "taskId": task.pk,
            "attempt": 1,
            "command": "abort",
            "reason": "attempt is no longer live (failed over, finished or reassigned)",
        }
    ]
    assert reply["status"] == "ONLINE"  # heartbeating brings an OFFLINE unit back
    task.refresh_from_db()
    assert (task.unit_id, task.attempt, task.status) == ("u2", 2, "RUNNING")


def test_offline_unit_claims_nothing_until_it_heartbeats(t0, settings):
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    factories.unit("u1", now=t0)
    sweep_heartbeats(t0 + timedelta(seconds=31))
    factories.task(now=t0)
    assert claim_tasks("u1", 1, now=t0 + timedelta(seconds=32)) == []
    unit_heartbeat("u1", current_load=0, metadata=None, tasks=None, now=t0 + timedelta(seconds=33))
    assert len(claim_tasks("u1", 1, now=t0 + timedelta(seconds=33))) == 1


def test_failover_cap_fails_the_task_as_poison(t0, settings):
    settings.UNIT_HEARTBEAT_TIMEOUT, settings.TASK_MAX_FAILOVER_COUNT = 30, 2
    task = factories.task(now=t0 - timedelta(seconds=1))
    now = t0
    for round_ in range(3):
        factories.unit(f"u{round_}", now=now)
        assert len(claim_tasks(f"u{round_}", 1, now=now)) == 1
        now += timedelta(seconds=31)
        sweep_heartbeats(now)
    task.refresh_from_db()
    assert task.status == "FAILED" and task.failover_count == 3
    assert task.error.startswith("poison")
    assert task.next_retry_at is None  # the dead set: no automatic retry
    assert TaskStatusHistory.objects.filter(task=task, to_status="FAILED", reason__startswith="poison").count() == 1


def test_sweeper_fails_over_10000_tasks_of_1000_units_in_bounded_queries(t0, settings, django_assert_max_num_queries):
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    units = [factories.unit(f"dead-{i}", now=t0).pk for i in range(1000)]
    tasks = factories.running_in_bulk(units, 10_000, now=t0)
    assert len(tasks) == 10_000
    # Bounded by chunks, not tasks: per 500 units a select, an update and a task select, the poll for
    # tasks left on units no longer alive and the two polls for tasks no unit holds (a third chunk
    # finds nothing: the four polls); per 1000 tasks two updates; history inserts in the largest
    # batches the backend takes.
    from django.db import connection

    history_batch = min(
        1000,
        connection.ops.bulk_batch_size([f for f in TaskStatusHistory._meta.concrete_fields if not f.primary_key], [])
        or 1000,
    )
    bound = 2 * 6 + 4 + 10 * 2 + -(-10_000 // history_batch) + 10  # + savepoints of the test transaction
    with django_assert_max_num_queries(bound) as ctx:
        result = sweep_heartbeats(t0 + timedelta(seconds=31))
    assert result == {"unitsOffline": 1000, "failedOver": 10_000, "poisoned": 0, "orphans": 0}
    assert Task.objects.filter(status="PENDING").count() == 10_000
    assert TaskStatusHistory.objects.filter(to_status="PENDING", from_status="RUNNING").count() == 10_000
    print(f"sweeper: 1000 units / 10000 tasks in {len(ctx.captured_queries)} queries")


def test_maintenance_drains_keeps_running_tasks_and_claims_nothing(client_a, register_unit):
    unit, _ = register_unit("u1")
    for _ in range(2):
        client_a.post("/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "config": {}})
    held = unit.post("/api/v1/execution-units/u1/claim", {"max": 1}).json()["items"][0]
    assert client_a.patch("/api/v1/execution-units/u1", {"status": "MAINTENANCE"}).json()["status"] == "MAINTENANCE"
    reply = unit.post(
        "/api/v1/execution-units/u1/heartbeat",
        {"currentLoad": 1, "tasks": [{"id": held["id"], "attempt": held["attempt"]}]},
    ).json()
    assert reply["status"] == "MAINTENANCE" and reply["freeCapacity"] == 0
    assert unit.post("/api/v1/execution-units/u1/claim", {"max": 5}).json()["items"] == []
    assert unit.post(f"/api/v1/tasks/{held['id']}/complete", {"attempt": held["attempt"]}).status_code == 200
    # Re-registering (a restart) keeps the drain an operator set.
    client_a.post(
        "/api/v1/execution-units/register", {"id": "u1", "unitType": "DATA_PROCESSING", "unitName": "u", "capacity": 5}
    )
    assert ExecutionUnit.objects.get(pk="u1").status == "MAINTENANCE"
    client_a.patch("/api/v1/execution-units/u1", {"status": "ONLINE"})
    assert ExecutionUnit.objects.get(pk="u1").status == "ONLINE"


def test_deregister_fails_the_units_tasks_over(client_a, leased):
    unit, (held,) = leased(1, "u1")
    assert client_a.delete("/api/v1/execution-units/u1").status_code == 204
    task = Task.objects.get(pk=held["id"])
    assert task.status == "PENDING" and task.unit_id is None
    assert unit.post("/api/v1/execution-units/u1/heartbeat", {"currentLoad": 0}).status_code == 401


def test_reregistration_fails_over_the_previous_incarnations_tasks(leased, register_unit):
    _, (held,) = leased(1, "u1")
    register_unit("u1")
    assert Task.objects.get(pk=held["id"]).status == "PENDING"


def test_unit_stats(client_a, register_unit, t0):
    register_unit("u1", capacity=4)
    register_unit("u2", capacity=6)
    client_a.patch("/api/v1/execution-units/u2", {"status": "MAINTENANCE"})
    client_a.post("/api/v1/tasks", {"name": "t", "taskType": "DATA_PROCESSING", "config": {}})
    claim_tasks("u1", 1, now=timezone.now())
    body = client_a.get("/api/v1/execution-units/stats").json()
    assert body["total"] == 2 and body["byStatus"]["ONLINE"] == 1 and body["byStatus"]["MAINTENANCE"] == 1
    assert body["onlineCapacity"] == 4 and body["runningTasks"] == 1 and body["utilisation"] == 0.25
    listing = client_a.get("/api/v1/execution-units?status=ONLINE").json()
    assert [(u["id"], u["runningTasks"]) for u in listing["items"]] == [("u1", 1)]


def test_no_task_is_leased_twice_after_sweeps(t0, settings):
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    for _ in range(20):
        factories.task(now=t0)
    now = t0
    for i in range(4):
        factories.unit(f"u{i}", capacity=10, now=now)
        claim_tasks(f"u{i}", 10, now=now)
        now += timedelta(seconds=31)
        sweep_heartbeats(now)
    dupes = (
        TaskStatusHistory.objects.filter(to_status="RUNNING")
        .values("task_id", "attempt")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    assert list(dupes) == []


def test_a_running_task_left_on_an_offline_unit_fails_over_at_the_next_sweep(t0, settings):
    """What a sweep leaves when a task of the silent unit was row-locked (SKIP LOCKED) as it marked
    the unit OFFLINE (tests/test_mariadb_concurrency.py makes it happen): the next sweep takes it
    back, and tells the unit to abort should it come back."""
    settings.UNIT_HEARTBEAT_TIMEOUT = 30
    unit = factories.unit("left-behind", now=t0)
    factories.task(now=t0 - timedelta(seconds=1))
    (task,) = claim_tasks(unit.pk, 1, now=t0)
    ExecutionUnit.objects.filter(pk=unit.pk).update(status="OFFLINE")
    counts = sweep_heartbeats(t0 + timedelta(seconds=1))
    assert (counts["unitsOffline"], counts["failedOver"], counts["orphans"]) == (0, 1, 1)
    stored = Task.objects.get(pk=task.pk)
    assert (stored.status, stored.pending_command, stored.failover_count) == ("PENDING", "abort", 1)
    row = TaskStatusHistory.objects.filter(task_id=task.pk).latest("id")
    assert (row.reason_code, row.actor, row.unit_id) == ("failover", "job:sweep_heartbeats", unit.pk)
    assert sweep_heartbeats(t0 + timedelta(seconds=2))["failedOver"] == 0
